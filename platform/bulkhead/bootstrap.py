"""The first-boot script of every host: it learns who the host is, then lets Ansible make it so.

Hosts carry no baked configuration. The user data, on a bare Debian 12 image:
1. asks the instance metadata service (IMDSv2) for what only the host can know: its AZ, address,
   instance id and tags (one launch template serves every AZ of a tier);
2. installs Ansible in a venv, from the `ansible` package so that the collections the roles use come
   with it (Galaxy is not needed);
3. writes `/usr/local/sbin/bulkhead-converge`, the `ansible-pull` of the tier's playbook from the
   platform's repository at a fixed ref, and runs it. An operator re-runs the same script to converge
   the host again.
"""

from __future__ import annotations

import base64
import json
import shlex
from collections.abc import Mapping
from typing import Any

PLAYBOOKS = {"router": "router.yml", "dyno_host": "dyno_host.yml", "postgres": "postgres.yml"}
ANSIBLE_REQUIREMENTS = ("ansible>=11,<13", "boto3>=1.35,<2")
CONVERGE = "/usr/local/sbin/bulkhead-converge"
HOST_FACTS = "/etc/bulkhead/host.json"
# Reads the metadata service into the host's facts: stdin holds the program's facts as JSON.
_FACTS_PROGRAM = r"""
import json, sys, urllib.request
base = "http://169.254.169.254/latest"
token = urllib.request.urlopen(urllib.request.Request(
    base + "/api/token", method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"}), timeout=10).read()
def meta(path):
    request = urllib.request.Request(base + "/meta-data/" + path, headers={"X-aws-ec2-metadata-token": token})
    return urllib.request.urlopen(request, timeout=10).read().decode()
facts = json.load(sys.stdin)
facts.update(bulkhead_az=meta("placement/availability-zone"), bulkhead_address=meta("local-ipv4"),
             bulkhead_instance_id=meta("instance-id"),
             bulkhead_tags={key: meta("tags/instance/" + key) for key in meta("tags/instance").split()})
json.dump(facts, sys.stdout, sort_keys=True, indent=1)
"""


def user_data(role: str, facts: Mapping[str, Any], ansible_repo: str, ansible_ref: str) -> str:
    """A cloud-init shell script that bootstraps Ansible and converges the host into `role`."""
    if role not in PLAYBOOKS:
        raise ValueError(f"unknown host role {role!r}; expected one of {sorted(PLAYBOOKS)}")
    host_facts = json.dumps(
        {"bulkhead_role": role, "bulkhead_repo": ansible_repo, "bulkhead_ref": ansible_ref, **facts}, sort_keys=True
    )
    pull = (
        f"exec /opt/bulkhead/ansible/bin/ansible-pull -U {shlex.quote(ansible_repo)} -C {shlex.quote(ansible_ref)} "
        f"-d /var/lib/bulkhead/pull -i localhost, -c local -e bulkhead_pull=true -e @{HOST_FACTS} "
        f'"$@" roles/{PLAYBOOKS[role]}'
    )
    return "\n".join(
        [
            "#!/bin/bash",
            f"# Bulkhead first boot: a {role} host. Log: /var/log/cloud-init-output.log.",
            "set -euo pipefail",
            "install -d -m 0755 /etc/bulkhead",
            f"echo {shlex.quote(host_facts)} | python3 -c {shlex.quote(_FACTS_PROGRAM)} > {HOST_FACTS}.new",
            f"mv {HOST_FACTS}.new {HOST_FACTS}",
            "export DEBIAN_FRONTEND=noninteractive",
            "apt-get update -q",
            "apt-get install -y -q --no-install-recommends python3-venv git",
            # A branch or tag that the repository lacks fails here, before a minute of installing; a commit
            # id cannot be asked for without fetching, so ansible-pull finds it.
            f"if ! [[ {shlex.quote(ansible_ref)} =~ ^[0-9a-f]{{40}}$ ]] && "
            f"! git ls-remote --exit-code {shlex.quote(ansible_repo)} {shlex.quote(ansible_ref)} >/dev/null; then",
            "  echo " + shlex.quote(f"ref {ansible_ref} is not in {ansible_repo}: check bulkhead:ansibleRef") + " >&2",
            "  exit 3",
            "fi",
            "python3 -m venv /opt/bulkhead/ansible",
            # Not compiled: Ansible's thousands of modules are byte-compiled, if ever, when used.
            "/opt/bulkhead/ansible/bin/pip install -q --no-compile "
            + " ".join(shlex.quote(r) for r in ANSIBLE_REQUIREMENTS),
            f"cat > {CONVERGE} <<'CONVERGE'",
            "#!/bin/sh",
            "# Converge this host as its first boot did; arguments go to ansible-pull (e.g. -e name=value).",
            "export PYTHONUNBUFFERED=1  # each task's line reaches the boot log as it happens",
            pull,
            "CONVERGE",
            f"chmod 0755 {CONVERGE}",
            CONVERGE,
            "",
        ]
    )


def user_data_base64(role: str, facts: Mapping[str, Any], ansible_repo: str, ansible_ref: str) -> str:
    """The same script, base64-encoded as launch templates require."""
    return base64.b64encode(user_data(role, facts, ansible_repo, ansible_ref).encode()).decode()
