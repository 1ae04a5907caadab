"""Bad input and faults of the local cloud: one clear line, non-zero exit, state a re-run recovers from."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest
import yaml

from bulkhead.localcloud import cloud, server
from bulkhead.localcloud.aws import LocalCloudError
from bulkhead.topology import ConfigError

pytestmark = pytest.mark.moto
STACK = "eu-west-1"


def test_up__taken_port_fails_clearly_and_starts_nothing(store):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(LocalCloudError, match=rf"^port {port} on 127.0.0.1 is in use; pick another with --port"):
            cloud.up([STACK], store, port=port)
    assert server.recorded(store.directory) is None
    assert store.stacks() == []


def test_up__server_dying_mid_deploy_fails_clearly_and_a_rerun_rebuilds(store):
    seen = []

    def kill_after_twenty(stack, urn, action):
        seen.append(urn)
        if len(seen) == 20:
            os.killpg(server.recorded(store.directory).pid, signal.SIGKILL)

    with pytest.raises(LocalCloudError, match=r"stopped answering .*run `bulkhead local up` again"):
        cloud.up([STACK], store, on_resource=kill_after_twenty)
    assert len(store.load(STACK).resources) >= 20, "what was created before the fault is remembered"
    info, (report,) = cloud.up([STACK], store)
    assert report.created > 50 and report.unchanged == 0
    assert cloud.status(store)["stacks"][STACK]["resources"] == report.created
    assert server.running(store.directory) == info


def test_up__corrupt_state_fails_clearly_and_a_rerun_rebuilds(store):
    cloud.up([STACK], store)
    state_file = store.directory / f"{STACK}.state.json"
    state_file.write_text('{"version": 1, "resources": [{"urn": ')
    with pytest.raises(LocalCloudError, match=r"state file .* is corrupt .*moved to .*local cloud was reset"):
        cloud.up([STACK], store)
    assert (store.directory / f"{STACK}.state.json.corrupt").exists()
    _, (report,) = cloud.up([STACK], store)
    assert report.created > 50


def test_up__stack_failing_validation_changes_nothing(project, store):
    path = project / "Pulumi.us-west-2.yaml"
    document = yaml.safe_load(path.read_text())
    document["config"]["bulkhead:partnerRegion"] = "us-west-2"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ConfigError, match="bulkhead:partnerRegion is us-west-2, the stack's own region"):
        cloud.up(["eu-west-1", "us-west-2"], store, project_dir=project)
    assert server.recorded(store.directory) is None, "validation comes before the server starts"
    assert store.stacks() == []


def test_up__global_before_its_regions_names_the_missing_stack(store):
    with pytest.raises(
        LocalCloudError, match=r"reads (us-east-1|us-west-2), which is not deployed locally; run `bulkhead local up"
    ):
        cloud.up(["global"], store)
    assert server.recorded(store.directory) is None


def _bulkhead(*args: str, directory) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bulkhead.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "BULKHEAD_LOCAL_DIR": str(directory)},
        timeout=120,
        check=False,
    )


def test_cli__down_when_nothing_runs_is_one_line_and_exit_1(tmp_path):
    result = _bulkhead("local", "down", directory=tmp_path / "nothing")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "bulkhead: error: the local cloud is not running; nothing to stop (start it with `bulkhead local up`)"
    ]


def test_cli__env_and_status_when_nothing_runs_exit_non_zero(tmp_path):
    assert _bulkhead("local", "env", directory=tmp_path).returncode == 1
    status = _bulkhead("local", "status", "--json", directory=tmp_path)
    assert status.returncode == 1 and '"running": false' in status.stdout


def test_cli__up_status_env_down_round_trip(tmp_path):
    directory = tmp_path / "local"
    up = _bulkhead("--log-json", "local", "up", "--stacks", STACK, directory=directory)
    try:
        assert up.returncode == 0, up.stderr
        assert STACK in up.stdout
        logged = [line for line in up.stderr.splitlines() if line.startswith("{")]
        assert logged and all('"event"' in line for line in logged)
        status = _bulkhead("local", "status", "--json", directory=directory)
        assert status.returncode == 0 and '"running": true' in status.stdout
        env = _bulkhead("local", "env", directory=directory).stdout
        assert env.startswith("export AWS_ENDPOINT_URL=http://127.0.0.1:")
    finally:
        down = _bulkhead("local", "down", directory=directory)
    assert down.returncode == 0
    assert not directory.exists()
