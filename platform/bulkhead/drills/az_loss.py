"""az-loss: power off every host of one AZ (the leader's unless told), as AWS FIS's AZ power interruption
does, while a writer commits rows and a prober sends HTTP from the surviving AZs. Then power it on and
wait for its database member to rejoin as a replica, with no command from anyone."""

from __future__ import annotations

import time

from bulkhead.drills import workload
from bulkhead.drills.common import (
    REJOIN_TIMEOUT,
    DrillError,
    await_recovery,
    rejoined,
    run_runbook,
    stage,
    stepper,
    still_healthy,
    wait_until,
)
from bulkhead.drills.report import Report
from bulkhead.ha import cluster
from bulkhead.ha.reach import Reach


def run(reach: Reach, az: str | None, scratch, on_step=None, project_dir=None) -> Report:
    """Run the drill on `reach`'s region; `scratch` is a directory for the prober's and the runbook's logs."""
    zones = sorted({h.az for h in reach.hosts})
    if az is not None and az not in zones:
        raise DrillError(f"--az {az} is not an AZ of {reach.region}'s hosts; choose one of {', '.join(zones)}")
    found = reach.cluster()
    current = cluster.leader(found)
    target = az or (current.az if current else zones[0])
    ready = stage(reach, spared_az=target)
    victims = [h for h in reach.hosts if h.az == target]
    members_lost = {m.host for m in ready.members if m.az == target}
    report = Report("az-loss", reach.region, target, old_leader=ready.leader.host)
    run_id = f"azloss{int(time.time())}"
    step = stepper(report, on_step)
    writes = workload.writer(reach.sandboxes, ready.writer_host, ready.url, run_id)
    probes = workload.prober(reach.sandboxes, reach.region, ready.routers, scratch, run_id)
    powered_off = False
    try:
        if not (writes.wait_for(20, timeout=60) and probes.wait_for(5, timeout=60)):
            raise DrillError(f"the writer on {ready.writer_host.name} or the prober did not get going; see "
                             f"{writes.log} and {probes.log}")  # fmt: skip
        step("writer and prober running")
        still_healthy(reach)
        powered_off = True
        for host in victims:
            reach.sandboxes.power_off(host)
        # The fault's moment: every host of the AZ is dark. A write acknowledged after it came from a survivor.
        fault_at = time.time()
        step(f"powered off {len(victims)} hosts in {target}")
        run_runbook("az-loss", {"REGION": reach.region, "AZ": target}, scratch, step, reach.sandboxes.directory,
                    project_dir)  # fmt: skip
        await_recovery(reach, writes, fault_at, report, ready.leader.host)
        step("writes acknowledged again")
        fault_ended = time.time()
        for host in victims:
            reach.sandboxes.power_on(host)
        powered_off = False
        step(f"powered on {target}")
        report.rejoined_s = round(
            wait_until(lambda: rejoined(reach, members_lost), REJOIN_TIMEOUT, f"the members of {target} rejoining"), 2
        )
        step("members of the AZ rejoined as replicas")
    finally:
        if powered_off:
            for host in victims:
                reach.sandboxes.power_on(host)
        attempts, requests = writes.stop(), probes.stop()
    present = workload.rows_present(reach.sandboxes, ready.writer_host, ready.url, run_id)
    report.record(attempts, requests, present, fault_at, fault_ended)
    report.detail = {"hosts_powered_off": [h.name for h in victims], "writer": ready.writer_host.name,
                     "routers": [r.name for r in ready.routers], "run": run_id}  # fmt: skip
    return report
