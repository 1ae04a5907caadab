"""az-loss: power off every host of one AZ (the leader's unless told), as AWS FIS's AZ power interruption
does, while a writer commits rows and a prober sends HTTP from the surviving AZs. Then power it on and
wait for its database member to rejoin as a replica, with no command from anyone."""

from __future__ import annotations

import time

from bulkhead.drills import workload
from bulkhead.drills.common import DrillError, describe, rejoined, stage, wait_until
from bulkhead.drills.report import Report, ok_ratio, recovery_seconds, rows_lost
from bulkhead.ha import cluster
from bulkhead.ha.reach import Reach

# Seconds the new leader may take to serve writes, and the powered-on member to rejoin.
RECOVERY_TIMEOUT = 120
REJOIN_TIMEOUT = 240


def run(reach: Reach, az: str | None, scratch, on_step=None) -> Report:
    """Run the drill on `reach`'s region; `scratch` is a directory for the prober's log."""
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
    step = _stepper(report, on_step)
    writes = workload.writer(reach.sandboxes, ready.writer_host, ready.url, run_id)
    probes = workload.prober(reach.sandboxes, reach.region, ready.routers, scratch, run_id)
    powered_off = False
    try:
        if not (writes.wait_for(20, timeout=60) and probes.wait_for(5, timeout=60)):
            raise DrillError(f"the writer on {ready.writer_host.name} or the prober did not get going; see "
                             f"{writes.log} and {probes.log}")  # fmt: skip
        step("writer and prober running")
        powered_off = True
        for host in victims:
            reach.sandboxes.power_off(host)
        # The fault's moment: every host of the AZ is dark. A write acknowledged after it came from a survivor.
        fault_at = time.time()
        step(f"powered off {len(victims)} hosts in {target}")
        if not writes.wait_for(1, after=fault_at, timeout=RECOVERY_TIMEOUT):
            raise DrillError(f"no write was acknowledged within {RECOVERY_TIMEOUT} s of the fault; the members: "
                             f"{describe(reach)}")  # fmt: skip
        step("writes acknowledged again")
        writes.wait_for(10, after=fault_at, timeout=30)
        new = cluster.leader(reach.cluster())
        report.new_leader = new.host if new else ""
        report.failed_over = bool(new and new.host != ready.leader.host)
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
    report.rto_s = recovery_seconds(attempts, fault_at)
    report.rows_acknowledged = sum(a.ok for a in attempts)
    report.rows_lost = rows_lost(attempts, fault_at, present)
    report.http_ok_ratio = ok_ratio(requests, fault_at, fault_ended)
    report.detail = {"hosts_powered_off": [h.name for h in victims], "writer": ready.writer_host.name,
                     "routers": [r.name for r in ready.routers], "run": run_id}  # fmt: skip
    return report


def _stepper(report: Report, on_step):
    last = [time.monotonic()]

    def step(name: str) -> None:
        now = time.monotonic()
        report.step(name, now - last[0])
        last[0] = now
        if on_step:
            on_step(name)

    return step
