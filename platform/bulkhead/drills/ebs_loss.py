"""ebs-loss: the leader's data volume is lost under the running writer: the server panics and its files are
gone. Patroni gives up the leader key, another member takes over, and the lost member is rebuilt from the
archive (barman-cloud-restore), not from the new leader: its Patroni log says which way it was built."""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path

import yaml

from bulkhead.drills import workload
from bulkhead.drills.common import (
    REJOIN_TIMEOUT,
    DrillError,
    await_recovery,
    lose_volume,
    rejoined,
    run_runbook,
    stage,
    stepper,
    still_healthy,
    wait_until,
)
from bulkhead.drills.report import Report, timeline
from bulkhead.ha.reach import Reach

PATRONI_CONFIG = "/etc/bulkhead/patroni.yml"
BUILT_WITH = "replica has been created using "


# What each member's Patroni says on the way from the loss to a new leader (its log's own words).
FAILOVER_EVENTS = ("released leader key voluntarily", "acquired session lock as a leader", "promoted self to leader",
                   "Got response from", "Could not take out TTL lock", "following a different leader",
                   "no action. I am (", "starting as a secondary", "starting primary after failure",
                   "crash recovery", "demoted self", "Demoting self", "starting after demotion",
                   "failed to update leader lock", "restarting after failure")  # fmt: skip
# The events that change who takes writes: every one is kept (a second promotion is a second stall), where the
# rest are kept once per member.
EVERY_TIME = (
    "promoted self to leader",
    "acquired session lock as a leader",
    "released leader key voluntarily",
    "starting primary after failure",
    "demoted self",
    "Demoting self",
    "failed to update leader lock",
)


def failover_timeline(logs: dict[str, Path], offsets: dict[str, int], fault_at: float, limit: float = 60) -> list:
    """The failover's events in every member's Patroni log: seconds after the fault, member, message (within
    `limit` s; each kind once per member, but every change of who leads), so a slow failover can be told from a
    slow writer."""
    events = []
    for member, path in logs.items():
        seen = set()
        try:
            with path.open(errors="replace") as stream:
                stream.seek(offsets.get(member, 0))
                for line in stream:
                    try:
                        record = json.loads(line)
                        at = datetime.datetime.strptime(record["asctime"], "%Y-%m-%d %H:%M:%S,%f").replace(
                            tzinfo=datetime.UTC).timestamp()  # fmt: skip
                    except (ValueError, KeyError, TypeError):
                        continue
                    message = str(record.get("message", ""))
                    kind = next((e for e in FAILOVER_EVENTS if e in message), None)
                    if kind and (kind in EVERY_TIME or kind not in seen) and 0 <= at - fault_at <= limit:
                        seen.add(kind)
                        events.append({"s": round(at - fault_at, 2), "member": member, "event": message[:160]})
        except OSError:
            continue
    return sorted(events, key=lambda e: e["s"])


def run(reach: Reach, scratch, on_step=None, project_dir=None) -> Report:
    ready = stage(reach, spared_az=None)
    host = next(h for h in reach.database_hosts if h.name == ready.leader.host)
    settings = yaml.safe_load(reach.read_file(host, PATRONI_CONFIG))
    data_dir = settings["postgresql"]["data_dir"]
    log_dir = settings["postgresql"]["parameters"]["log_directory"]
    report = Report("ebs-loss", reach.region, host.az, old_leader=host.name)
    run_id = f"ebsloss{int(time.time())}"
    step = stepper(report, on_step)
    patroni_log = reach.sandboxes.root(host) / log_dir.lstrip("/") / "patroni.log"
    log_offset = patroni_log.stat().st_size if patroni_log.exists() else 0
    # Every member's Patroni log from here on: the failover's own timeline goes into the report.
    member_logs = {h.name: reach.sandboxes.root(h) / log_dir.lstrip("/") / "patroni.log" for h in reach.database_hosts}
    offsets = {name: path.stat().st_size if path.exists() else 0 for name, path in member_logs.items()}
    writes = workload.writer(reach.sandboxes, ready.writer_host, ready.url, run_id)
    probes = workload.prober(reach.sandboxes, reach.region, ready.routers, scratch, run_id)
    try:
        if not (writes.wait_for(20, timeout=60) and probes.wait_for(5, timeout=60)):
            raise DrillError(f"the writer on {ready.writer_host.name} or the prober did not get going")
        step("writer and prober running")
        still_healthy(reach)
        # The volume is gone: the server panics on its next write, and every file under PGDATA is lost.
        fault_at = lose_volume(reach.sandboxes.root(host) / data_dir.lstrip("/"))
        step(f"lost the volume of {data_dir} on {host.name}: server killed, files removed")
        run_runbook("ebs-loss", {"REGION": reach.region, "MEMBER": host.name}, scratch, step,
                    reach.sandboxes.directory, project_dir)  # fmt: skip
        await_recovery(reach, writes, fault_at, report, host.name)
        step("writes acknowledged again")
        fault_ended = time.time()
        wait_until(lambda: rejoined(reach, {host.name}), REJOIN_TIMEOUT, f"{host.name} being rebuilt")
        report.rejoined_s = round(time.time() - fault_at, 2)
        step(f"{host.name} rebuilt and streaming")
    finally:
        attempts, requests = writes.stop(), probes.stop()
    present = workload.rows_present(reach.sandboxes, ready.writer_host, ready.url, run_id)
    report.record(attempts, requests, present, fault_at, fault_ended)
    with patroni_log.open(errors="replace") as lines:
        lines.seek(log_offset)
        built = [line for line in lines if BUILT_WITH in line]
    report.detail = {"wiped": data_dir, "writer": ready.writer_host.name, "run": run_id,
                     "rebuilt_with": built[-1].split(BUILT_WITH)[1].split('"')[0] if built else None,
                     "failover": failover_timeline(member_logs, offsets, fault_at),
                     "writes": timeline(attempts, fault_at)}  # fmt: skip
    return report
