"""What the agents' drills share: a report of figures and goals, and reading the agents on the hosts."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from bulkhead.drills.common import DrillError
from bulkhead.files import write_json
from bulkhead.ha.reach import Reach
from bulkhead.hosts.sandbox import HostSpec

ROUTER_STATE = "/var/lib/bulkhead/router/state.json"
MANAGER_STATE = "/var/lib/bulkhead/dyno-manager/state.json"


@dataclass
class AgentReport:
    """A drill's figures, each goal with its value and whether it was met, and the steps' seconds."""

    drill: str
    region: str
    figures: dict = field(default_factory=dict)
    goals: dict = field(default_factory=dict)
    steps: list[dict] = field(default_factory=list)

    def step(self, name: str, seconds: float) -> None:
        self.steps.append({"name": name, "seconds": round(seconds, 2)})

    def goal(self, name: str, value, goal: str, met: bool) -> None:
        self.goals[name] = {"value": value, "goal": goal, "met": bool(met)}

    @property
    def passed(self) -> bool:
        return bool(self.goals) and all(g["met"] for g in self.goals.values())

    def as_json(self) -> dict:
        return {"drill": self.drill, "region": self.region, **self.figures, "goals": self.goals,
                "passed": self.passed, "steps": self.steps}  # fmt: skip

    def save(self, directory: Path) -> Path:
        path = directory / f"{self.drill}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
        write_json(path, self.as_json())
        return path


def state(reach: Reach, host: HostSpec, path: str) -> dict:
    """An agent's figures, as it last wrote them on its host."""
    try:
        return json.loads(reach.read_file(host, path))
    except ValueError:
        return {}


def agent_pid(reach: Reach, host: HostSpec, program: str) -> int:
    """The pid supervisord has for `program` on `host` (0: not running)."""
    result = reach.sandboxes.run(host, "supervisorctl", "pid", program, timeout=15)
    text = result.stdout.strip()
    return int(text) if text.isdigit() else 0


def _following(figures: dict) -> bool:
    return figures.get("mode") == "following" and time.time() - figures.get("updated_at", 0) <= 10


def routers_following(reach: Reach, timeout: float = 15) -> list[HostSpec]:
    """The region's routers, each with its agent following the registry (waiting up to `timeout` s: an agent
    retries a refused change every 5 s); DrillError otherwise."""
    routers = reach.of_role("router")
    if not routers:
        raise DrillError(f"region {reach.region} has no routers; run `bulkhead hosts up` and `hosts configure`")
    deadline = time.monotonic() + timeout
    while not all(_following(state(reach, r, ROUTER_STATE)) for r in routers) and time.monotonic() < deadline:
        time.sleep(0.5)
    for router in routers:
        figures = state(reach, router, ROUTER_STATE)
        if not _following(figures):
            mode = figures.get("mode", "no state")
            raise DrillError(f"the router agent on {router.name} is not following the registry ({mode}); see "
                             "/var/log/bulkhead/router-sync.log there")  # fmt: skip
    return routers


def haproxy_servers(reach: Reach, router: HostSpec) -> set[str]:
    """`backend/server` for every server the router's running HAProxy routes to: a server in maintenance
    (a removed route draining before its deletion) gets no request and is left out."""
    result = reach.sandboxes.run(router, "sh", "-c", "echo 'show servers state' | socat - "
                                 "UNIX-CONNECT:/var/lib/bulkhead/router/admin.sock", timeout=15)  # fmt: skip
    servers = set()
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) > 6 and parts[0].isdigit() and parts[6] == "0":
            servers.add(f"{parts[1]}/{parts[3]}")
    return servers
