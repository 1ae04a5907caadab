"""The dyno manager's view of a real supervisord: what it launched, in what state, read over the socket."""

from __future__ import annotations

import json
import time

import pytest

from bulkhead.agents import routes
from bulkhead.agents.dyno_manager import SETTLE_SECONDS, DynoManager, Host, Supervisor
from bulkhead.agents.dynos import Desired, Process
from bulkhead.localcloud import server

WEB, WORKER = Process("sample", "web", 1), Process("sample", "worker", 1)


def _states(supervisor: Supervisor) -> dict[Process, tuple[str, int]]:
    return {r.process: (r.state, r.restarts) for r in supervisor.running()}


def _wait_for(supervisor: Supervisor, expected: dict, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while _states(supervisor) != expected:
        assert time.monotonic() < deadline, _states(supervisor)
        time.sleep(0.2)


def test_running__lists_the_dynos_launched_with_their_state_and_nothing_else(supervisord, tmp_path):
    assert _states(supervisord) == {}  # haproxy is supervisord's, not a dyno
    supervisord.start(WEB, "sleep 600", {"PORT": "5001"}, tmp_path, "root", {"port": 5001, "restarts": 2})
    supervisord.start(WORKER, "false", {}, tmp_path, "root", {"restarts": 0})
    # A process that stays up is RUNNING; one that exits at once is given up on (FATAL), as supervisord does.
    _wait_for(supervisord, {WEB: ("RUNNING", 2), WORKER: ("FATAL", 0)})
    assert supervisord.ports_in_use() == {5001}
    supervisord.stop(WORKER)
    _wait_for(supervisord, {WEB: ("RUNNING", 2)})


def test_running__without_supervisord_raises_instead_of_reporting_no_processes(tmp_path):
    # An empty list would make the manager launch every process again.
    with pytest.raises(OSError):
        Supervisor(tmp_path, tmp_path, tmp_path / "absent.sock").running()


def test_adopt__a_restarted_manager_routes_the_web_process_it_finds_running_without_launching_it(
    etcd, supervisord, tmp_path
):
    # Given: a web dyno running under supervisord whose manager has gone (its lease, and the route, with it)
    _, registry = etcd
    region = f"r{time.time_ns()}"
    port = server.free_port()
    process = Process("sample", "web", 1)
    supervisord.start(process, f"python3 -m http.server {port} --bind 127.0.0.1", {}, tmp_path, "root",
                      {"port": port, "restarts": 0})  # fmt: skip
    registry.put(routes.apps_prefix(region) + "sample", Desired("sample", {"web": 1}).value())
    host = Host("h1", "127.0.0.1", "eu-west-1a", "1", region)
    manager = DynoManager(registry, host, supervisord, tmp_path, tmp_path / "state.json")
    manager.figures.started_at -= SETTLE_SECONDS
    # When: the new manager's rounds run (the process takes a moment to answer)
    deadline = time.monotonic() + 20
    while not manager.routes:
        assert time.monotonic() < deadline, "no route published"
        manager.step()
        time.sleep(0.2)
    # Then: its route is back in the registry under the new lease, and nothing was launched or stopped
    found, _ = registry.get_prefix(routes.routes_prefix(region))
    assert list(found) == [manager.routes[process].key(region)]
    assert json.loads(found[manager.routes[process].key(region)])["port"] == port
    assert manager.figures.launches == 0 and manager.figures.stopped == 0
    assert _states(supervisord) == {process: ("RUNNING", 0)}
