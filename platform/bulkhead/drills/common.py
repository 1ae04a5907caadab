"""What every database drill shares: its preconditions, the hosts it uses, and how it waits."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from bulkhead import project, runbook, runbook_run
from bulkhead.drills.report import Report
from bulkhead.errors import BulkheadError
from bulkhead.ha import cluster
from bulkhead.ha.reach import Reach
from bulkhead.hosts.sandbox import HostSpec, process_running

if TYPE_CHECKING:
    from bulkhead.drills.workload import Workload

URL_FILE = "/etc/bulkhead/database.url"
# Seconds the new leader may take to serve writes, and a lost member to rejoin.
RECOVERY_TIMEOUT = 120
REJOIN_TIMEOUT = 240


class DrillError(BulkheadError):
    """A drill cannot start, or its recovery did not come; the message says what to look at."""


@dataclass(frozen=True)
class Stage:
    """The region as the drill found it: a healthy cluster, and a writer's and a prober's hosts."""

    members: list[cluster.Member]
    leader: cluster.Member
    writer_host: HostSpec
    routers: list[HostSpec]
    url: str


def healthy_problem(found: list[cluster.Member], synchronous: bool = False) -> str | None:
    """Why the cluster is not healthy enough to drill on, or None: one running leader, every other member
    streaming on its timeline and, in synchronous mode, one of them synchronous (without one, Patroni
    promotes no one when the leader dies: any replica might lack acknowledged commits)."""
    leader = cluster.leader(found)
    if leader is None:
        return "the cluster has no running leader"
    for member in found:
        if member.host == leader.host:
            continue
        if member.state != "streaming" or member.timeline != leader.timeline:
            return f"member {member.host} ({member.az}) is {member.state} on timeline {member.timeline}"
    if synchronous and not any(m.synchronous for m in found):
        return "no replica is synchronous yet, so no member could take over without losing commits"
    return None


def synchronous_mode(reach: Reach) -> bool:
    """Patroni's synchronous_mode is on for the cluster (bulkhead:synchronousCommit)."""
    return bool(reach.dynamic_config().get("synchronous_mode"))


def stage(reach: Reach, spared_az: str | None) -> Stage:
    """Check the region can be drilled, changing nothing; the writer and routers avoid `spared_az`."""
    found = reach.cluster()
    problem = healthy_problem(found, synchronous_mode(reach)) if cluster.leader(found) else healthy_problem(found)
    if problem:
        raise DrillError(f"region {reach.region} is not healthy enough to drill: {problem}; see `bulkhead db "
                         f"status --region {reach.region}`")  # fmt: skip
    dynos = [d for d in reach.of_role("dyno_host") if d.az != spared_az]
    routers = [r for r in reach.of_role("router") if r.az != spared_az]
    if not dynos or not routers:
        raise DrillError(f"region {reach.region} needs a dyno host and a router outside {spared_az} to write and "
                         "probe through; run `bulkhead hosts up` for every host")  # fmt: skip
    url = reach.read_file(dynos[0], URL_FILE).strip()
    return Stage(found, cluster.leader(found), dynos[0], routers, url)  # type: ignore[arg-type]


def wipe(directory: Path, timeout: float = 10.0) -> None:
    """Remove `directory` and everything under it while a running server still writes there, as a lost
    volume takes it. A file the server creates between rmtree's listing and its rmdir (a new WAL segment)
    leaves a directory "not empty"; the next pass removes it. Once the directory itself is gone, nothing
    can be created in it any more."""
    deadline = time.monotonic() + timeout
    while True:
        shutil.rmtree(directory, ignore_errors=True)
        if not directory.exists():
            return
        if time.monotonic() > deadline:
            raise DrillError(f"{directory} could not be removed in {timeout:.0f} s; see what still writes there")


def server_processes(postmaster: int) -> list[int]:
    """The postmaster and every process it forked (backends, walsenders, the archiver...), from /proc."""
    children = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:
                children.append(int(proc.name))
    return [postmaster, *children]


def lose_volume(data_dir: Path) -> float:
    """The data volume fails under a running PostgreSQL, and returns the moment it did.

    On a lost EBS volume the server's next write gets an I/O error and it panics: from that instant it
    acknowledges nothing, and the files are gone. Here every process of the server is frozen (SIGSTOP: the
    postmaster first, so it forks no more), the directory removed, and the frozen processes killed (the
    panic). Removing the files beneath a server left running would not do: it keeps writing into the
    unlinked files and acknowledging commits that no volume will ever hold.
    """
    postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    os.kill(postmaster, signal.SIGSTOP)
    frozen = server_processes(postmaster)
    for pid in frozen:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    fault_at = time.time()
    try:
        wipe(data_dir)
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5  # a killed process is gone only once the kernel has torn it down
        while any(process_running(pid) for pid in frozen) and time.monotonic() < deadline:
            time.sleep(0.02)
    return fault_at


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.5) -> float:
    """Poll `check` every `interval` s until true; returns the seconds it took, or raises after `timeout` s."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(interval)
    raise DrillError(f"{what} did not happen within {timeout:.0f} s")


def poll_until(check: Callable[[], bool], timeout: float, interval: float = 1.0) -> float | None:
    """Poll `check` every `interval` s; the seconds it took to become true, or None after `timeout` s (a drill
    then reports the goal as missed rather than failing)."""
    try:
        return wait_until(check, timeout, "the check", interval)
    except DrillError:
        return None


def still_healthy(reach: Reach, timeout: float = 60) -> None:
    """Wait until the cluster is healthy again, right before the fault: the writer has been running, and a
    replica that restarted meanwhile (one the previous drill powered back on) leaves the leader without a
    synchronous standby. In Patroni's non-strict synchronous mode the leader then acknowledges commits alone,
    and a fault in that moment loses them: a real window, but not the fault this drill is about."""
    wait_until(lambda: healthy_problem(reach.cluster(), synchronous_mode(reach)) is None, timeout,
               "a healthy cluster with a synchronous replica, before the fault")  # fmt: skip


class Steps(Protocol):
    """A report that records its steps' seconds (a database drill's, the region-loss drill's)."""

    def step(self, name: str, seconds: float) -> None: ...


def stepper(report: Steps, on_step: Callable[[str], None] | None) -> Callable[[str], None]:
    """`step(name)` records the seconds since the previous step in `report` and tells `on_step`."""
    last = [time.monotonic()]

    def step(name: str) -> None:
        now = time.monotonic()
        report.step(name, now - last[0])
        last[0] = now
        if on_step:
            on_step(name)

    return step


def await_recovery(reach: Reach, writes: Workload, fault_at: float, report: Report, old_leader: str) -> None:
    """Wait for a write acknowledged after the fault, then note who leads now (raises after RECOVERY_TIMEOUT)."""
    if not writes.wait_for(1, after=fault_at, timeout=RECOVERY_TIMEOUT):
        raise DrillError(f"no write was acknowledged within {RECOVERY_TIMEOUT} s of the fault; the members: "
                         f"{describe(reach)}")  # fmt: skip
    writes.wait_for(10, after=fault_at, timeout=30)
    new = cluster.leader(reach.cluster())
    report.new_leader = new.host if new else ""
    report.failed_over = bool(new and new.host != old_leader)


def describe(reach: Reach) -> str:
    """The cluster in one line, for an error message: each member's host, AZ, role, state and timeline."""
    return "; ".join(f"{m.host} ({m.az}) {m.role} {m.state} tl {m.timeline}" for m in reach.cluster())


def rejoined(reach: Reach, hosts: set[str]) -> bool:
    """Every one of `hosts` streams again from the leader, on its timeline."""
    found = reach.cluster()
    leader = cluster.leader(found)
    return leader is not None and all(
        m.state == "streaming" and m.timeline == leader.timeline for m in found if m.host in hosts
    )


def run_runbook(name: str, values: dict[str, str], scratch: Path, step: Callable[[str], None], hosts_dir: Path,
                project_dir: Path | None = None) -> runbook_run.Run:  # fmt: skip
    """Run a runbook unattended, as an operator would after the fault: each of its steps becomes a step of the
    drill, its commands' output goes to a log in `scratch`, and they reach the drill's own sandboxes."""
    project_dir = project_dir or project.find()
    book = runbook.load(project_dir, name)
    scratch.mkdir(parents=True, exist_ok=True)
    with (scratch / f"runbook-{name}.log").open("a") as out:
        runner = runbook_run.Runner(book, project_dir, project.state_dir(project_dir, "runbooks"), confirm=None,
                                    out=lambda line: print(line, file=out, flush=True),
                                    on_step=lambda entry: step(f"runbook {entry['id']}"),
                                    environment={"BULKHEAD_HOSTS_DIR": str(hosts_dir)})  # fmt: skip
        return runner.run(runbook_run.new_run(book, book.resolve(values)))
