"""rods: flip each control rod, show the behaviour it names change within its bound, and flip it back.

- router-read-only: every router agent turns read-only; a route published meanwhile reaches no router;
  with the rod off again, it reaches every router.
- dyno-launch-rate at 0: the dyno managers launch nothing, so a scale-up waits; back at its value, the
  new process runs.
- app-management-lockdown: `apps scale` is refused and the managers report the lockdown; a process
  killed meanwhile is still replaced (lockdown keeps working apps up).
- api-maintenance: every write verb of `bulkhead apps` is refused while `apps ps` answers and HTTP keeps
  flowing through the routers.
The rods are set through SSM as `bulkhead rods set` sets them; each figure `<rod>_obeyed_s` is the time
from the set to the agents showing the change, against `rods.BOUND_SECONDS`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from bulkhead import project
from bulkhead.agents import routes
from bulkhead.drills import agent_report, workload
from bulkhead.drills.agent_report import MANAGER_STATE, ROUTER_STATE, AgentReport, haproxy_servers, state
from bulkhead.drills.bad_route_record import live_routes
from bulkhead.drills.common import DrillError, poll_until, stepper
from bulkhead.drills.report import ok_ratio
from bulkhead.ha.reach import Reach
from bulkhead.ops import apps, rods
from bulkhead.ops.secrets import ssm_client

WHO = "drill rods"


def _every(reach: Reach, hosts, path: str, check: Callable[[dict], bool]) -> bool:
    return all(check(state(reach, host, path)) for host in hosts)


def _web_count(reach: Reach) -> int:
    return sum(1 for row in apps.processes(reach, reach.region) if row["app"] == "sample"
               and row["process"].startswith("web.") and row["state"] == "RUNNING")  # fmt: skip


def run(reach: Reach, scratch: Path, on_step: Callable[[str], None] | None = None,
        project_dir: Path | None = None) -> AgentReport:  # fmt: skip
    project_dir = project_dir or project.find()
    report = AgentReport("rods", reach.region)
    step = stepper(report, on_step)
    bound = rods.BOUND_SECONDS
    ssm = ssm_client(project_dir, reach.region)
    routers = agent_report.routers_following(reach)
    dynos = reach.of_role("dyno_host")
    normal = {row["rod"]: row["value"] for row in rods.current(ssm, reach.region)}
    if any(normal[r.name] != r.default for r in rods.RODS):
        raise DrillError(f"the rods of {reach.region} are not all at their normal values ({normal}); see "
                         f"`bulkhead rods list --region {reach.region}`")  # fmt: skip
    run_id = f"rods-{int(time.time())}"
    probes = workload.prober(reach.sandboxes, reach.region, routers, scratch, run_id, pause=0.05)
    started = time.time()
    try:
        if not probes.wait_for(5, timeout=30):
            raise DrillError(f"the prober got no answer through the routers; see {probes.log}")
        _router_read_only(reach, ssm, routers, report, step, bound)
        _launch_rate(reach, ssm, dynos, report, step, bound, project_dir)
        _lockdown(reach, ssm, dynos, report, step, bound, project_dir)
        _maintenance(reach, ssm, report, step, bound, project_dir)
    finally:
        try:
            _restore(ssm, reach.region, normal)
        finally:
            requests = probes.stop()
    ratio = ok_ratio(requests, started, time.time())
    report.figures["http_ok_ratio"] = ratio
    report.goal("http_ok_ratio", ratio, ">= 0.999", ratio is not None and ratio >= 0.999)
    return report


def _restore(ssm, region: str, normal: dict[str, str]) -> None:
    """Set back only the rods a failed step left flipped: a no-op write would bury each step's own change
    under a second, identical one in the rod's history."""
    now = {row["rod"]: row["value"] for row in rods.current(ssm, region)}
    for rod in rods.RODS:
        if now[rod.name] != normal[rod.name]:
            rods.set_rod(ssm, region, rod.name, normal[rod.name], WHO, "drill ends")


def _timed(report: AgentReport, name: str, check: Callable[[], bool], bound: float, timeout: float = 30) -> None:
    seconds = poll_until(check, timeout, interval=0.5)
    report.figures[f"{name}_obeyed_s"] = None if seconds is None else round(seconds, 2)
    report.goal(f"{name}_obeyed_s", report.figures[f"{name}_obeyed_s"], f"<= {bound:.0f}",
                seconds is not None and seconds <= bound)  # fmt: skip


def _router_read_only(reach, ssm, routers, report, step, bound) -> None:
    rods.set_rod(ssm, reach.region, "router-read-only", "on", WHO)
    read_only = lambda: _every(reach, routers, ROUTER_STATE, lambda s: s.get("mode", "").startswith("read-only (rod"))  # noqa: E731
    _timed(report, "router_read_only", read_only, bound)
    target = live_routes(reach)[0]
    route = routes.Route("sample", "drill-rods", target.address, target.port, target.az, time.time())
    with reach.registry() as registry:
        lease = registry.grant(120)
        registry.put(route.key(reach.region), route.value(), lease=lease)
        time.sleep(bound)
        ignored = not any(f"app_sample/{route.server}" in haproxy_servers(reach, r) for r in routers)
        report.goal("read_only_ignores_new_routes", ignored, "no router takes a route while the rod is on", ignored)
        step("router-read-only on: every agent read-only, a new route reaches no router")
        rods.set_rod(ssm, reach.region, "router-read-only", "off", WHO)
        seconds = poll_until(lambda: all(f"app_sample/{route.server}" in haproxy_servers(reach, r) for r in routers),
                             30, interval=0.5)  # fmt: skip
        follows = report.figures["router_follows_again_s"] = None if seconds is None else round(seconds, 2)
        report.goal("router_follows_again_s", follows, f"<= {bound:.0f}", follows is not None and follows <= bound)
        registry.revoke(lease)
    step("router-read-only off: the route reaches every router")


def _scale(reach: Reach, project_dir: Path, count: int) -> int:
    """Run `bulkhead apps scale sample=N` as an operator would; its exit status."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "bulkhead.cli", "--project", str(project_dir), "apps", "scale",
                             f"sample={count}", "--region", reach.region], capture_output=True, text=True,
                            timeout=60, check=False)  # fmt: skip
    return result.returncode


def _launch_rate(reach, ssm, dynos, report, step, bound, project_dir) -> None:
    before = _web_count(reach)
    rods.set_rod(ssm, reach.region, "dyno-launch-rate", "0", WHO)
    _timed(report, "dyno_launch_rate", lambda: _every(reach, dynos, MANAGER_STATE,
                                                      lambda s: s.get("launch_rate") == 0), bound)  # fmt: skip
    if _scale(reach, project_dir, before + 1) != 0:
        raise DrillError("`bulkhead apps scale` failed with every rod but the launch rate at its normal value")
    time.sleep(bound)
    held = _web_count(reach) == before
    report.goal("rate_zero_holds_launches", held, "no launch while the rate is 0", held)
    step("dyno-launch-rate 0: a scale-up launches nothing")
    rods.set_rod(ssm, reach.region, "dyno-launch-rate", rods.BY_NAME["dyno-launch-rate"].default, WHO)
    seconds = poll_until(lambda: _web_count(reach) == before + 1, 60, interval=1.0)
    launched = report.figures["launch_after_rate_restored_s"] = None if seconds is None else round(seconds, 2)
    report.goal("launch_after_rate_restored_s", launched, "<= 15 (a round, a boot, a report)",
                launched is not None and launched <= 15)  # fmt: skip
    _scale(reach, project_dir, before)
    poll_until(lambda: _web_count(reach) == before, 60, interval=1.0)
    step("dyno-launch-rate restored: the process launched, then scaled back")


def _lockdown(reach, ssm, dynos, report, step, bound, project_dir) -> None:
    before = _web_count(reach)
    rods.set_rod(ssm, reach.region, "app-management-lockdown", "on", WHO)
    _timed(report, "app_management_lockdown", lambda: _every(reach, dynos, MANAGER_STATE,
                                                             lambda s: s.get("lockdown") is True), bound)  # fmt: skip
    refused = _scale(reach, project_dir, before + 1) != 0
    report.goal("lockdown_refuses_scale", refused, "apps scale refused", refused)
    # A crash under lockdown: one web process killed; lockdown must not leave it dead.
    running = [(h, p) for h in dynos for p in state(reach, h, MANAGER_STATE).get("processes", {})
               if p.startswith("sample web.")]  # fmt: skip
    if not running:
        raise DrillError(f"no web process of sample runs in {reach.region}; see `bulkhead apps ps`")
    host, victim = running[0]
    program = "dyno-sample-" + victim.split()[1].replace(".", "-")
    pid = agent_report.agent_pid(reach, host, program)
    reach.sandboxes.run(host, "kill", "-KILL", str(pid), timeout=30)
    replaced = poll_until(lambda: agent_report.agent_pid(reach, host, program) not in (0, pid), 30, interval=0.5)
    replaced = report.figures["lockdown_crash_replaced_s"] = None if replaced is None else round(replaced, 2)
    report.goal("lockdown_replaces_crashes", replaced, "a killed process runs again within 30 s", replaced is not None)
    step("app-management-lockdown on: scale refused, a killed process replaced")
    rods.set_rod(ssm, reach.region, "app-management-lockdown", "off", WHO)
    step("app-management-lockdown off")


def _maintenance(reach, ssm, report, step, bound, project_dir) -> None:
    rods.set_rod(ssm, reach.region, "api-maintenance", "on", WHO)
    refused = _scale(reach, project_dir, 1) != 0
    report.goal("maintenance_refuses_writes", refused, "apps scale refused", refused)
    listed = bool(apps.processes(reach, reach.region))
    report.goal("maintenance_keeps_reads", listed, "apps ps answers", listed)
    step("api-maintenance on: writes refused, ps answers, HTTP flows")
    rods.set_rod(ssm, reach.region, "api-maintenance", "off", WHO)
