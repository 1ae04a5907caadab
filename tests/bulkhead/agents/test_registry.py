"""The registry adapter, the manager's launch permits and singleton fencing, against a real etcd on loopback."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from bulkhead.agents import dynos
from bulkhead.agents.dyno_manager import DynoManager, Host, Supervisor, managers_prefix
from bulkhead.agents.registry import Registry, RegistryError

pytestmark = pytest.mark.unit
REGION = "eu-west-1"


def test_registry__a_dead_member_is_skipped_and_none_answering_is_one_clear_error(etcd):
    _, registry = etcd
    both = Registry(["127.0.0.1:9", registry.endpoints[0]], timeout=1.0)
    both.put("/t/a", "1")
    assert both.get("/t/a") == b"1"
    with pytest.raises(RegistryError, match=r"no registry member answered \(127.0.0.1:9: "):
        Registry(["127.0.0.1:9"], timeout=0.5).get("/t/a")


def test_registry__a_watch_delivers_puts_and_deletes_in_order_from_a_revision(etcd):
    _, registry = etcd
    _, revision = registry.get_prefix("/w/")
    seen = []

    def follow():
        for event in registry.watch_prefix("/w/", revision + 1, idle_timeout=2):
            seen.append((event.key, event.value))

    watcher = threading.Thread(target=follow)
    watcher.start()
    time.sleep(0.3)
    registry.put_many([("/w/a", "1"), ("/w/b", "2")])
    registry.put_many([("/w/a", None)])
    watcher.join(timeout=10)
    assert seen == [("/w/a", b"1"), ("/w/b", b"2"), ("/w/a", None)]


def test_increment_below__concurrent_launches_never_exceed_the_limit(etcd):
    _, registry = etcd
    key = f"/bulkhead/{REGION}/launches/1/{time.time()}"
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        granted = list(pool.map(lambda _: registry.increment_below(key, 12, attempts=50), range(40)))
    assert sum(granted) == 12
    assert registry.get(key) == b"12"


def test_permit__refused_while_booting_by_the_breaker_and_past_the_rate(etcd, tmp_path):
    _, registry = etcd
    breaker = dynos.Breaker(slow_s=10, window=3, cooldown_s=3600)
    manager = DynoManager(registry, Host(f"h-{time.time_ns()}", "10.0.0.5", "eu-west-1a", f"c{time.time_ns()}", REGION),
                          Supervisor(tmp_path, tmp_path), tmp_path, tmp_path / "state.json", breaker=breaker,
                          max_booting=1)  # fmt: skip
    manager.figures.launch_rate = 2
    assert manager._permit() is not None and manager._permit() is not None
    assert manager._permit() is None and manager.figures.launches_refused_rate == 1
    manager.booting[dynos.Process("sample", "web", 1)] = time.time()
    assert manager._permit() is None
    manager.booting.clear()
    breaker.booted(None, time.time())
    assert manager._permit() is None and manager.figures.launches_refused_breaker == 1


def test_keep_lease__a_round_that_blocks_past_the_ttl_keeps_the_hosts_registration_and_routes(etcd, tmp_path):
    _, registry = etcd
    host = Host(f"h-{time.time_ns()}", "10.0.0.5", "eu-west-1a", "1", REGION)
    manager = DynoManager(registry, host, Supervisor(tmp_path, tmp_path), tmp_path, tmp_path / "state.json",
                          lease_ttl=2)  # fmt: skip
    registration = managers_prefix(REGION) + host.name
    # Given: the lease taken and the host registered, as a round's start does; then no round for three TTLs
    manager._ensure_lease()
    keeper = threading.Thread(target=manager.keep_lease, daemon=True)
    keeper.start()
    try:
        time.sleep(6)
        # Then: the registration is still there, under the same lease
        assert registry.get(registration) is not None
    finally:
        manager.stop()
        keeper.join(timeout=5)
    # and without the keeper the lease lapses within its TTL, and takes the registration with it
    deadline = time.monotonic() + 6
    while registry.get(registration) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert registry.get(registration) is None


TICKER = (
    "import os, time\nwhile True:\n    print(os.environ['FENCING_TOKEN'], time.time(), flush=True)\n    time.sleep(0.2)"
)


def _holder(registry: Registry, log) -> subprocess.Popen:
    command = [sys.executable, "-m", "bulkhead.cli", "--log-json", "agent", "singleton", "--region", REGION,
               "--registry", registry.endpoints[0], "--name", "clock", "--ttl", "4", "--margin", "1.5", "--",
               sys.executable, "-c", TICKER]  # fmt: skip
    return subprocess.Popen(command, stdout=log, stderr=log)


def test_singleton__the_holder_stops_itself_before_its_lease_can_expire_and_the_next_has_a_larger_token(etcd, tmp_path):
    process, registry = etcd
    logs = [(tmp_path / f"holder-{n}.log").open("w") for n in (1, 2)]
    first = _holder(registry, logs[0])
    try:
        deadline = time.monotonic() + 20
        while "singleton acquired" not in (tmp_path / "holder-1.log").read_text():
            assert time.monotonic() < deadline, (tmp_path / "holder-1.log").read_text()
            time.sleep(0.2)
        second = _holder(registry, logs[1])
        time.sleep(2)
        assert "singleton acquired" not in (tmp_path / "holder-2.log").read_text()  # fenced out
        # The registry goes silent for the first holder (and everyone): it must stop its command by itself.
        os.kill(process.pid, signal.SIGSTOP)
        time.sleep(6)
        os.kill(process.pid, signal.SIGCONT)
        assert first.wait(timeout=10) == 3
        deadline = time.monotonic() + 30
        while "singleton acquired" not in (tmp_path / "holder-2.log").read_text():
            assert time.monotonic() < deadline, (tmp_path / "holder-2.log").read_text()
            time.sleep(0.2)
        time.sleep(1)
    finally:
        for holder in (first, locals().get("second")):
            if holder is not None and holder.poll() is None:
                holder.terminate()
                holder.wait(timeout=10)
    events = [[json.loads(line) for line in (tmp_path / f"holder-{n}.log").read_text().splitlines()
               if line.startswith("{")] for n in (1, 2)]  # fmt: skip
    ticks = [[line.split() for line in (tmp_path / f"holder-{n}.log").read_text().splitlines()
              if line[:1].isdigit()] for n in (1, 2)]  # fmt: skip
    stopped = next(e for e in events[0] if e["event"] == "singleton stopped")
    assert stopped["reason"] == "lease not renewed in time"
    old_token, new_token = int(ticks[0][-1][0]), int(ticks[1][0][0])
    assert new_token > old_token
    assert float(ticks[0][-1][1]) <= stopped["stopped_at"] < float(ticks[1][0][1])
