"""archive-stall: the primary's WAL archive stops while it writes; the archive-lag alarm must page, then clear.

The fault is the primary's route to S3 cut (its S3 endpoint's relay killed), so every archive_command
fails as when a region's S3 or a host's route to it fails, while the host's other AWS endpoints (its
metrics agent's CloudWatch) still answer. The drill writes a few segments of WAL on the primary so that
finished segments wait, reads the region's alert queue until the `wal-archive-lag` alarm's ALARM
notification arrives, gives S3 back, and reads on until its OK arrives. Goals:
- `alarm_s`: from the cut to the ALARM message in the queue, within 135 s: the lag passes 60 s a minute
  after the first segment waits, the agent publishes it within 10 s, and CloudWatch evaluates a 60 s alarm
  once a minute, so a run takes 61-131 s (about 95 s on average: `benchmarks/alerting.py` holds the
  median to the issue's 2 minutes; a single run cannot be held to it);
- `cleared_s`: from the mend to the OK message, under 180 s (the next finished segment wakes the archiver;
  the alarm is evaluated once a minute);
- `archive_caught_up`: no finished segment left unarchived on the primary afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from bulkhead.drills.agent_report import AgentReport
from bulkhead.drills.alerts import region_alarm
from bulkhead.drills.common import DrillError, poll_until, stepper
from bulkhead.ha import cluster
from bulkhead.ha.reach import Reach

ALARM = "wal-archive-lag"
# Threshold 60 s + one publish interval (10 s) + one evaluation period (60 s) + delivery.
ALARM_GOAL_S = 135
CLEAR_GOAL_S = 180
# Rows of ~1 KiB: about four 16 MiB segments of WAL, so that finished segments wait for the archive at once.
ROWS = 60000
TABLE = "bulkhead_drill_archive_stall"


def _psql(reach: Reach, host, sql: str, timeout: float = 120) -> str:
    command = ["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
               "-h", "/var/run/postgresql", "-c", sql]  # fmt: skip
    result = reach.sandboxes.run(host, *command, timeout=timeout)
    if result.returncode != 0:
        raise DrillError(f"psql on {host.name} failed: {result.stderr.strip()[-300:]}")
    return result.stdout.strip()


def _ready_segments(reach: Reach, host) -> int:
    sql = r"SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name ~ '^[0-9A-F]{24}\.ready$'"
    return int(_psql(reach, host, sql) or 0)


def run(reach: Reach, scratch: Path, on_step: Callable[[str], None] | None = None,
        project_dir: Path | None = None) -> AgentReport:  # fmt: skip
    report = AgentReport("archive-stall", reach.region)
    step = stepper(report, on_step)
    leader = cluster.leader(reach.cluster())
    if leader is None:
        raise DrillError(f"{reach.region} has no running database leader; see `bulkhead db status`")
    primary = next(h for h in reach.database_hosts if h.name == leader.host)
    watch = region_alarm(project_dir or Path.cwd(), reach.region, ALARM)
    if poll_until(lambda: watch.state()[0] == "OK", 180, interval=5) is None:
        raise DrillError(f"{watch.alarm} is {watch.state()[0]}, not OK: the archive is already behind; "
                         "see `bulkhead db archive-status`")  # fmt: skip
    drained = watch.drain()
    step(f"{watch.alarm} is OK; the alert queue drained ({drained} old notifications)")
    _psql(reach, primary, f"CREATE TABLE IF NOT EXISTS {TABLE} (n int, pad text)")
    reach.sandboxes.cut_endpoint(primary, "s3")
    fault_at = time.time()
    step(f"{primary.name}'s route to S3 cut")
    alarmed = cleared = None
    mended_at = None
    try:
        _psql(reach, primary, f"INSERT INTO {TABLE} SELECT n, repeat('x', 1000) FROM generate_series(1, {ROWS}) n; "
                              "SELECT pg_switch_wal()")  # fmt: skip
        waiting = _ready_segments(reach, primary)
        step(f"WAL written: {waiting} finished segments wait for the archive")
        alarmed = watch.wait_for("ALARM", ALARM_GOAL_S + 120)
        step("the ALARM notification arrived" if alarmed else "no ALARM notification arrived")
    finally:
        reach.sandboxes.mend_endpoint(primary, "s3")
        mended_at = time.time()
        step(f"{primary.name}'s route to S3 given back")
    # A busy primary's next finished segment wakes its archiver, which then retries at once instead of after
    # the minute PostgreSQL waits following three failures: a row and a switch are that next segment.
    _psql(reach, primary, f"INSERT INTO {TABLE} VALUES (0, 'after'); SELECT pg_switch_wal()")
    if alarmed:
        cleared = watch.wait_for("OK", CLEAR_GOAL_S + 120)
        step("the OK notification arrived" if cleared else "no OK notification arrived")
    caught_up = poll_until(lambda: _ready_segments(reach, primary) == 0, 120, interval=3)
    _psql(reach, primary, f"DROP TABLE IF EXISTS {TABLE}")
    state, changed = watch.state()
    alarm_s = None if alarmed is None else round(alarmed[0] - fault_at, 1)
    cleared_s = None if cleared is None else round(cleared[0] - mended_at, 1)
    report.figures = {"primary": primary.name, "alarm": watch.alarm, "alarm_s": alarm_s, "cleared_s": cleared_s,
                      "segments_waiting": waiting if alarmed is not None else None,
                      "alarm_reason": alarmed[1]["NewStateReason"] if alarmed else None,
                      "state_now": state, "state_changed_at": changed.isoformat() if changed else None}  # fmt: skip
    report.goal("alarm_s", alarm_s, f"< {ALARM_GOAL_S}", alarm_s is not None and alarm_s < ALARM_GOAL_S)
    report.goal("cleared_s", cleared_s, f"< {CLEAR_GOAL_S}", cleared_s is not None and cleared_s < CLEAR_GOAL_S)
    report.goal("archive_caught_up", caught_up is not None, "no segment waiting within 120 s", caught_up is not None)
    return report
