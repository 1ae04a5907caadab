"""A host's power going off kills every one of its processes, even those being born as it goes."""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest

from bulkhead.hosts.sandbox import HostSpec, Sandboxes

pytestmark = pytest.mark.hosts

# A supervisor that restarts its children as fast as they die, each child living long: what supervisord does
# to a host's programs while they are being killed one by one.
FORKER = "while true; do sleep 300 & sleep 0.005; done"


@pytest.fixture
def netns():
    spec = HostSpec(f"power-{uuid.uuid4().hex[:8]}", "router", "eu-west-1", "eu-west-1a", "10.0.0.9", 16)
    subprocess.run(["ip", "netns", "add", spec.netns], check=True)
    yield spec
    pids = subprocess.run(["ip", "netns", "pids", spec.netns], capture_output=True, text=True).stdout.split()
    subprocess.run(["kill", "-9", *pids], check=False)
    subprocess.run(["ip", "netns", "del", spec.netns], check=False)


def _pids(spec: HostSpec) -> list[str]:
    return subprocess.run(["ip", "netns", "pids", spec.netns], capture_output=True, text=True).stdout.split()


def test_kill_inside__a_process_forked_while_the_host_dies_dies_with_it(netns, tmp_path):
    forkers = [subprocess.Popen(["ip", "netns", "exec", netns.netns, "sh", "-c", FORKER]) for _ in range(3)]
    deadline = time.monotonic() + 10
    while len(_pids(netns)) < 30:
        assert time.monotonic() < deadline, "the forkers did not get going"
        time.sleep(0.1)
    Sandboxes._kill_inside(netns, tmp_path / "no-root")
    for forker in forkers:
        forker.wait(timeout=10)
    time.sleep(0.5)  # a survivor would go on forking
    assert _pids(netns) == []
