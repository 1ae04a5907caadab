"""A drill's figures, from writer and prober logs written down by hand."""

from __future__ import annotations

import pytest

from bulkhead.drills import report
from bulkhead.drills.common import healthy_problem
from bulkhead.ha.cluster import Member

pytestmark = pytest.mark.unit

# Rows 1-3 acknowledged before the fault at 100.0, 4-5 refused while no member led, 6-7 acknowledged after.
WRITES = """1 99.1 ok
2 99.5 ok
3 99.9 ok
4 101.0 fail
5 110.2 fail
6 121.4 ok
7 121.6 ok
8 12"""


def test_parse_attempts__skips_a_torn_last_line():
    attempts = report.parse_attempts(WRITES)
    assert [(a.number, a.ok) for a in attempts] == [(1, True), (2, True), (3, True), (4, False), (5, False),
                                                    (6, True), (7, True)]  # fmt: skip


def test_recovery_seconds__from_the_fault_to_the_first_acknowledged_write_after_it():
    assert report.recovery_seconds(report.parse_attempts(WRITES), fault_at=100.0) == 21.4
    assert report.recovery_seconds(report.parse_attempts(WRITES), fault_at=130.0) is None


def test_timeline__the_attempts_after_the_fault_run_by_run_with_their_longest_gap():
    runs = report.timeline(report.parse_attempts(WRITES), fault_at=100.0)
    assert runs == [
        {"result": "fail", "from_s": 1.0, "to_s": 10.2, "count": 2, "longest_gap_s": 9.2},
        {"result": "ok", "from_s": 21.4, "to_s": 21.6, "count": 2, "longest_gap_s": 11.2},
    ]
    assert report.timeline(report.parse_attempts(WRITES), fault_at=100.0, limit=5) == [
        {"result": "fail", "from_s": 1.0, "to_s": 1.0, "count": 1, "longest_gap_s": 1.0}
    ]


def test_rows_lost__counts_only_rows_acknowledged_before_the_fault_and_missing_after():
    attempts = report.parse_attempts(WRITES)
    assert len(report.lost_writes(attempts, 100.0, present={1, 2, 3, 6, 7})) == 0
    assert len(report.lost_writes(attempts, 100.0, present={1, 6, 7})) == 2
    # Row 6 was acknowledged after the fault: its absence is not counted here.
    assert len(report.lost_writes(attempts, 100.0, present={1, 2, 3})) == 0


def test_record__names_each_lost_row_and_how_long_before_the_fault_it_was_acknowledged():
    drill = report.Report("ebs-loss", "eu-west-1", "eu-west-1a")
    drill.record(report.parse_attempts(WRITES), [], present={1, 3, 6, 7}, fault_at=100.0, fault_ended=130.0)
    assert drill.rows_lost == 1 and drill.rows_acknowledged == 5
    assert drill.lost == [{"number": 2, "before_fault_s": 0.5}]


def test_ok_ratio__only_inside_the_window():
    requests = report.parse_attempts("1 99.0 fail\n2 100.5 ok\n3 101.0 fail\n4 102.0 ok\n5 103.0 ok\n6 104.5 fail")
    assert report.ok_ratio(requests, 100.0, 104.0) == 0.75
    assert report.ok_ratio(requests, 200.0, 300.0) is None


def _member(host: str, role: str, state: str, timeline: int) -> Member:
    return Member(host=host, az="a", role=role, state=state, timeline=timeline, lag_bytes=0)


def test_healthy_problem__names_the_member_that_is_not_streaming_on_the_leaders_timeline():
    leader = _member("i-a", "leader", "running", 3)
    assert healthy_problem([leader, _member("i-b", "replica", "streaming", 3)]) is None
    assert healthy_problem([leader, _member("i-b", "replica", "streaming", 2)]) == (
        "member i-b (a) is streaming on timeline 2"
    )
    assert healthy_problem([_member("i-b", "replica", "streaming", 2)]) == "the cluster has no running leader"


def test_healthy_problem__in_synchronous_mode_a_synchronous_replica_is_needed():
    leader, replica = _member("i-a", "leader", "running", 3), _member("i-b", "replica", "streaming", 3)
    assert healthy_problem([leader, replica], synchronous=True) == (
        "no replica is synchronous yet, so no member could take over without losing commits"
    )
    synchronous = Member(host="i-b", az="a", role="replica", state="streaming", timeline=3, lag_bytes=0,
                         synchronous=True)  # fmt: skip
    assert healthy_problem([leader, synchronous], synchronous=True) is None
