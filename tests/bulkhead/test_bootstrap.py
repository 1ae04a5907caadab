"""The first-boot script each host runs."""

from __future__ import annotations

import base64
import json
import subprocess

import pytest

from bulkhead import bootstrap

pytestmark = pytest.mark.unit


def test_user_data__installs_ansible_with_its_collections_then_pulls_the_tier_playbook_at_the_ref():
    script = bootstrap.user_data(
        "router", {"router_max_connections_per_backend": 64}, "https://git.example/b.git", "v1.2"
    )
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash" and "set -euo pipefail" in lines
    # On a bare image (no image record): Ansible into its venv
    assert "  /opt/bulkhead/ansible/bin/pip install -q --no-compile 'ansible>=11,<13' 'boto3>=1.35,<2'" in lines
    pull = next(line for line in lines if line.startswith("/opt/bulkhead/ansible/bin/ansible-pull "))
    # The commit the ref names when the converge starts, which is the one its record names.
    assert '-U https://git.example/b.git -C "$commit"' in pull and pull.endswith('$skip "$@" roles/router.yml')
    # A baked image's first converge skips the install part; a bare one's runs it all
    assert lines[-1] == "/usr/local/sbin/bulkhead-converge $first"
    assert "  first=--skip-install" in lines and "  first=" in lines
    facts_line = next(line for line in lines if line.startswith("echo "))
    assert json.loads(facts_line.split("'")[1]) == {
        "bulkhead_role": "router",
        "bulkhead_repo": "https://git.example/b.git",
        "bulkhead_ref": "v1.2",
        "router_max_connections_per_backend": 64,
    }


def test_user_data__reads_the_hosts_own_facts_from_the_metadata_service():
    script = bootstrap.user_data("dyno_host", {}, "r", "main")
    for path in ("placement/availability-zone", "local-ipv4", "instance-id", "tags/instance"):
        assert f'"{path}' in script


def test_user_data__is_valid_bash():
    script = bootstrap.user_data("postgres", {"postgres_server_name": "pg-x"}, "https://git.example/b.git", "main")
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_user_data_base64__decodes_to_the_script():
    encoded = bootstrap.user_data_base64("dyno_host", {}, "r", "main")
    assert base64.b64decode(encoded).decode() == bootstrap.user_data("dyno_host", {}, "r", "main")


def test_user_data__unknown_role_is_refused():
    with pytest.raises(ValueError, match="unknown host role 'web'"):
        bootstrap.user_data("web", {}, "r", "main")
