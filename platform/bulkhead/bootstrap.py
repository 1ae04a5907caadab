"""The first-boot script of every host: it learns who the host is, then lets Ansible make it so.

Hosts carry no baked configuration. The user data, on a bare Debian 12 image:
1. asks the instance metadata service (IMDSv2) for what only the host can know: its AZ, address,
   instance id and tags (one launch template serves every AZ of a tier);
2. installs Ansible in a venv, from the `ansible` package so that the collections the roles use come
   with it (Galaxy is not needed);
3. writes `/usr/local/sbin/bulkhead-converge`, the `ansible-pull` of the tier's playbook from the
   platform's repository at a fixed ref, and runs it. An operator re-runs the same script to converge
   the host again.

A converge that succeeded records a digest of what it applied (`CONVERGE_RECORD`): the commit the ref
named, the host's facts (the program's and the metadata's) and the SSM parameters its roles read. A
later `bulkhead-converge` whose inputs have the same digest does nothing and says so; `--force` runs
every task. ansible-pull's own `--only-if-changed` looks at the repository alone, and would miss a
rotated password.
"""

from __future__ import annotations

import base64
import json
import posixpath
import shlex
from collections.abc import Mapping
from typing import Any

from bulkhead import parameters

PLAYBOOKS = {"router": "router.yml", "dyno_host": "dyno_host.yml", "postgres": "postgres.yml"}
ANSIBLE_REQUIREMENTS = ("ansible>=11,<13", "boto3>=1.35,<2")
CONVERGE = "/usr/local/sbin/bulkhead-converge"
HOST_FACTS = "/etc/bulkhead/host.json"
CONVERGE_RECORD = "/var/lib/bulkhead/converge/applied"
CONVERGE_INPUTS = "/usr/local/lib/bulkhead/converge-inputs.py"
# The SSM parameters (under the database's path) each tier's roles read as they converge: a change to one of
# them is a change to the host's inputs.
CONVERGE_PARAMETERS = {
    "router": (),
    "dyno_host": ("app-password", "app-login"),
    "postgres": ("primary", "replication-password", "superuser-password", "app-password"),
}
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
# Prints "COMMIT DIGEST": the commit the ref names now, and the digest of everything a converge would apply.
# argv: the host's facts file, repository, ref, then the SSM parameters the tier reads. A parameter that is
# missing counts as missing, one that cannot be read by its error code: the digest stays while nothing changes.
_INPUTS_PROGRAM = r"""
import hashlib, json, re, subprocess, sys
import boto3, botocore.exceptions
facts_file, repo, ref, names = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
commit = ref if re.fullmatch("[0-9a-f]{40}", ref) else subprocess.run(
    ["git", "ls-remote", "--exit-code", repo, ref], capture_output=True, text=True, check=True).stdout.split()[0]
with open(facts_file) as stream:
    facts = json.load(stream)
ssm = boto3.client("ssm", region_name=facts["bulkhead_region"]) if names else None
seen = {}
for name in names:
    try:
        value = ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
        seen[name] = hashlib.sha256(value.encode()).hexdigest()
    except botocore.exceptions.ClientError as error:
        seen[name] = "error:" + error.response["Error"]["Code"]
document = json.dumps({"commit": commit, "facts": facts, "parameters": seen}, sort_keys=True)
print(commit, hashlib.sha256(document.encode()).hexdigest())
"""


def user_data(role: str, facts: Mapping[str, Any], ansible_repo: str, ansible_ref: str) -> str:
    """A cloud-init shell script that bootstraps Ansible and converges the host into `role`."""
    if role not in PLAYBOOKS:
        raise ValueError(f"unknown host role {role!r}; expected one of {sorted(PLAYBOOKS)}")
    host_facts = json.dumps(
        {"bulkhead_role": role, "bulkhead_repo": ansible_repo, "bulkhead_ref": ansible_ref, **facts}, sort_keys=True
    )
    names = [f"{parameters.database_path(facts.get('bulkhead_region', ''), facts.get('postgres_server_name', ''))}"
             f"/{name}" for name in CONVERGE_PARAMETERS[role]]  # fmt: skip
    repo, ref = shlex.quote(ansible_repo), shlex.quote(ansible_ref)
    converge = [
        "#!/bin/sh",
        "# Converge this host as its first boot did, unless its inputs are those of its last converge that",
        "# succeeded: the commit its ref names, its facts, the SSM parameters its roles read. --force runs every",
        "# task anyway; other arguments go to ansible-pull (e.g. -e name=value), and such a run is not recorded.",
        "set -eu",
        "export PYTHONUNBUFFERED=1  # each task's line reaches the boot log as it happens",
        'if [ "${1:-}" = --force ]; then force=1; shift; else force=; fi',
        # The inputs once more after the run: a first boot's primary publishes the parameters it reads.
        f"inputs() {{ /opt/bulkhead/ansible/bin/python {CONVERGE_INPUTS} {HOST_FACTS} {repo} {ref} "
        + " ".join(shlex.quote(n) for n in names)
        + "; }",
        "before=$(inputs) || before=",
        f'commit=${{before%% *}}; [ -n "$commit" ] || commit={ref}',
        f'if [ -z "$force" ] && [ $# -eq 0 ] && [ -n "$before" ] && [ "$(cat {CONVERGE_RECORD} 2>/dev/null)" = '
        '"${before#* }" ]; then',
        '  echo "bulkhead-converge: nothing changed since the last converge (commit $commit, inputs ${before#* });'
        ' --force runs every task"',
        "  exit 0",
        "fi",
        f"rm -f {CONVERGE_RECORD}",
        f'/opt/bulkhead/ansible/bin/ansible-pull -U {repo} -C "$commit" -d /var/lib/bulkhead/pull -i localhost, '
        f'-c local -e bulkhead_pull=true -e @{HOST_FACTS} "$@" roles/{PLAYBOOKS[role]}',
        "after=$(inputs) || after=",
        # Recorded only what this run applied: no extra arguments, and the ref still at the commit it pulled.
        'if [ $# -eq 0 ] && [ -n "$after" ] && [ "${after%% *}" = "$commit" ]; then',
        f"  install -d -m 0700 {posixpath.dirname(CONVERGE_RECORD)}",
        f'  echo "${{after#* }}" > {CONVERGE_RECORD}.new && mv {CONVERGE_RECORD}.new {CONVERGE_RECORD}',
        '  echo "bulkhead-converge: converged commit $commit; recorded its inputs ${after#* }"',
        "else",
        '  echo "bulkhead-converge: converged; its inputs are not recorded (arguments given, or unreadable)" >&2',
        "fi",
    ]
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
            f"if ! [[ {ref} =~ ^[0-9a-f]{{40}}$ ]] && ! git ls-remote --exit-code {repo} {ref} >/dev/null; then",
            "  echo " + shlex.quote(f"ref {ansible_ref} is not in {ansible_repo}: check bulkhead:ansibleRef") + " >&2",
            "  exit 3",
            "fi",
            "python3 -m venv /opt/bulkhead/ansible",
            # Not compiled: Ansible's thousands of modules are byte-compiled, if ever, when used.
            "/opt/bulkhead/ansible/bin/pip install -q --no-compile "
            + " ".join(shlex.quote(r) for r in ANSIBLE_REQUIREMENTS),
            f"install -d -m 0755 {posixpath.dirname(CONVERGE_INPUTS)}",
            f"cat > {CONVERGE_INPUTS} <<'INPUTS'",
            _INPUTS_PROGRAM.strip(),
            "INPUTS",
            f"cat > {CONVERGE} <<'CONVERGE'",
            *converge,
            "CONVERGE",
            f"chmod 0755 {CONVERGE}",
            CONVERGE,
            "",
        ]
    )


def user_data_base64(role: str, facts: Mapping[str, Any], ansible_repo: str, ansible_ref: str) -> str:
    """The same script, base64-encoded as launch templates require."""
    return base64.b64encode(user_data(role, facts, ansible_repo, ansible_ref).encode()).decode()
