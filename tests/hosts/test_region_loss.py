"""Region loss, as CI rehearses it: 20 shared databases in us-east-1 under their writers, the whole region
powered off and off the air, the region-loss runbook restoring them in us-west-2 from what replication
delivered; then the region returns and the region-failback runbook brings them home.

Given the local cloud (us-east-1, us-west-2, global) with the project's runbooks,
when `bulkhead drill region-loss --databases 20` runs,
then every database serves in us-west-2 within the drill, in order (paying first), having lost at most the
rows of archive_timeout plus the replication lag, and Route 53 answers us-west-2;
and when us-east-1 returns (database hosts on, routers held off) and region-failback runs,
then every row the partner had is back in us-east-1 and Route 53 answers us-east-1 PRIMARY.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bulkhead.drills import fleet_workload
from bulkhead.hosts.sandbox import Sandboxes, fabric_netns
from bulkhead.localcloud import controller, server
from bulkhead.localcloud.state import Store

pytestmark = [pytest.mark.hosts, pytest.mark.drill]
DATABASES = 20
NAME = "apps.platform.example.net"
SLACK_S = 3.0  # the archive upload of a segment and the replicator's polling, on top of the bound


def _bulkhead(environment: dict, *argv: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bulkhead.cli", *argv], env=environment, capture_output=True,
                          text=True, timeout=timeout, check=False)  # fmt: skip


@pytest.fixture(scope="module")
def lost(project_dir, tmp_path_factory):
    """The drill, run once: its report, and the environment every later command runs in."""
    base = tmp_path_factory.mktemp("region-loss")
    environment = {**os.environ, "BULKHEAD_LOCAL_DIR": str(base / "local"), "BULKHEAD_HOSTS_DIR": str(base / "hosts")}
    try:
        up = _bulkhead(
            environment, "--project", str(project_dir), "local", "up", "--stacks", "us-east-1,us-west-2,global"
        )
        assert up.returncode == 0, up.stderr
        drill = _bulkhead(environment, "--project", str(project_dir), "drill", "region-loss", "--region", "us-east-1",
                          "--databases", str(DATABASES), "--json")  # fmt: skip
        assert drill.returncode == 0, drill.stderr[-3000:]
        yield json.loads(drill.stdout), environment, base
    finally:
        Sandboxes(base / "hosts").down()
        controller.stop(base / "local")
        server.stop(base / "local")


def test_region_loss__every_database_serves_in_the_partner_paying_first(lost):
    report, _, _ = lost
    assert report["dns_before"] == "us-east-1" and report["dns_after"] == "us-west-2"
    assert len(report["restored"]) == DATABASES
    assert all(entry["error"] is None for entry in report["restored"])
    assert report["priority_inversions"] == 0
    order = [(not e["paying"], e["priority"]) for e in report["restored"]]
    assert order == sorted(order)
    assert 0 < report["rto_s"]["first_paying"] <= report["rto_s"]["all"]


def test_region_loss__rows_lost_per_database_within_archive_timeout_plus_replication_lag(lost):
    report, _, _ = lost
    assert set(report["rows_lost"]) == {f"shared-{i:02d}" for i in range(1, DATABASES + 1)}
    assert all(lost is not None for lost in report["rows_lost"].values())  # every database answered
    assert all(count > 0 for count in report["rows_acknowledged"].values())
    # What was lost had been acknowledged within the last archive_timeout + lag before the region went.
    assert max(report["loss_window_s"].values()) <= report["bound_s"] + SLACK_S, report["loss_window_s"]
    # And what was written before that window is all there: most rows survive.
    assert sum(report["rows_lost"].values()) < sum(report["rows_acknowledged"].values())


def test_region_failback__the_databases_and_traffic_return_to_the_region(lost, project_dir):
    report, environment, base = lost
    project = ["--project", str(project_dir)]
    sandboxes = Sandboxes(base / "hosts")
    targets = [{"name": e["name"], "address": "", "port": 5500 + int(e["name"].split("-")[1]) - 1}
               for e in report["restored"]]  # fmt: skip
    partner_host = next(s for s in sandboxes.recorded() if s.name == report["detail"]["restored_on"])
    password = _password(base, report)
    there = [{**t, "address": partner_host.address} for t in targets]
    in_partner = fleet_workload.rows_in(sandboxes, "us-west-2", there, base, password, "check-partner")
    # The region returns: its endpoint answers, its database hosts boot; its routers stay off until the runbook.
    for argv in (
        ("local", "air", "us-east-1", "on"),
        ("hosts", "power", "on", "--region", "us-east-1", "--role", "postgres"),
    ):
        done = _bulkhead(environment, *project, *argv)
        assert done.returncode == 0, done.stderr
    assert _bulkhead(environment, *project, "dns", "answer", NAME).stdout.startswith("us-west-2")
    plan, prefix = report["detail"]["plan"], report["detail"]["prefix"]
    failback = _bulkhead(environment, *project, "runbook", "run", "region-failback", "--yes",
                         "--var", "REGION=us-east-1", "--var", "PARTNER=us-west-2", "--var", f"NAME={NAME}",
                         "--var", f"PLAN={plan}", "--var", f"PREFIX={prefix}")  # fmt: skip
    assert failback.returncode == 0, failback.stdout[-3000:] + failback.stderr[-2000:]
    assert _bulkhead(environment, *project, "dns", "answer", NAME).stdout.strip() == "us-east-1 PRIMARY"
    home = next(s for s in sandboxes.recorded() if s.region == "us-east-1" and s.role == "postgres")
    in_region = fleet_workload.rows_in(sandboxes, "us-east-1", [{**t, "address": home.address} for t in targets],
                                       base, password, "check-home")  # fmt: skip
    assert in_region == in_partner  # every row the partner held, and nothing else
    shown = json.loads(_bulkhead(environment, *project, "status", "show", "--json").stdout)
    assert shown["components"]["databases"] == "operational"


def _psql(base, region: str, address: str, port: int, password: str, sql: str) -> str:
    """One statement run from the region's bridge, as an app's connection would."""
    command = ["ip", "netns", "exec", fabric_netns(region, base / "hosts"), "psql", "-tAc", sql,
               f"host={address} port={port} user=postgres dbname=postgres password={password}"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_copy_archive__the_runbook_copies_what_replication_has_not_delivered(lost, project_dir):
    report, environment, base = lost
    project = ["--project", str(project_dir)]
    prefix = report["detail"]["prefix"]
    # One database: the others go on archiving on their own clocks (checkpoints, archive_timeout).
    plan = base / "one-database.yaml"
    plan.write_text("- {name: shared-01, priority: 1, paying: true}\n")
    status = ["db", "fleet-status", "--region", "us-west-2", "--source-region", "us-east-1", "--prefix", prefix,
              "--plan", str(plan), "--caught-up", "--json"]  # fmt: skip
    for _ in range(30):  # replication catches up with what failback wrote
        if _bulkhead(environment, *project, *status).returncode == 0:
            break
        time.sleep(1)
    else:
        pytest.fail("the replica never caught up with us-east-1's archive")
    stacks = "us-east-1,us-west-2,global"
    slow = _bulkhead(environment, *project, "local", "up", "--stacks", stacks, "--replication-lag", "600")
    assert slow.returncode == 0, slow.stderr
    try:
        home = next(s for s in Sandboxes(base / "hosts").recorded() if s.region == "us-east-1" and s.role == "postgres")
        _psql(
            base,
            "us-east-1",
            home.address,
            5500,
            _password(base, report),
            "INSERT INTO rows (n) VALUES (1000000); SELECT pg_switch_wal()",
        )
        behind = None
        for _ in range(60):  # the new segment is archived in us-east-1, and replication will not carry it
            behind = _bulkhead(environment, *project, *status)
            if behind.returncode == 1:
                break
            time.sleep(1)
        assert behind.returncode == 1 and "the replica is behind the source" in behind.stderr
        variables = ["--var", "REGION=us-east-1", "--var", "PARTNER=us-west-2", "--var", f"PLAN={plan}",
                     "--var", f"PREFIX={prefix}"]  # fmt: skip
        copied = _bulkhead(environment, *project, "runbook", "run", "copy-archive", "--yes", *variables)
        assert copied.returncode == 0, copied.stdout[-2000:] + copied.stderr[-1000:]
        assert _bulkhead(environment, *project, *status).returncode == 0
    finally:
        _bulkhead(environment, *project, "local", "up", "--stacks", stacks, "--replication-lag", "2")


def test_point_in_time_restore__a_copy_beside_the_live_database_as_it_was(lost, project_dir):
    report, environment, base = lost
    password = _password(base, report)
    attempts = fleet_workload.parse(Path(report["detail"]["writer_log"]))
    acked = fleet_workload.acknowledged(attempts)["shared-03"]
    # A moment well before the region went, when the archive had long shipped what was written.
    moment = report["detail"]["fault_at"] - report["bound_s"] - 6
    when = dt.datetime.fromtimestamp(moment, dt.UTC).isoformat()
    home = next(s for s in Sandboxes(base / "hosts").recorded() if s.region == "us-east-1" and s.role == "postgres")
    live_before = _psql(base, "us-east-1", home.address, 5502, password, "SELECT count(*) FROM rows")
    plan, prefix = report["detail"]["plan"], report["detail"]["prefix"]
    variables = ["--var", "REGION=us-east-1", "--var", "DATABASE=shared-03", "--var", f"TIME={when}",
                 "--var", f"PLAN={plan}", "--var", f"PREFIX={prefix}"]  # fmt: skip
    done = _bulkhead(environment, "--project", str(project_dir), "runbook", "run", "point-in-time-restore", "--yes",
                     *variables)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-1000:]
    rows = {int(n) for n in _psql(base, "us-east-1", home.address, 5900, password, "SELECT n FROM rows").split()}
    assert {n for n, at in acked.items() if at <= moment} <= rows  # every row acknowledged by then
    assert not {n for n, at in acked.items() if at > moment + 1} & rows  # and nothing committed after
    assert _psql(base, "us-east-1", home.address, 5502, password, "SELECT count(*) FROM rows") == live_before


def _password(base, report) -> str:
    """The drill's databases' password, from the file only root may read."""
    del base
    path = report["detail"]["password_file"]
    assert os.stat(path).st_mode & 0o077 == 0
    with open(path) as secret:
        return secret.read().strip()


def test_region_loss__a_region_without_a_failover_partner_is_refused_in_one_line(lost, project_dir):
    _, environment, _ = lost
    refused = _bulkhead(environment, "--project", str(project_dir), "drill", "region-loss", "--region", "eu-west-1")
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "bulkhead: error: eu-west-1 has no DNS failover partner; lose us-east-1 (or us-west-2), the pair the global "
        "stack fails over between"
    ]
    assert Store(Path(environment["BULKHEAD_LOCAL_DIR"])).outputs("eu-west-1") is None  # nothing was deployed for it
