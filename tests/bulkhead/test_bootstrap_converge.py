"""`bulkhead-converge`, the script a first boot leaves on every host: it runs ansible-pull only when the host's
inputs (the commit its ref names, its facts, the SSM parameters its roles read) differ from those of its last
converge that succeeded, and records them only after a run that applied them.

The script and its inputs program are the ones `bootstrap.user_data` writes, with their absolute paths moved
into a directory of the test's own; ansible-pull is a stand-in that logs its arguments and exits as told. SSM
is a moto server; the repository is a real git repository.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from bulkhead import bootstrap, parameters
from bulkhead.localcloud import server
from bulkhead.localcloud.aws import LOCAL_CREDENTIALS

pytestmark = pytest.mark.moto
REGION = "eu-west-1"
SERVER = "pg-test"


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("moto")
    info = server.start(directory)
    yield info.endpoint
    server.stop(directory)


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


class Host:
    """One host's converge script and its inputs program, under `base` instead of `/`."""

    def __init__(self, base: Path, endpoint: str, role: str) -> None:
        self.base = base
        self.repo = base / "repo"
        self.repo.mkdir()
        _git(self.repo, "init", "-q", "-b", "main")
        self.commit("first")
        facts = {"bulkhead_region": REGION, "postgres_server_name": SERVER}
        script = bootstrap.user_data(role, facts, str(self.repo), "main")
        moved = {
            "/opt/bulkhead/ansible/bin/": f"{base}/bin/",
            bootstrap.CONVERGE_INPUTS: f"{base}/converge-inputs.py",
            bootstrap.HOST_FACTS: f"{base}/host.json",
            bootstrap.CONVERGE_RECORD: f"{base}/converge/applied",
            "/var/lib/bulkhead/converge": f"{base}/converge",
        }
        for old, new in moved.items():
            script = script.replace(old, new)
        inputs = re.search(r"<<'INPUTS'\n(.*?)\nINPUTS\n", script, re.S).group(1)
        converge = re.search(r"<<'CONVERGE'\n(.*?)\nCONVERGE\n", script, re.S).group(1)
        (base / "converge-inputs.py").write_text(inputs)
        (base / "host.json").write_text(json.dumps({"bulkhead_role": role, **facts}))
        (base / "bin").mkdir()
        (base / "bin/python").symlink_to(sys.executable)
        # The stand-in: logs its arguments, exits with the code in `pull-exit` (0 when absent).
        (base / "bin/ansible-pull").write_text(
            f'#!/bin/sh\necho "$*" >> {base}/pulls\nexit "$(cat {base}/pull-exit 2>/dev/null || echo 0)"\n'
        )
        (base / "bin/ansible-pull").chmod(0o755)
        self.script = base / "bulkhead-converge"
        self.script.write_text(converge)
        self.script.chmod(0o755)
        self.env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                    "AWS_SECRET_ACCESS_KEY": "testing"}  # fmt: skip

    def commit(self, message: str) -> str:
        (self.repo / "README").write_text(message)
        _git(self.repo, "add", "README")
        _git(self.repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", message)
        return _git(self.repo, "rev-parse", "HEAD")

    def converge(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.script), *args], env=self.env, capture_output=True, text=True, timeout=60,
                              check=False)  # fmt: skip

    def pulls(self) -> list[str]:
        path = self.base / "pulls"
        return path.read_text().splitlines() if path.exists() else []

    def record(self) -> str | None:
        path = self.base / "converge/applied"
        return path.read_text().strip() if path.exists() else None


@pytest.fixture
def ssm(endpoint):
    return boto3.client("ssm", endpoint_url=endpoint, region_name=REGION, **LOCAL_CREDENTIALS)


def test_converge__a_second_run_with_nothing_changed_pulls_nothing(tmp_path, endpoint, ssm):
    ssm.put_parameter(Name=parameters.app_password(REGION, SERVER), Value="one", Type="SecureString", Overwrite=True)
    host = Host(tmp_path, endpoint, "dyno_host")
    first = host.converge()
    assert first.returncode == 0, first.stderr
    commit = _git(host.repo, "rev-parse", "main")
    assert len(host.pulls()) == 1 and f"-C {commit} " in host.pulls()[0]
    assert f"converged commit {commit}; recorded its inputs " in first.stdout
    again = host.converge()
    assert again.returncode == 0, again.stderr
    assert f"nothing changed since the last converge (commit {commit}" in again.stdout
    assert len(host.pulls()) == 1


def test_converge__a_new_commit_a_changed_parameter_and_force_each_pull_again(tmp_path, endpoint, ssm):
    name = parameters.app_password(REGION, SERVER)
    ssm.put_parameter(Name=name, Value="one", Type="SecureString", Overwrite=True)
    host = Host(tmp_path, endpoint, "dyno_host")
    assert host.converge().returncode == 0
    recorded = host.record()
    # A new commit on the ref: pulled at that commit.
    newer = host.commit("second")
    assert host.converge().returncode == 0
    assert len(host.pulls()) == 2 and f"-C {newer} " in host.pulls()[1]
    assert host.record() not in (None, recorded)
    # A parameter the tier reads, rotated.
    recorded = host.record()
    ssm.put_parameter(Name=name, Value="two", Type="SecureString", Overwrite=True)
    assert host.converge().returncode == 0
    assert len(host.pulls()) == 3 and host.record() != recorded
    # Nothing changed, but --force.
    forced = host.converge("--force")
    assert forced.returncode == 0 and len(host.pulls()) == 4
    assert "--force" not in host.pulls()[3], "--force is the script's own, not ansible-pull's"


def test_converge__a_parameter_another_tier_reads_changes_nothing_here(tmp_path, endpoint, ssm):
    host = Host(tmp_path, endpoint, "router")
    assert host.converge().returncode == 0
    path = parameters.database_path(REGION, SERVER)
    ssm.put_parameter(Name=f"{path}/superuser-password", Value="new", Type="SecureString", Overwrite=True)
    assert "nothing changed" in host.converge().stdout
    assert len(host.pulls()) == 1


def test_converge__a_failed_pull_leaves_no_record_and_the_next_run_pulls_again(tmp_path, endpoint, ssm):
    host = Host(tmp_path, endpoint, "router")
    assert host.converge().returncode == 0 and host.record()
    (tmp_path / "pull-exit").write_text("2")
    failed = host.converge("--force")
    assert failed.returncode == 2
    assert host.record() is None
    (tmp_path / "pull-exit").write_text("0")
    assert host.converge().returncode == 0
    assert len(host.pulls()) == 3 and host.record()


def test_converge__a_run_with_extra_arguments_is_not_recorded(tmp_path, endpoint, ssm):
    host = Host(tmp_path, endpoint, "router")
    assert host.converge().returncode == 0
    extra = host.converge("-e", "router_max_connections_per_backend=8")
    assert extra.returncode == 0 and host.pulls()[-1].split(" -e ")[-1].startswith("router_max_connections")
    assert host.record() is None and "not recorded" in extra.stderr
    # So the next plain run applies the host's own inputs again.
    assert host.converge().returncode == 0 and len(host.pulls()) == 3


def test_converge__a_ref_that_is_a_commit_needs_no_lookup(tmp_path, endpoint):
    host = Host(tmp_path, endpoint, "router")
    commit = _git(host.repo, "rev-parse", "main")
    result = subprocess.run(
        [sys.executable, str(tmp_path / "converge-inputs.py"), str(tmp_path / "host.json"), "/no/such/repo", commit],
        env=host.env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    printed_commit, digest = result.stdout.split()
    assert printed_commit == commit and re.fullmatch("[0-9a-f]{64}", digest)
