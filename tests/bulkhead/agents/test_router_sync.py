"""The router agent's applier, round by round, against a recording HAProxy: what it changes, when it reloads,
and what it does when HAProxy refuses."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bulkhead.agents.haproxy import HaproxyError, Settings, backends
from bulkhead.agents.router_sync import CONSOLIDATE_SECONDS, RouterSync
from bulkhead.agents.routes import Route

pytestmark = pytest.mark.unit
REGION = "eu-west-1"


class RecordingHaproxy:
    """HAProxy's side as the agent sees it: the files it was given, the runtime commands, the reloads."""

    def __init__(self, tmp_path: Path) -> None:
        self.settings = Settings(config=tmp_path / "check.cfg", routes=tmp_path / "routes.cfg")
        self.live: dict[str, set[str]] = {}
        self.commands: list[str] = []
        self.reloads = 0
        self.refuse = False
        self.text = ""

    def write_routes(self, text: str) -> None:
        if self.refuse:
            raise HaproxyError("haproxy -c refused the routes: test")
        self.text = text

    def backends(self) -> set[str]:
        return {b[len("app_") :] for b in self.live}

    def servers(self) -> dict[str, set[str]]:
        return {b: set(s) for b, s in self.live.items()}

    def reload(self) -> None:
        self.reloads += 1
        self.live = {f"app_{app}": set() for app in backends(self.text)}
        backend = ""
        for line in self.text.splitlines():
            if line.startswith("backend "):
                backend = line.split()[1]
            elif line.strip().startswith("server "):
                self.live[backend].add(line.split()[1])

    def add(self, route: Route) -> None:
        self.commands.append(f"add {route.server}")
        self.live.setdefault(f"app_{route.app}", set()).add(route.server)

    def readd(self, route: Route) -> None:
        self.commands.append(f"readd {route.server}")

    def drain(self, server: str) -> None:
        self.commands.append(f"drain {server}")

    def delete(self, server: str, force: bool = False) -> None:
        backend, name = server.split("/")
        self.commands.append(f"delete {name}")
        self.live[backend].discard(name)


class NoRods:
    def __init__(self) -> None:
        self.read_only = False

    def on(self, name: str) -> bool:
        return self.read_only and name == "router-read-only"


def route(n: int, app: str = "sample") -> Route:
    return Route(app, f"h{n}", f"10.1.0.{n}", 5000 + n, "eu-west-1a", time.time())


@pytest.fixture
def agent(tmp_path):
    haproxy = RecordingHaproxy(tmp_path)
    sync = RouterSync(None, haproxy, REGION, tmp_path / "state.json", rods=NoRods())  # type: ignore[arg-type]
    sync.apps = frozenset({"sample"})
    return sync, haproxy


def put(sync: RouterSync, *routes: Route) -> None:
    for r in routes:
        sync.pending.put(r.key(REGION), r.value().encode())


def test_first_table_reloads_then_server_changes_go_through_the_runtime_api(agent):
    sync, haproxy = agent
    put(sync, route(1), route(2))
    sync.step()
    assert haproxy.reloads == 1 and haproxy.live == {"app_sample": {"h1_5001", "h2_5002"}}
    put(sync, route(3))
    sync.pending.put(route(1).key(REGION), None)
    sync.step()
    assert haproxy.reloads == 1
    assert haproxy.commands == ["add h3_5003", "drain app_sample/h1_5001"]
    sync.reap(time.time())
    assert "delete h1_5001" in haproxy.commands and "h1_5001" not in haproxy.text


def test_a_new_app_needs_a_reload(agent):
    sync, haproxy = agent
    put(sync, route(1))
    sync.step()
    sync.apps = frozenset({"sample", "billing"})
    put(sync, route(2, "billing"))
    sync.step()
    assert haproxy.reloads == 2 and "backend app_billing" in haproxy.text


def test_refused_it_keeps_the_last_good_table_alerts_and_retries_the_whole_batch(agent):
    sync, haproxy = agent
    put(sync, route(1))
    sync.step()
    haproxy.refuse = True
    put(sync, route(2))
    sync.step(now=1000.0)
    assert sync.state.mode.startswith("read-only (cannot apply") and sync.report(now=1000.0).alert
    assert list(sync.table) == [route(1).key(REGION)] and "h2_5002" not in haproxy.text
    haproxy.refuse = False
    sync.step(now=1001.0)  # before the retry time: nothing
    assert "h2_5002" not in haproxy.text
    sync.step(now=1000.0 + sync.retry_seconds)
    assert "h2_5002" in haproxy.text and sync.state.mode == "following"


def test_read_only_rod_ignores_the_stream_and_a_flip_back_reads_everything(agent):
    sync, haproxy = agent
    put(sync, route(1))
    sync.step()
    sync.rods.read_only = True
    put(sync, route(2))
    sync.step()
    assert "h2_5002" not in haproxy.text and sync.state.mode == "read-only (rod router-read-only)"
    sync.rods.read_only = False
    sync.step()
    assert "h2_5002" in haproxy.text and sync._resync.is_set()


def test_runtime_added_servers_are_consolidated_by_a_reload_after_a_quiet_spell(agent):
    sync, haproxy = agent
    put(sync, route(1))
    sync.step()
    put(sync, route(2))
    sync.step()
    reloads = haproxy.reloads
    sync.consolidate(time.time() + 1)
    assert haproxy.reloads == reloads
    sync.consolidate(time.time() + CONSOLIDATE_SECONDS + 1)
    assert haproxy.reloads == reloads + 1 and sync.state.consolidations == 1
    sync.consolidate(time.time() + 2 * CONSOLIDATE_SECONDS)
    assert haproxy.reloads == reloads + 1  # nothing added since


def test_bad_records_are_counted_raise_the_alert_and_leave_the_table(agent):
    sync, haproxy = agent
    put(sync, route(1))
    sync.step()
    sync.pending.put(route(1).key(REGION), b'{"app": "sample", "port": "x"}')
    sync.pending.put(f"/bulkhead/{REGION}/routes/zz", b"\xff")
    sync.step()
    report = sync.report()
    assert report.records_rejected == 2 and report.alert and report.alert_reason == "route records rejected"
    assert "h1_5001" in haproxy.text
