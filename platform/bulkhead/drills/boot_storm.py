"""boot-storm: one cell's disks sync slowly (February 2012) while the app is scaled up.

On every dyno host of the slow cell, a FUSE passthrough that delays each fsync by `FSYNC_DELAY_S` is
mounted over the apps' directory, inside the host's own mount namespace (`slow_fsync`): every process
launched there boots slowly, as its boot syncs a marker to disk. The launch rate rod is set to `RATE`
for the drill (and every manager seen obeying it), and the app is scaled up by `PER_HOST` processes per
dyno host. Then the slow disks recover (the FUSE mounts go) and the backlog must drain. Goals:
- `max_launches_per_cell_minute` <= the rod, in every cell and minute (from the managers' own logs);
- `breaker_opened_slow_cell`: the breaker opened on every host of the slow cell;
- `other_cells_untouched`: no breaker opened in another cell, and every boot there stayed fast;
- `drained_s`: once boots recover, every process asked for runs within `DRAIN_TIMEOUT` s.
The app's formation and the rod are put back as they were.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from bulkhead import project
from bulkhead.agents import routes
from bulkhead.drills.agent_report import MANAGER_STATE, AgentReport, state
from bulkhead.drills.common import DrillError, poll_until, stepper
from bulkhead.ha.reach import Reach
from bulkhead.hosts.sandbox import HostSpec
from bulkhead.ops import rods
from bulkhead.ops.secrets import ssm_client

FSYNC_DELAY_S = 12.0
RATE = 12
PER_HOST = 5
SLOW_PHASE_S = 45
DRAIN_TIMEOUT = 120
RATE_SEEN_TIMEOUT = 30
APPS_DIR = "/srv/bulkhead/apps"
MANAGER_LOG = "/var/log/bulkhead/dyno-manager.log"
WHO = "drill boot-storm"


def cell(host: HostSpec) -> str:
    return host.tags.get("bulkhead:cell", "")


def _supervisord_pid(reach: Reach, host: HostSpec) -> int:
    root = str(reach.sandboxes.root(host))
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "root") == root and b"supervisord" in (entry / "cmdline").read_bytes():
                    return int(entry.name)
    raise DrillError(f"no supervisord runs in {host.name}'s sandbox; run `bulkhead hosts up`")


class SlowDisks:
    """The FUSE mounts over the apps' directory of some hosts, each in the host's own mount namespace."""

    def __init__(self, reach: Reach, hosts: list[HostSpec], delay: float, log_dir: Path) -> None:
        self.reach, self.hosts, self.delay, self.log_dir = reach, hosts, delay, log_dir
        self.daemons: dict[str, subprocess.Popen] = {}

    def _path(self, host: HostSpec) -> str:
        return str(self.reach.sandboxes.root(host) / APPS_DIR.lstrip("/"))

    def _enter(self, host: HostSpec) -> list[str]:
        return ["nsenter", f"--mount=/proc/{_supervisord_pid(self.reach, host)}/ns/mnt", "--"]

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for host in self.hosts:
            log = (self.log_dir / f"slow-fsync-{host.name}.log").open("w")
            self.daemons[host.name] = subprocess.Popen(
                [*self._enter(host), sys.executable, "-m", "bulkhead.drills.slow_fsync", self._path(host),
                 "--delay", str(self.delay)], stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        for host in self.hosts:
            mounted = poll_until(lambda h=host: self._mounted(h), 15, interval=0.3)
            if mounted is None:
                self.stop()
                raise DrillError(f"the slow disk did not mount on {host.name}; see {self.log_dir}")

    def _mounted(self, host: HostSpec) -> bool:
        result = subprocess.run([*self._enter(host), "grep", "-q", f" {self._path(host)} fuse", "/proc/self/mounts"],
                                capture_output=True, timeout=10, check=False)  # fmt: skip
        return result.returncode == 0

    def stop(self) -> None:
        """The disks recover: each mount goes (lazily: a sync in flight fails), then its daemon."""
        for host in self.hosts:
            with contextlib.suppress(DrillError, subprocess.SubprocessError):
                subprocess.run([*self._enter(host), "umount", "-l", self._path(host)], capture_output=True,
                               timeout=15, check=False)  # fmt: skip
        for daemon in self.daemons.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(daemon.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                daemon.wait(timeout=5)


def launches(reach: Reach, hosts: list[HostSpec], since: float) -> list[dict]:
    """Every launch the managers logged as permitted since `since`, with its cell."""
    found = []
    for host in hosts:
        path = reach.sandboxes.root(host) / MANAGER_LOG.lstrip("/")
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    logged_at = (
                        dt.datetime.strptime(entry.get("ts", "1970-01-01T00:00:00.000Z"), "%Y-%m-%dT%H:%M:%S.%fZ")
                        .replace(tzinfo=dt.UTC)
                        .timestamp()
                    )
                    if entry.get("event") == "launched" and logged_at >= since:
                        found.append({**entry, "host": host.name})
    return found


def _booted(reach: Reach) -> int:
    """The sample app's web processes that booted: each has its route published (a process supervisord runs
    but that has not answered HTTP yet has none)."""
    with reach.registry() as registry:
        found, _ = registry.get_prefix(f"{routes.routes_prefix(reach.region)}sample/")
    return len(found)


def _scale(project_dir: Path, region: str, count: int) -> None:
    result = subprocess.run([sys.executable, "-m", "bulkhead.cli", "--project", str(project_dir), "apps", "scale",
                             f"sample={count}", "--region", region], capture_output=True, text=True, timeout=60,
                            check=False)  # fmt: skip
    if result.returncode != 0:
        raise DrillError(f"`bulkhead apps scale sample={count}` failed: {result.stderr.strip()[-300:]}")


def run(reach: Reach, scratch: Path, on_step: Callable[[str], None] | None = None,
        project_dir: Path | None = None) -> AgentReport:  # fmt: skip
    project_dir = project_dir or project.find()
    report = AgentReport("boot-storm", reach.region)
    step = stepper(report, on_step)
    dynos = reach.of_role("dyno_host")
    cells = sorted({cell(h) for h in dynos})
    if len(cells) < 2:
        raise DrillError(f"region {reach.region} has one dyno cell; boot-storm slows one and watches another: set "
                         "bulkhead:cells to 2 or more, then run `bulkhead local up` and `hosts up` again")  # fmt: skip
    slow_cell = cells[0]
    slow = [h for h in dynos if cell(h) == slow_cell]
    others = [h for h in dynos if cell(h) != slow_cell]
    ssm = ssm_client(project_dir, reach.region)
    rate_before = next(r["value"] for r in rods.current(ssm, reach.region) if r["rod"] == "dyno-launch-rate")
    with reach.registry() as registry:
        desired = json.loads(registry.get(f"/bulkhead/{reach.region}/apps/sample") or b"{}")
    web_before = desired.get("formation", {}).get("web", 0)
    opened_before = {h.name: state(reach, h, MANAGER_STATE).get("breaker_opened", 0) for h in dynos}
    target = web_before + PER_HOST * len(dynos)
    disks = SlowDisks(reach, slow, FSYNC_DELAY_S, scratch)
    started = time.time()
    rods.set_rod(ssm, reach.region, "dyno-launch-rate", str(RATE), WHO, "boot-storm")
    try:
        # A rod is obeyed within seconds, not at once: scaling before every manager has read it lets a manager
        # still at the old rate launch past the new one in that minute.
        seen = poll_until(lambda: all(state(reach, h, MANAGER_STATE).get("launch_rate") == RATE for h in dynos),
                          RATE_SEEN_TIMEOUT, interval=0.5)  # fmt: skip
        if seen is None:
            raise DrillError(f"the dyno managers did not take the launch rate {RATE} within {RATE_SEEN_TIMEOUT} s; "
                             f"see `bulkhead rods list --region {reach.region}`")  # fmt: skip
        step(f"every dyno manager at launch rate {RATE}/min")
        disks.start()
        step(f"fsync {FSYNC_DELAY_S:.0f} s slower on cell {slow_cell}'s {len(slow)} hosts")
        _scale(project_dir, reach.region, target)
        step(f"sample scaled from web={web_before} to web={target}")
        opened = poll_until(lambda: all(state(reach, h, MANAGER_STATE).get("breaker_opened", 0) > opened_before[h.name]
                                        for h in slow), SLOW_PHASE_S, interval=1.0)  # fmt: skip
        step(f"breaker open on every host of cell {slow_cell}" if opened is not None else "breakers did not all open")
        time.sleep(max(0.0, 10 - (opened or 0)))  # the other cell's launches go on meanwhile
        slow_states = {h.name: state(reach, h, MANAGER_STATE) for h in slow}
        other_states = {h.name: state(reach, h, MANAGER_STATE) for h in others}
        disks.stop()
        recovered_at = time.time()
        step("slow disks recovered")
        drained = poll_until(lambda: _booted(reach) >= target, DRAIN_TIMEOUT, interval=2.0)
        step("backlog drained" if drained is not None else f"backlog not drained in {DRAIN_TIMEOUT} s")
        logged = launches(reach, dynos, started)
        after = {h.name: state(reach, h, MANAGER_STATE) for h in dynos}
    finally:
        disks.stop()
        rods.set_rod(ssm, reach.region, "dyno-launch-rate", rate_before, WHO, "boot-storm ends")
        with contextlib.suppress(DrillError):
            _scale(project_dir, reach.region, web_before)
    # Per cell and per minute of the clock (the windows the rod counts in). A launch logged without the time of
    # a permit went around the count: it is a failure of its own.
    per_window = Counter((e.get("cell"), int(float(e["permitted_at"]) // 60)) for e in logged if e.get("permitted_at"))
    unpermitted = sum(1 for e in logged if not e.get("permitted_at"))
    worst = max(per_window.values(), default=0)
    other_opened = sum(after[h.name].get("breaker_opened", 0) - opened_before[h.name] for h in others)
    other_boots = [b["seconds"] for h in others for b in after[h.name].get("boots", []) if b.get("at", 0) >= started]
    slowest_other = max((b for b in other_boots if b is not None), default=0.0)
    report.figures = {"slow_cell": slow_cell, "rate": RATE, "web_before": web_before, "web_target": target,
                      "launches": len(logged), "max_launches_per_cell_minute": worst, "unpermitted": unpermitted,
                      "launches_per_cell_minute": {f"cell {c} minute {m}": n
                                                   for (c, m), n in sorted(per_window.items())},
                      "breaker_open_after_s": None if opened is None else round(opened, 1),
                      "slow_cell_refused_by_breaker": sum(s.get("launches_refused_breaker", 0)
                                                          for s in slow_states.values()),
                      "other_cell_breaker_opened": other_opened,
                      "other_cell_slowest_boot_s": slowest_other,
                      "other_cell_running_before_recovery": sum(
                          1 for s in other_states.values() for p, v in s.get("processes", {}).items()
                          if p.startswith("sample web.") and v == "RUNNING"),
                      "drained_s": None if drained is None else round(drained, 1),
                      "recovered_after_s": round(recovered_at - started, 1)}  # fmt: skip
    report.goal("max_launches_per_cell_minute", worst, f"<= {RATE}, none unpermitted",
                0 < worst <= RATE and unpermitted == 0)  # fmt: skip
    report.goal("breaker_opened_slow_cell", opened is not None, f"every host of cell {slow_cell}", opened is not None)
    report.goal("other_cells_untouched", {"breaker_opened": other_opened, "slowest_boot_s": slowest_other},
                "no breaker opened, every boot under 10 s", other_opened == 0 and slowest_other < 10)  # fmt: skip
    report.goal("drained_s", report.figures["drained_s"], f"<= {DRAIN_TIMEOUT}", drained is not None)
    return report
