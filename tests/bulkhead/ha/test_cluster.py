"""The cluster decisions, on Patroni's own /cluster answers written down."""

from __future__ import annotations

import pytest

from bulkhead.ha import cluster

pytestmark = pytest.mark.unit

HOSTS = {"i-a": ("eu-west-1a", "10.30.143.245"), "i-b": ("eu-west-1b", "10.30.159.245"),
         "i-c": ("eu-west-1c", "10.30.175.245")}  # fmt: skip
# What Patroni 4.1's GET /cluster said for a healthy three-member cluster (trimmed to what is read).
HEALTHY = {
    "members": [
        {"name": "i-b", "role": "replica", "state": "streaming", "host": "10.30.159.245", "timeline": 2, "lag": 0},
        {"name": "i-c", "role": "sync_standby", "state": "streaming", "host": "10.30.175.245", "timeline": 2,
         "lag": 16},
        {"name": "i-a", "role": "leader", "state": "running", "host": "10.30.143.245", "timeline": 2},
    ],
    "scope": "pg-eu-west-1",
}  # fmt: skip


def test_members__leader_first_with_its_az_and_lag_zero():
    found = cluster.members(HEALTHY, HOSTS)
    assert [(m.host, m.az, m.role, m.state, m.timeline, m.lag_bytes) for m in found] == [
        ("i-a", "eu-west-1a", "leader", "running", 2, 0),
        ("i-b", "eu-west-1b", "replica", "streaming", 2, 0),
        ("i-c", "eu-west-1c", "replica", "streaming", 2, 16),
    ]
    assert [m.synchronous for m in found] == [False, False, True]


def test_members__a_member_patroni_does_not_list_is_unreachable():
    answer = {"members": [m for m in HEALTHY["members"] if m["name"] != "i-b"]}
    (missing,) = [m for m in cluster.members(answer, HOSTS) if m.host == "i-b"]
    assert missing.as_json() == {"host": "i-b", "az": "eu-west-1b", "role": "replica", "state": "unreachable",
                                 "timeline": None, "lag_bytes": None}  # fmt: skip


def test_members__an_unknown_lag_stays_unknown():
    answer = {"members": [{"name": "i-b", "role": "replica", "state": "streaming", "timeline": 2, "lag": "unknown"}]}
    assert cluster.members(answer, {"i-b": HOSTS["i-b"]})[0].lag_bytes is None


def test_failover_refusal__a_lagging_target_is_refused_unless_forced():
    found = cluster.members(HEALTHY, HOSTS)
    assert cluster.failover_refusal(found, "i-c", maximum_lag=8, force=False) == (
        "i-c lags 16 bytes, beyond the maximum of 8 (bulkhead:maximumLagOnFailover): promoting it loses those "
        "writes; pass --force to accept that"
    )
    assert cluster.failover_refusal(found, "i-c", maximum_lag=8, force=True) is None
    assert cluster.failover_refusal(found, "i-c", maximum_lag=16, force=False) is None


def test_failover_refusal__the_leader_or_a_dead_member_is_no_target():
    found = cluster.members({"members": [m for m in HEALTHY["members"] if m["name"] != "i-a"]}, HOSTS)
    assert "already leads" in cluster.failover_refusal(cluster.members(HEALTHY, HOSTS), "i-a", 10, force=True)
    assert cluster.failover_refusal(found, "i-a", 10, force=True) == (
        "i-a is unreachable: it cannot take over; choose a running replica"
    )


def test_failover_refusal__an_unknown_name_fails_listing_the_members():
    with pytest.raises(cluster.ClusterError, match=r"no database member 'i-z'; members: i-a, i-b, i-c"):
        cluster.failover_refusal(cluster.members(HEALTHY, HOSTS), "i-z", 10, force=False)


def test_switchover_target__needs_a_running_leader():
    without = cluster.members({"members": HEALTHY["members"][:2]}, HOSTS)
    with pytest.raises(cluster.ClusterError, match="no running leader"):
        cluster.switchover_target(without, None)
    current, target = cluster.switchover_target(cluster.members(HEALTHY, HOSTS), "10.30.175.245")
    assert (current.host, target.host) == ("i-a", "i-c")
    with pytest.raises(cluster.ClusterError, match=r"i-b is not the synchronous one.*name i-c with --to"):
        cluster.switchover_target(cluster.members(HEALTHY, HOSTS), "i-b")
    with pytest.raises(cluster.ClusterError, match="i-a already leads"):
        cluster.switchover_target(cluster.members(HEALTHY, HOSTS), "i-a")


def test_expectation_problem__names_what_a_runbook_check_still_waits_for():
    found = cluster.members(HEALTHY, HOSTS)
    assert cluster.expectation_problem(found, leader_not="i-b", leader_outside_az="eu-west-1c",
                                       streaming=("i-b", "i-c")) is None  # fmt: skip
    assert cluster.expectation_problem(found, leader_not="i-a") == "i-a still leads"
    assert cluster.expectation_problem(found, leader_outside_az="eu-west-1a") == (
        "the leader i-a is still in eu-west-1a"
    )
    assert cluster.expectation_problem(found, streaming=("i-z",)) == "i-z is not a member of this cluster"
    rebuilding = {"members": [{**m, "state": "creating replica"} if m["name"] == "i-b" else m
                              for m in HEALTHY["members"]]}  # fmt: skip
    assert cluster.expectation_problem(cluster.members(rebuilding, HOSTS), streaming=("i-b",)) == (
        "i-b is replica, creating replica: not a streaming replica yet"
    )
    leaderless = {"members": [m for m in HEALTHY["members"] if m["role"] != "leader"]}
    assert cluster.expectation_problem(cluster.members(leaderless, HOSTS)) == "no member leads and runs yet"
