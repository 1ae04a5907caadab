"""The dyno manager's decisions: what an app asks for, which host runs which process, what to launch or
stop, and when launching must wait (the rate rod, the boot-time breaker). Plain values in and out; the
manager (`bulkhead.agents.dyno_manager`) does the I/O.

An app's desired state, `/bulkhead/<region>/apps/<app>` in the registry:
`{"formation": {"web": 2, "clock": 1}, "restarts": 0}`. `web` processes serve HTTP and get routes;
a type in `SINGLETONS` runs at most once in the region, fenced by a lease (`bulkhead.agents.singleton`).
"""

from __future__ import annotations

import json
import re
import statistics
from collections import deque
from dataclasses import dataclass, field

from bulkhead.agents.routes import APP_NAME
from bulkhead.errors import BulkheadError

PROCESS_TYPES = ("web", "clock")
SINGLETONS = frozenset({"clock"})
MAX_PROCESSES = 100
PROGRAM = re.compile(r"dyno-(?P<app>[a-z][a-z0-9-]{0,29})-(?P<type>[a-z]+)-(?P<index>[0-9]{1,3})")


class BadDesiredState(BulkheadError):
    """An app's desired state the manager cannot follow; the message says which part."""


@dataclass(frozen=True)
class Desired:
    """One app's desired state."""

    app: str
    formation: dict[str, int]
    restarts: int = 0

    def value(self) -> str:
        return json.dumps({"formation": self.formation, "restarts": self.restarts}, sort_keys=True)


def parse_desired(app: str, value: bytes | str) -> Desired:
    """An app's desired state from its registry value, or BadDesiredState."""
    if not APP_NAME.fullmatch(app):
        raise BadDesiredState(f"app name {app[:40]!r} is not valid")
    try:
        document = json.loads(value)
    except ValueError:
        raise BadDesiredState(f"desired state of {app} is not JSON") from None
    formation = document.get("formation") if isinstance(document, dict) else None
    if not isinstance(formation, dict):
        raise BadDesiredState(f"desired state of {app} has no formation")
    for kind, count in formation.items():
        if kind not in PROCESS_TYPES:
            raise BadDesiredState(f"{app}: unknown process type {kind!r}; the types are {', '.join(PROCESS_TYPES)}")
        if type(count) is not int or not 0 <= count <= MAX_PROCESSES:
            raise BadDesiredState(f"{app}: {kind}={count!r} is not 0-{MAX_PROCESSES}")
        if kind in SINGLETONS and count > 1:
            raise BadDesiredState(f"{app}: {kind} is a singleton; it runs at most once")
    restarts = document.get("restarts", 0)
    if type(restarts) is not int or restarts < 0:
        raise BadDesiredState(f"{app}: restarts is not a count")
    return Desired(app, dict(formation), restarts)


def parse_declaration(text: str) -> Desired:
    """`APP:TYPE=N,...` (the dyno manager's --declare) as a desired state, or BadDesiredState."""
    app, _, formation = text.partition(":")
    counts: dict[str, int] = {}
    for part in filter(None, formation.split(",")):
        kind, _, count = part.partition("=")
        if not count.isdigit():
            raise BadDesiredState(f"{text!r}: give APP:TYPE=N,... (e.g. sample:web=3,clock=1)")
        counts[kind] = int(count)
    return parse_desired(app, json.dumps({"formation": counts}))


@dataclass(frozen=True, order=True)
class Process:
    """One process of an app: its type and index (web.1, web.2 ...)."""

    app: str
    type: str
    index: int

    @property
    def program(self) -> str:
        """Its supervisord program name."""
        return f"dyno-{self.app}-{self.type}-{self.index}"

    @property
    def name(self) -> str:
        return f"{self.app} {self.type}.{self.index}"


def program_process(program: str) -> Process | None:
    """The process a supervisord program name stands for, or None if it is not a dyno's."""
    match = PROGRAM.fullmatch(program)
    return Process(match["app"], match["type"], int(match["index"])) if match else None


def placement(desired: list[Desired], hosts: list[str]) -> dict[str, list[Process]]:
    """Which host runs which process: every process of every app, dealt round-robin over `hosts` (the
    live managers, sorted: each host is in one AZ and cell, so consecutive processes of an app land on
    different ones). Every manager computes the same answer from the same registry."""
    ordered = sorted(hosts)
    plan: dict[str, list[Process]] = {host: [] for host in ordered}
    if not ordered:
        return plan
    for state in sorted(desired, key=lambda d: d.app):
        # Each app is dealt on its own (one app's scaling never moves another's processes), from an offset
        # given by its name, so that every app's web.1 does not land on the same host.
        dealt = sum(map(ord, state.app))
        for kind in PROCESS_TYPES:
            for index in range(1, state.formation.get(kind, 0) + 1):
                plan[ordered[dealt % len(ordered)]].append(Process(state.app, kind, index))
                dealt += 1
    return plan


@dataclass(frozen=True)
class Running:
    """A dyno process as supervisord reports it: its state, and the desired-state generation it runs."""

    process: Process
    state: str  # supervisord's: RUNNING, STARTING, BACKOFF, EXITED, FATAL, STOPPED ...
    restarts: int = 0

    @property
    def crashed(self) -> bool:
        # BACKOFF is supervisord still retrying; FATAL is supervisord giving up.
        return self.state in ("EXITED", "FATAL", "UNKNOWN")


@dataclass
class Plan:
    """What a manager should do this round."""

    launch: list[Process] = field(default_factory=list)  # new processes, or crashed ones to replace
    stop: list[Process] = field(default_factory=list)  # processes nobody asked for (or of a past generation)
    replace: list[Process] = field(default_factory=list)  # crashed: launched again even under lockdown


def reconcile(mine: list[Process], running: list[Running], restarts: dict[str, int], lockdown: bool) -> Plan:
    """Compare what this host should run with what it does.

    - a process it should run and does not: launch (a voluntary move: not under lockdown);
    - a process that crashed: replace (always: lockdown keeps working apps up, it does not let them die);
    - a process nobody asked for, or one of an earlier restart generation: stop (voluntary: not under
      lockdown, except that a process of an app nobody declares at all is always stopped).
    """
    plan = Plan()
    wanted = set(mine)
    by_process = {r.process: r for r in running}
    for process in sorted(wanted):
        found = by_process.get(process)
        if found is None:
            if not lockdown:
                plan.launch.append(process)
        elif found.crashed:
            plan.replace.append(process)
        elif found.restarts != restarts.get(process.app, 0) and not lockdown:
            plan.stop.append(process)  # a restart: stopped now, launched again next round
    declared = set(restarts)
    for found in running:
        if found.process not in wanted and (not lockdown or found.process.app not in declared):
            plan.stop.append(found.process)
    return plan


class LaunchWindow:
    """The `dyno-launch-rate` rod as a cap: at most `rate` launches per cell in each minute of the clock. The
    count lives in the registry (one key per cell and minute, incremented only below the rate, atomically),
    so all hosts of a cell share it."""

    @staticmethod
    def minute(now: float) -> int:
        return int(now // 60)


class Breaker:
    """Stops launches when boots slow down, instead of retrying into the February 2012 feedback loop.

    Closed: launches go ahead. It opens when the median of the last `window` boots exceeds `slow_s`, or a
    boot times out. Open: no launch for `cooldown_s`; then half-open: one probe launch is let through, and
    its boot closes the breaker (fast) or opens it again (slow).
    """

    def __init__(self, slow_s: float = 10.0, window: int = 3, cooldown_s: float = 30.0) -> None:
        self.slow_s, self.cooldown_s = slow_s, cooldown_s
        self.boots: deque[float] = deque(maxlen=window)
        self.state = "closed"
        self.opened_at = 0.0
        self.opened = 0
        self.probing = False

    def allows(self, now: float) -> bool:
        """Whether a launch may start now (in half-open state, only the one probe)."""
        if self.state == "closed":
            return True
        if self.state == "open" and now - self.opened_at >= self.cooldown_s:
            self.state = "half-open"
        if self.state == "half-open" and not self.probing:
            self.probing = True
            return True
        return False

    def booted(self, seconds: float | None, now: float) -> None:
        """A launch finished booting after `seconds` (None: it did not boot in time)."""
        slow = seconds is None or seconds > self.slow_s
        if self.state == "half-open":
            self.probing = False
            if slow:
                self._open(now)
            else:
                self.state = "closed"
                self.boots.clear()
            return
        self.boots.append(float("inf") if seconds is None else seconds)
        if seconds is None or (len(self.boots) == self.boots.maxlen and statistics.median(self.boots) > self.slow_s):
            self._open(now)

    def _open(self, now: float) -> None:
        if self.state != "open":
            self.opened += 1
        self.state, self.opened_at = "open", now
