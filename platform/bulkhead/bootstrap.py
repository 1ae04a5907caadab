"""The first-boot script of every host: it records who the host is, then lets Ansible make it so.

Hosts carry no baked configuration: the launch template's user data installs ansible-core in a venv
and runs `ansible-pull` of the tier's playbook, with the host's facts as extra vars. The AZ comes from
the instance metadata service (IMDSv2), because one launch template serves every AZ of a tier.
"""

from __future__ import annotations

import base64
import json
import shlex
from collections.abc import Mapping
from typing import Any

PLAYBOOKS = {"router": "router.yml", "dyno_host": "dyno_host.yml", "postgres": "postgres.yml"}


def user_data(role: str, facts: Mapping[str, Any], ansible_repo: str, ansible_ref: str = "main") -> str:
    """A cloud-init shell script that bootstraps Ansible and converges the host into `role`."""
    if role not in PLAYBOOKS:
        raise ValueError(f"unknown host role {role!r}; expected one of {sorted(PLAYBOOKS)}")
    host_facts = json.dumps({"bulkhead_role": role, **facts}, sort_keys=True)
    return "\n".join(
        [
            "#!/bin/bash",
            "set -euo pipefail",
            "install -d -m 0755 /etc/bulkhead",
            'token=$(curl -sf -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 300" http://169.254.169.254/latest/api/token)',
            'az=$(curl -sf -H "X-aws-ec2-metadata-token: $token" '
            "http://169.254.169.254/latest/meta-data/placement/availability-zone)",
            f"echo {shlex.quote(host_facts)} | python3 -c "
            "'import json,sys; f=json.load(sys.stdin); f[\"bulkhead_az\"]=sys.argv[1]; print(json.dumps(f))' "
            '"$az" > /etc/bulkhead/host.json',
            "apt-get update -q && apt-get install -y -q python3-venv git",
            "python3 -m venv /opt/bulkhead/ansible && /opt/bulkhead/ansible/bin/pip install -q 'ansible-core>=2.17,<3'",
            f"/opt/bulkhead/ansible/bin/ansible-pull -U {shlex.quote(ansible_repo)} -C {shlex.quote(ansible_ref)} "
            f"-i localhost, -c local -e bulkhead_pull=true -e @/etc/bulkhead/host.json roles/{PLAYBOOKS[role]}",
            "",
        ]
    )


def user_data_base64(role: str, facts: Mapping[str, Any], ansible_repo: str) -> str:
    """The same script, base64-encoded as launch templates require."""
    return base64.b64encode(user_data(role, facts, ansible_repo).encode()).decode()
