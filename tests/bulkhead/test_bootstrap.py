"""The first-boot script each host runs."""

from __future__ import annotations

import base64
import json
import subprocess

import pytest

from bulkhead import bootstrap

pytestmark = pytest.mark.unit


def test_user_data__runs_the_tier_playbook_with_the_host_facts():
    script = bootstrap.user_data("router", {"router_max_connections_per_backend": 64}, "https://git.example/b.git")
    assert script.startswith("#!/bin/bash\nset -euo pipefail\n")
    assert "ansible-pull -U https://git.example/b.git -C main" in script and script.rstrip().endswith(
        "roles/router.yml"
    )
    facts_line = next(line for line in script.splitlines() if line.startswith("echo "))
    assert json.loads(facts_line.split("'")[1]) == {"bulkhead_role": "router", "router_max_connections_per_backend": 64}


def test_user_data__is_valid_bash():
    script = bootstrap.user_data("postgres", {"postgres_server_name": "pg-x"}, "https://git.example/b.git")
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_user_data_base64__decodes_to_the_script():
    encoded = bootstrap.user_data_base64("dyno_host", {}, "r")
    assert base64.b64decode(encoded).decode() == bootstrap.user_data("dyno_host", {}, "r")


def test_user_data__unknown_role_is_refused():
    with pytest.raises(ValueError, match="unknown host role 'web'"):
        bootstrap.user_data("web", {}, "r")
