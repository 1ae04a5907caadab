"""Bad input and faults of the local cloud: one clear line, non-zero exit, state a re-run recovers from."""

from __future__ import annotations

import json
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


def test_up__taken_port_fails_clearly_and_starts_nothing(project_dir, store):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(LocalCloudError, match=rf"^port {port} on 127.0.0.1 is in use; pick another with --port"):
            cloud.up([STACK], store, port=port, project_dir=project_dir)
    assert server.recorded(store.directory) is None
    assert store.stacks() == []


def test_up__server_dying_mid_deploy_fails_clearly_and_a_rerun_rebuilds(project_dir, store):
    seen = []

    def kill_after_twenty(stack, urn, action):
        seen.append(urn)
        if len(seen) == 20:
            os.killpg(server.recorded(store.directory).pid, signal.SIGKILL)

    with pytest.raises(LocalCloudError, match=r"stopped answering .*run `bulkhead local up` again"):
        cloud.up([STACK], store, on_resource=kill_after_twenty, project_dir=project_dir)
    assert len(store.load(STACK).resources) >= 20, "what was created before the fault is remembered"
    info, (report,) = cloud.up([STACK], store, project_dir=project_dir)
    assert report.created > 50 and report.unchanged == 0
    assert cloud.status(store)["stacks"][STACK]["resources"] == report.created
    assert server.running(store.directory) == info


def test_up__corrupt_state_fails_clearly_and_a_rerun_rebuilds(project_dir, store):
    cloud.up([STACK], store, project_dir=project_dir)
    state_file = store.directory / f"{STACK}.state.json"
    state_file.write_text('{"version": 1, "resources": [{"urn": ')
    with pytest.raises(LocalCloudError, match=r"state file .* is corrupt .*moved to .*local cloud was reset"):
        cloud.up([STACK], store, project_dir=project_dir)
    assert (store.directory / f"{STACK}.state.json.corrupt").exists()
    _, (report,) = cloud.up([STACK], store, project_dir=project_dir)
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


def test_up__global_before_its_regions_names_the_missing_stack(project_dir, store):
    with pytest.raises(
        LocalCloudError, match=r"reads (us-east-1|us-west-2), which is not deployed locally; run `bulkhead local up"
    ):
        cloud.up(["global"], store, project_dir=project_dir)
    assert server.recorded(store.directory) is None


def _bulkhead(*args: str, directory, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bulkhead.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
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


def test_cli__a_bad_stack_config_is_one_line_exit_2_and_starts_nothing(project, tmp_path):
    path = project / "Pulumi.us-west-2.yaml"
    document = yaml.safe_load(path.read_text())
    document["config"]["bulkhead:cells"] = 0
    path.write_text(yaml.safe_dump(document))
    directory = tmp_path / "local"
    result = _bulkhead("--project", str(project), "local", "up", directory=directory, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "bulkhead: error: stack us-west-2: bulkhead:cells is 0, below the minimum of 1; set it to 1 or more"
    ]
    assert server.recorded(directory) is None


def test_cli__outside_a_checkout_without_project_is_one_line_and_exit_2(tmp_path):
    result = _bulkhead("local", "status", directory=tmp_path / "local", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"bulkhead: error: no Pulumi.yaml in {tmp_path.resolve()} or above it; run bulkhead inside the project "
        "or pass --project DIR"
    ]
    wrong = _bulkhead("--project", str(tmp_path), "plan", directory=tmp_path / "local", cwd=tmp_path)
    assert wrong.returncode == 2
    assert wrong.stderr.strip().splitlines() == [
        f"bulkhead: error: --project {tmp_path} has no Pulumi.yaml; point it at a Bulkhead checkout"
    ]


def test_cli__the_project_is_found_from_a_directory_inside_it(project_dir, tmp_path):
    result = _bulkhead("plan", "--json", "--stacks", STACK, directory=tmp_path / "local", cwd=project_dir / "infra")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[STACK]["aws:ec2/vpc:Vpc"] == 1


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("bulkhead:baseBackupIntervalSeconds=5",
         "stack us-west-2: bulkhead:baseBackupIntervalSeconds is 5, below the minimum of 10; set it to 10 or more"),
        ("bulkhead:noSuchKey=1", "unknown config key bulkhead:noSuchKey; a region stack takes bulkhead:partnerRegion,"),
    ],
)  # fmt: skip
def test_cli__a_bad_config_override_is_one_line_exit_2_and_starts_nothing(project, tmp_path, setting, message):
    directory = tmp_path / "local"
    result = _bulkhead("--project", str(project), "local", "up", "--stacks", "us-west-2", "--config", setting,
                       directory=directory, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"bulkhead: error: {message}")
    assert server.recorded(directory) is None
