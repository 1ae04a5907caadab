"""The dyno manager's view of a real supervisord: what it launched, in what state, read over the socket."""

from __future__ import annotations

import subprocess
import time

import pytest

from bulkhead.agents.dyno_manager import Supervisor
from bulkhead.agents.dynos import Process

WEB, WORKER = Process("sample", "web", 1), Process("sample", "worker", 1)


@pytest.fixture
def supervisord(tmp_path):
    """A supervisord of its own (socket, includes and logs under tmp_path), with one program that is no dyno."""
    conf_dir = tmp_path / "conf.d"
    conf_dir.mkdir()
    socket_path = tmp_path / "supervisor.sock"
    config = tmp_path / "supervisord.conf"
    config.write_text(
        f"[unix_http_server]\nfile={socket_path}\nchmod=0700\n"
        f"[supervisord]\nlogfile={tmp_path}/supervisord.log\npidfile={tmp_path}/supervisord.pid\nnodaemon=true\n"
        "[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
        f"[supervisorctl]\nserverurl=unix://{socket_path}\n"
        f"[program:haproxy]\ncommand=sleep 600\n"
        f"[include]\nfiles={conf_dir}/*.conf\n"
    )
    daemon = subprocess.Popen(["supervisord", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while not socket_path.exists():
        assert daemon.poll() is None and time.monotonic() < deadline, (tmp_path / "supervisord.log").read_text()
        time.sleep(0.1)
    yield Supervisor(conf_dir, tmp_path, socket_path)
    daemon.terminate()
    daemon.wait(timeout=30)


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
