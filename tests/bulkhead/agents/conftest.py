"""The real servers the agents drive, started on loopback or under tmp_path: etcd (the registry) and
supervisord (what runs a dyno host's processes)."""

from __future__ import annotations

import subprocess
import time

import pytest

from bulkhead.agents.dyno_manager import Supervisor
from bulkhead.agents.registry import Registry, RegistryError
from bulkhead.localcloud import server


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    directory = tmp_path_factory.mktemp("etcd")
    client, peer = server.free_port(), server.free_port()
    process = subprocess.Popen(
        ["etcd", "--data-dir", str(directory / "data"), "--listen-client-urls", f"http://127.0.0.1:{client}",
         "--advertise-client-urls", f"http://127.0.0.1:{client}", "--listen-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}", "--initial-cluster",
         f"default=http://127.0.0.1:{peer}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    registry = Registry([f"127.0.0.1:{client}"], timeout=1.0)
    deadline = time.monotonic() + 20
    while True:
        try:
            registry.get("/ready")
            break
        except RegistryError:
            assert time.monotonic() < deadline, "etcd did not start"
            time.sleep(0.2)
    yield process, registry
    process.kill()
    process.wait()


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
