"""ebs-loss: the leader's data volume is lost under the running writer: the server panics and its files are
gone. Patroni gives up the leader key, another member takes over, and the lost member is rebuilt from the
archive (barman-cloud-restore), not from the new leader: its Patroni log says which way it was built."""

from __future__ import annotations

import time

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
from bulkhead.drills.report import Report
from bulkhead.ha.reach import Reach

PATRONI_CONFIG = "/etc/bulkhead/patroni.yml"
BUILT_WITH = "replica has been created using "


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
                     "rebuilt_with": built[-1].split(BUILT_WITH)[1].split('"')[0] if built else None}  # fmt: skip
    return report
