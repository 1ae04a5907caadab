"""Failover on the session's sandbox region: Patroni and etcd under real faults (kill, cut, wipe, freeze).

Each test starts from a healthy cluster (a running leader, two replicas streaming on its timeline) and
leaves one behind; the time bounds are stated where they are asserted.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import boto3
import pytest

from bulkhead import cli
from bulkhead.drills import az_loss, ebs_loss, workload
from bulkhead.drills.common import URL_FILE, healthy_problem
from bulkhead.ha import cluster
from bulkhead.localcloud import server
from bulkhead.localcloud.aws import LOCAL_CREDENTIALS

pytestmark = [pytest.mark.hosts, pytest.mark.drill]

TTL = 20  # Patroni's leader-key TTL (roles/postgres/defaults/main.yml)


@pytest.fixture
def healthy(site):
    """Given a healthy cluster (waiting up to 120 s for the previous test's member to rejoin)."""
    _wait(lambda: healthy_problem(site.reach.cluster(), synchronous=True) is None, 120, "a healthy cluster")
    return site.reach.cluster()


@pytest.fixture
def bulkhead(site, monkeypatch, capsys):
    """The CLI, in-process, on the session's sandboxes: returns (exit code, stdout, stderr)."""
    monkeypatch.setenv("BULKHEAD_HOSTS_DIR", str(site.sandboxes.directory))

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli.main(["--project", str(site.project_dir), *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _wait(check, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            pytest.fail(f"{what} did not happen within {timeout} s")
        time.sleep(0.5)
    return time.monotonic() - started


def _spec(site, member: cluster.Member):
    return next(s for s in site.of_role("postgres") if s.name == member.host)


def _local_write(site, spec) -> tuple[bool, str]:
    """A write on the member itself, through its unix socket (not through any endpoint)."""
    result = site.sandboxes.run(spec, "runuser", "-u", "postgres", "--", "psql", "-h", "/var/run/postgresql",
                                "-v", "ON_ERROR_STOP=1", "-tAc",
                                "CREATE TABLE IF NOT EXISTS fence (at timestamptz); INSERT INTO fence VALUES (now())",
                                timeout=15)  # fmt: skip
    return result.returncode == 0, result.stderr.strip()


def _processes(spec, name: str) -> list[int]:
    """The host's own processes whose command line holds `name` (pgrep would see every host's: one pid space)."""
    listed = subprocess.run(["ip", "netns", "pids", spec.netns], capture_output=True, text=True, check=True)
    found = []
    for pid in listed.stdout.split():
        with contextlib.suppress(OSError):
            if name in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                found.append(int(pid))
    return found


def _writer(site, run: str):
    dyno = site.of_role("dyno_host")[0]
    url = site.reach.read_file(dyno, URL_FILE).strip()
    return dyno, url, workload.writer(site.sandboxes, dyno, url, run)


def test_db_status_and_url__show_every_member_and_a_url_to_the_local_endpoint(site, healthy, bulkhead):
    code, out, _ = bulkhead("db", "status", "--region", site.store_region, "--json")
    assert code == 0
    members = json.loads(out)["members"]
    assert sorted(m["az"] for m in members) == ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
    assert [m["role"] for m in members] == ["leader", "replica", "replica"]
    assert set(members[0]) == {"host", "az", "role", "state", "timeline", "lag_bytes"}
    code, out, _ = bulkhead("db", "url", "--region", site.store_region)
    assert (
        code == 0
        and out.startswith("postgresql://app:")
        and out.strip().endswith("@127.0.0.1:5432/app?sslmode=require")
    )


def test_switchover__hands_the_leader_to_the_named_replica_losing_no_row(site, healthy, bulkhead):
    old = cluster.leader(healthy)
    # In synchronous mode only the synchronous replica may take over; the other is refused in one line.
    target = next(m for m in healthy if m.synchronous)
    other = next(m for m in healthy if m.role == "replica" and not m.synchronous)
    code, _, err = bulkhead("db", "switchover", "--region", site.store_region, "--to", other.host)
    assert code == 1 and f"replica {other.host} is not the synchronous one" in err
    dyno, url, writes = _writer(site, "switchover")
    try:
        assert writes.wait_for(10, timeout=30)
        # When: a planned switchover to a named replica
        code, out, err = bulkhead("db", "switchover", "--region", site.store_region, "--to", target.host)
        assert code == 0, err
        assert f"switched over from {old.host}" in out and f"to {target.host}" in out
        handed_over = time.time()
        # Then: writes go on through 127.0.0.1:5432, now to the new leader, within 30 s
        assert writes.wait_for(5, after=handed_over, timeout=30)
    finally:
        attempts = writes.stop()
    assert cluster.leader(site.reach.cluster()).host == target.host
    acknowledged = {a.number for a in attempts if a.ok}
    assert acknowledged and acknowledged <= workload.rows_present(site.sandboxes, dyno, url, "switchover")


def test_failover__to_a_lagging_replica_is_refused_without_force(site, healthy, bulkhead):
    leader = cluster.leader(healthy)
    lagging = next(m for m in healthy if m.role == "replica" and not m.synchronous)
    spec = _spec(site, lagging)
    # Given: the replica's WAL receiver is frozen while the leader writes 4 MB (beyond the 1 MB maximum)
    pids = _processes(spec, "walreceiver")
    assert len(pids) == 1, "the replica runs one WAL receiver"
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        site.sandboxes.run(_spec(site, leader), "runuser", "-u", "postgres", "--", "psql", "-h", "/var/run/postgresql",
                           "-c", "CREATE TABLE IF NOT EXISTS ballast AS SELECT repeat('x', 1000) FROM "
                           "generate_series(1, 4000)", timeout=30)  # fmt: skip
        _wait(lambda: (next(m for m in site.reach.cluster() if m.host == lagging.host).lag_bytes or 0) > 1048576,
              30, "the replica's lag passing 1 MB")  # fmt: skip
        # When: failover to it without --force; Then: refused, in one line, and nothing changes
        code, _, err = bulkhead("db", "failover", "--region", site.store_region, "--to", lagging.host)
        assert code == 1
        assert err.startswith(f"bulkhead: error: failover refused: {lagging.host} lags ")
        assert err.strip().endswith("pass --force to accept that") and len(err.strip().splitlines()) == 1
        assert cluster.leader(site.reach.cluster()).host == leader.host
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def test_az_loss__of_the_leaders_az_loses_no_acknowledged_row_and_the_old_leader_rejoins(site, healthy, tmp_path):
    old = cluster.leader(healthy)
    # When: the leader's AZ loses power (its router, dyno host and database member: processes killed, links down)
    report = az_loss.run(site.reach, None, tmp_path)
    # Then: another AZ's member leads, with every acknowledged row, and writes resumed within 60 s
    assert report.az == old.az and report.failed_over and report.new_leader != old.host
    assert report.rows_lost == 0 and report.rows_acknowledged > 20
    assert report.rto_s is not None and report.rto_s < 60
    # HTTP kept answering through the other AZs' routers
    assert report.http_ok_ratio is not None and report.http_ok_ratio >= 0.9
    # and the old leader came back as a replica of the new one, with no command from anyone, within 240 s
    assert report.rejoined_s is not None
    (again,) = [m for m in site.reach.cluster() if m.host == old.host]
    assert (again.role, again.state) == ("replica", "streaming")


def test_az_loss__of_a_replica_only_az_fails_nothing_over(site, healthy, tmp_path):
    old = cluster.leader(healthy)
    spared = next(m for m in healthy if m.role == "replica")
    report = az_loss.run(site.reach, spared.az, tmp_path)
    assert report.az == spared.az
    assert not report.failed_over and report.new_leader == old.host
    assert report.rows_lost == 0
    # Synchronous commits move to the other replica once the leader drops the lost one (wal_sender_timeout 5 s).
    assert report.rto_s is not None and report.rto_s < 15
    assert report.rejoined_s is not None


def test_ebs_loss__the_leader_fails_over_and_is_rebuilt_from_the_archive(site, healthy, tmp_path):
    old = cluster.leader(healthy)
    # Given: the archive holds a base backup (the leader's scheduled backup program takes one at once)
    outputs = site.store.outputs(site.store_region)
    s3 = boto3.client("s3", endpoint_url=server.running(site.store.directory).endpoint,
                      region_name=site.store_region, **LOCAL_CREDENTIALS)  # fmt: skip

    def backed_up() -> bool:
        listed = s3.list_objects_v2(Bucket=outputs["archiveBucket"], Prefix=f"{outputs['databaseServer']}/base/")
        return any(o["Key"].endswith("/backup.info") for o in listed.get("Contents", []))

    _wait(backed_up, 120, "a base backup in the archive")
    # When: its data directory disappears under the running writer
    report = ebs_loss.run(site.reach, tmp_path)
    # Then: another member leads within Patroni's TTL, nothing acknowledged is lost
    assert report.failed_over and report.new_leader != old.host
    assert report.rows_lost == 0
    # (the message in full: pytest would cut a dict's repr short, and this is what tells a slow failover from a
    # slow writer)
    assert report.rto_s is not None and report.rto_s < TTL, json.dumps(
        {"rto_s": report.rto_s, "steps": report.steps, "failover": report.detail["failover"],
         "writes": report.detail["writes"]}, indent=1)  # fmt: skip
    # and the lost member was built from the archive (Patroni's log: "replica has been created using archive")
    assert report.detail["rebuilt_with"] == "archive"
    assert report.rejoined_s is not None


def test_split_brain__a_leader_cut_off_from_etcd_stops_taking_writes_within_the_ttl(site, healthy):
    old = cluster.leader(healthy)
    spec = _spec(site, old)
    assert _local_write(site, spec)[0], "the leader takes writes before the cut"
    # When: its only link is cut; it still runs, but reaches neither etcd's quorum nor anyone else
    site.sandboxes.set_link(spec, up=False)
    cut = time.monotonic()
    try:
        # Then: within the TTL it refuses writes made on it directly
        fenced = _wait(lambda: not _local_write(site, spec)[0], TTL, "the cut-off leader refusing writes")
        assert fenced <= TTL
        # and goes on refusing them: demoted (shutting down, then a read-only replica), never a second primary
        for _ in range(5):
            assert not _local_write(site, spec)[0], "the cut-off old leader took a write"
            time.sleep(1)
        # and a replica on the other side leads
        _wait(lambda: (lead := cluster.leader(site.reach.cluster())) is not None and lead.host != old.host,
              TTL + 15, "another member leading")  # fmt: skip
    finally:
        site.sandboxes.set_link(spec, up=True)
    assert time.monotonic() - cut < 120


def test_etcd__one_member_lost_changes_nothing_two_lost_demote_the_leader(site, healthy):
    leader = cluster.leader(healthy)
    others = [_spec(site, m) for m in healthy if m.host != leader.host]

    def etcd_pid(spec) -> int:
        (pid,) = _processes(spec, "/usr/bin/etcd")
        return pid

    frozen = []
    try:
        # When: one etcd member hangs (SIGSTOP); Then: for 10 s (10 of Patroni's loops) the leader stays
        frozen.append(etcd_pid(others[0]))
        os.kill(frozen[-1], signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert _local_write(site, _spec(site, leader))[0], "the leader refused a write with one etcd member lost"
            time.sleep(1)
        assert cluster.leader(site.reach.cluster()).host == leader.host
        # When: a second one hangs, losing etcd's quorum; Then: the leader demotes itself within the TTL
        frozen.append(etcd_pid(others[1]))
        os.kill(frozen[-1], signal.SIGSTOP)
        demoted = _wait(lambda: not _local_write(site, _spec(site, leader))[0], TTL, "the leader demoting itself")
        assert demoted <= TTL
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
