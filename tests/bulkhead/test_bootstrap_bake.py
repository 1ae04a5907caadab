"""A baked image's install part: what it is made from (`bulkhead.install_inputs`), the bake's user data, and the
refusal of a stale image at first boot.

The stale check is the shell the user data runs, with its paths moved into the test's own directory, against a
real git repository holding a copy of this checkout's roles and package.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bulkhead import bootstrap, install_inputs, project

pytestmark = pytest.mark.unit
CHECKOUT = project.find()


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def repo(tmp_path) -> Path:
    """A repository holding what the install part is made from, and a task file that is not part of it."""
    repo = tmp_path / "repo"
    shutil.copytree(CHECKOUT / "roles", repo / "roles", ignore=shutil.ignore_patterns("*.retry"))
    shutil.copytree(CHECKOUT / "platform" / "bulkhead", repo / "platform" / "bulkhead",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    shutil.copy(CHECKOUT / "pyproject.toml", repo / "pyproject.toml")
    _git(repo, "init", "-q", "-b", "main")
    _commit(repo, "first")
    return repo


def _commit(repo: Path, message: str) -> str:
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", message)
    return _git(repo, "rev-parse", "HEAD")


def _append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


def test_install_inputs__a_tier_is_made_from_its_roles_install_files_their_defaults_and_the_package(repo):
    files = [str(p) for p in install_inputs.input_files(repo, "router") if not str(p).startswith("platform/")]
    assert install_inputs.tier_roles(repo, "router") == ["common", "router", "metrics"]
    assert files == [
        "pyproject.toml",
        "roles/common/defaults/main.yml",
        "roles/common/tasks/bulkhead.yml",
        "roles/common/tasks/packages.yml",
        "roles/common/tasks/ssh.yml",
        "roles/common/tasks/time.yml",
        "roles/metrics/defaults/main.yml",
        "roles/router/defaults/main.yml",
        "roles/router/tasks/install.yml",
    ]
    assert "platform/bulkhead/bootstrap.py" in {str(p) for p in install_inputs.input_files(repo, "router")}


def test_install_inputs__the_digest_follows_the_install_part_and_nothing_else(repo):
    first = {tier: install_inputs.digest(repo, tier) for tier in install_inputs.PLAYBOOKS}
    assert len(set(first.values())) == 3, "each tier has its own digest"
    # When: a task file with no install task changes; Then: no digest moves
    _append(repo / "roles/router/tasks/configure.yml", "# a comment\n")
    assert {tier: install_inputs.digest(repo, tier) for tier in first} == first
    # When: the router's install tasks change; Then: the router's digest moves, the others' stay
    _append(repo / "roles/router/tasks/install.yml", "# a comment\n")
    second = {tier: install_inputs.digest(repo, tier) for tier in first}
    assert second["router"] != first["router"]
    assert (second["dyno_host"], second["postgres"]) == (first["dyno_host"], first["postgres"])
    # When: the package the hosts install changes; Then: every digest moves
    _append(repo / "platform/bulkhead/topology.py", "# a comment\n")
    third = {tier: install_inputs.digest(repo, tier) for tier in first}
    assert all(third[tier] != second[tier] for tier in first)
    assert install_inputs.image_name("dyno_host", "0123456789ab") == "bulkhead-dyno-host-0123456789ab"


def test_install_inputs__runs_as_a_script_of_the_checkout_with_the_standard_library_alone(repo):
    found = subprocess.run(["/usr/bin/python3", "-I", "-S", str(repo / "platform/bulkhead/install_inputs.py"),
                            "postgres", str(repo)], capture_output=True, text=True, check=True)  # fmt: skip
    assert found.stdout.strip() == install_inputs.digest(repo, "postgres")


def _stale_check(tmp_path: Path, repo: Path, ref: str) -> subprocess.CompletedProcess:
    """The first boot's check of a baked image, run against `repo` with the image's checkout in tmp_path."""
    script = bootstrap.user_data("router", {"bulkhead_region": "eu-west-1"}, str(repo), ref)
    start = rf"^if \[ -e {bootstrap.IMAGE_RECORD} \]; then\n"
    baked = re.search(start + r"(.*?)\n  first=--skip-install$", script, re.S | re.M)
    check = baked.group(1).replace(bootstrap.PULL_DIR, str(tmp_path / "pull"))
    check = check.replace(bootstrap.IMAGE_RECORD, str(tmp_path / "image.json"))
    return subprocess.run(["bash", "-euo", "pipefail", "-c", check], capture_output=True, text=True, check=False)


def test_first_boot__a_baked_image_of_the_commits_install_part_boots_and_a_stale_one_is_refused(tmp_path, repo):
    # Given: an image baked at the first commit: its checkout and its record
    _git(tmp_path, "clone", "-q", str(repo), str(tmp_path / "pull"))
    baked = install_inputs.digest(repo, "router")
    (tmp_path / "image.json").write_text(json.dumps({"tier": "router", "install_digest": baked}))
    # When: a host boots it at a commit that changed no install input; Then: it goes on
    _append(repo / "roles/router/tasks/configure.yml", "# a comment\n")
    _commit(repo, "configure only")
    ok = _stale_check(tmp_path, repo, "main")
    assert ok.returncode == 0, ok.stderr
    # When: the router's install tasks change; Then: the image is refused in one line that names the bake
    _append(repo / "roles/router/tasks/install.yml", "# a comment\n")
    changed = _commit(repo, "install changed")
    refused = _stale_check(tmp_path, repo, "main")
    assert refused.returncode == 4
    assert refused.stderr.strip().splitlines() == [
        f"this image was baked from install inputs {baked}, and commit {changed} needs "
        f"{install_inputs.digest(repo, 'router')}: run `bulkhead image bake --region eu-west-1 --tier router`, "
        "then launch the host again"
    ]
    # And: a ref the repository lacks is refused before any of that
    missing = _stale_check(tmp_path, repo, "no-such-branch")
    assert missing.returncode == 3 and "ref no-such-branch is not in" in missing.stderr


def test_bake_user_data__installs_the_install_part_alone_and_leaves_no_trace_of_the_instance():
    script = bootstrap.bake_user_data("postgres", "eu-west-1", "git://relay/bulkhead.git", "main")
    lines = script.splitlines()
    pull = next(line for line in lines if line.startswith("/opt/bulkhead/ansible/bin/ansible-pull "))
    assert pull.endswith("--tags install roles/postgres.yml")
    assert "apt-get install -y -q --no-install-recommends python3-venv git" in lines
    for trace in ("rm -f /etc/ssh/ssh_host_*", f"rm -f {bootstrap.HOST_FACTS} {bootstrap.CONVERGE_RECORD}",
                  ": > /etc/machine-id"):  # fmt: skip
        assert trace in lines
    # The baker hears the end from a tag: done with the digest, or failed from the exit trap
    assert lines[-1] == 'signal "done $digest"'
    assert "trap 'code=$?; [ $code -eq 0 ] || signal failed; exit $code' EXIT" in lines
    assert bootstrap.CONVERGE not in script, "a bake converges nothing of an instance's own"
    with pytest.raises(ValueError, match="unknown host tier 'web'"):
        bootstrap.bake_user_data("web", "eu-west-1", "r", "main")
