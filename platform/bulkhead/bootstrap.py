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

The same user data boots a baked image (`bulkhead image bake`), which says so in `IMAGE_RECORD`: it installs
nothing, refuses the image if it was baked from other install inputs than the commit's (one line naming the
bake to run), and runs the playbook without its `install` tasks. `bake_user_data` is a bake's own: the install
part alone, then the instance's traces removed.
"""

from __future__ import annotations

import base64
import json
import posixpath
import shlex
from collections.abc import Mapping
from typing import Any

from bulkhead import parameters
from bulkhead.install_inputs import PLAYBOOKS

ANSIBLE_REQUIREMENTS = ("ansible>=11,<13", "boto3>=1.35,<2")
CONVERGE = "/usr/local/sbin/bulkhead-converge"
HOST_FACTS = "/etc/bulkhead/host.json"
CONVERGE_RECORD = "/var/lib/bulkhead/converge/applied"
CONVERGE_INPUTS = "/usr/local/lib/bulkhead/converge-inputs.py"
# Where ansible-pull keeps its checkout (a baked image keeps the bake's).
PULL_DIR = "/var/lib/bulkhead/pull"
# A baked image says what it holds here: its tier, install digest (`bulkhead.install_inputs`) and commit.
IMAGE_RECORD = "/etc/bulkhead/image.json"
# The bake's end, told to the baker as a tag on the instance (RunInstances' caller can read it, as on AWS).
BAKE_TAG = "bulkhead:bake"
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
# Tags this instance `bulkhead:bake` = argv[2]; argv[1] is the region.
_TAG_PROGRAM = r"""
import sys, urllib.request
import boto3
base = "http://169.254.169.254/latest"
token = urllib.request.urlopen(urllib.request.Request(
    base + "/api/token", method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"}), timeout=10).read()
instance = urllib.request.urlopen(urllib.request.Request(
    base + "/meta-data/instance-id", headers={"X-aws-ec2-metadata-token": token}), timeout=10).read().decode()
boto3.client("ec2", region_name=sys.argv[1]).create_tags(
    Resources=[instance], Tags=[{"Key": "bulkhead:bake", "Value": sys.argv[2]}])
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
        "# --skip-install (a first boot from a baked image, whose install part the image holds) skips the",
        "# playbook's install tasks.",
        "set -eu",
        "export PYTHONUNBUFFERED=1  # each task's line reaches the boot log as it happens",
        "# Each task's start and length in the log, and the slowest tasks at the end: where a boot's time went.",
        "export ANSIBLE_CALLBACKS_ENABLED=ansible.posix.profile_tasks",
        'if [ "${1:-}" = --force ]; then force=1; shift; else force=; fi',
        'if [ "${1:-}" = --skip-install ]; then skip="--skip-tags install"; shift; else skip=; fi',
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
        f'/opt/bulkhead/ansible/bin/ansible-pull -U {repo} -C "$commit" -d {PULL_DIR} -i localhost, '
        f'-c local -e bulkhead_pull=true -e @{HOST_FACTS} $skip "$@" roles/{PLAYBOOKS[role]}',
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
    baked_boot = [
        f"if [ -e {IMAGE_RECORD} ]; then",
        f'  echo "baked image: $(cat {IMAGE_RECORD}); its install part is in place, so this boot installs nothing"',
        *("  " + line for line in _ref_check(repo, ref, ansible_ref, ansible_repo)),
        *("  " + line for line in _stale_check(role, repo, ref, facts.get("bulkhead_region", ""))),
        "  first=--skip-install",
        "else",
        *("  " + line for line in _prepare(repo, ref, ansible_ref, ansible_repo)),
        "  first=",
        "fi",
    ]
    return "\n".join(
        [
            "#!/bin/bash",
            f"# Bulkhead first boot: a {role} host. Log: /var/log/cloud-init-output.log.",
            "set -euo pipefail",
            *_facts(host_facts),
            *baked_boot,
            f"install -d -m 0755 {posixpath.dirname(CONVERGE_INPUTS)}",
            f"cat > {CONVERGE_INPUTS} <<'INPUTS'",
            _INPUTS_PROGRAM.strip(),
            "INPUTS",
            f"cat > {CONVERGE} <<'CONVERGE'",
            *converge,
            "CONVERGE",
            f"chmod 0755 {CONVERGE}",
            f"{CONVERGE} $first",
            "",
        ]
    )


def bake_user_data(tier: str, region: str, ansible_repo: str, ansible_ref: str) -> str:
    """The user data of a bake: install the tier's install part (the playbook's `install` tasks) and nothing of
    the instance's own, record the image's install digest, leave nothing of this instance behind, and tag the
    instance `bulkhead:bake` = `done <digest>` (or `failed`) for the baker, which then stops it and images it."""
    if tier not in PLAYBOOKS:
        raise ValueError(f"unknown host tier {tier!r}; expected one of {sorted(PLAYBOOKS)}")
    repo, ref = shlex.quote(ansible_repo), shlex.quote(ansible_ref)
    host_facts = json.dumps({"bulkhead_role": tier, "bulkhead_repo": ansible_repo, "bulkhead_ref": ansible_ref,
                             "bulkhead_region": region}, sort_keys=True)  # fmt: skip
    checker = f"{PULL_DIR}/platform/bulkhead/install_inputs.py"
    return "\n".join(
        [
            "#!/bin/bash",
            f"# Bulkhead bake: the install part of the {tier} tier, imaged afterwards.",
            "# Log: /var/log/cloud-init-output.log.",
            "set -euo pipefail",
            # The baker waits for this tag: `done <digest>` once the image is ready to be taken, else `failed`.
            "signal() { /opt/bulkhead/ansible/bin/python -c " + shlex.quote(_TAG_PROGRAM) + f" {shlex.quote(region)}"
            ' "$1" || echo "could not tag this instance bulkhead:bake=$1" >&2; }',
            "trap 'code=$?; [ $code -eq 0 ] || signal failed; exit $code' EXIT",
            *_facts(host_facts),
            *_prepare(repo, ref, ansible_ref, ansible_repo),
            _resolve_commit(repo, ref),
            f'/opt/bulkhead/ansible/bin/ansible-pull -U {repo} -C "$commit" -d {PULL_DIR} -i localhost, -c local '
            f"-e bulkhead_pull=true -e @{HOST_FACTS} --tags install roles/{PLAYBOOKS[tier]}",
            f"digest=$(python3 {checker} {tier} {PULL_DIR})",
            f"name=bulkhead-{tier.replace('_', '-')}-$digest",
            f'printf \'{{"tier": "%s", "install_digest": "%s", "commit": "%s", "name": "%s"}}\\n\' {tier} "$digest" '
            f'"$commit" "$name" > {IMAGE_RECORD}',
            # Nothing of this instance goes into the image: each instance makes its own host keys, facts, machine
            # id and cloud-init state at its first boot (as cloud-init and Packer's cleanup do on AWS).
            "rm -f /etc/ssh/ssh_host_*",
            f"rm -f {HOST_FACTS} {CONVERGE_RECORD}",
            ": > /etc/machine-id",
            "apt-get clean",
            f'echo "bake of the {tier} tier done: $name (commit $commit)"',
            'signal "done $digest"',
            "",
        ]
    )


def _facts(host_facts: str) -> list[str]:
    return [
        "install -d -m 0755 /etc/bulkhead",
        f"echo {shlex.quote(host_facts)} | python3 -c {shlex.quote(_FACTS_PROGRAM)} > {HOST_FACTS}.new",
        f"mv {HOST_FACTS}.new {HOST_FACTS}",
        "export DEBIAN_FRONTEND=noninteractive",
    ]


def _ref_check(repo: str, ref: str, ansible_ref: str, ansible_repo: str) -> list[str]:
    # A branch or tag that the repository lacks fails here, before a minute of installing; a commit id cannot
    # be asked for without fetching, so ansible-pull finds it.
    return [
        f"if ! [[ {ref} =~ ^[0-9a-f]{{40}}$ ]] && ! git ls-remote --exit-code {repo} {ref} >/dev/null; then",
        "  echo " + shlex.quote(f"ref {ansible_ref} is not in {ansible_repo}: check bulkhead:ansibleRef") + " >&2",
        "  exit 3",
        "fi",
    ]


def _resolve_commit(repo: str, ref: str) -> str:
    """Shell: `commit` becomes the commit the ref names (a commit id names itself)."""
    found = f"$(git ls-remote --exit-code {repo} {ref} | cut -f1)"
    return f"commit={ref}; [[ {ref} =~ ^[0-9a-f]{{40}}$ ]] || commit={found}"


def _prepare(repo: str, ref: str, ansible_ref: str, ansible_repo: str) -> list[str]:
    """A bare image: git and venv from Debian, then Ansible in its venv."""
    return [
        "apt-get update -q",
        "apt-get install -y -q --no-install-recommends python3-venv git",
        *_ref_check(repo, ref, ansible_ref, ansible_repo),
        "python3 -m venv /opt/bulkhead/ansible",
        # Not compiled: Ansible's thousands of modules are byte-compiled, if ever, when used.
        "/opt/bulkhead/ansible/bin/pip install -q --no-compile "
        + " ".join(shlex.quote(r) for r in ANSIBLE_REQUIREMENTS),
    ]


def _stale_check(tier: str, repo: str, ref: str, region: str) -> list[str]:
    """Refuse, in one line naming the command, an image baked from other install inputs than the commit's."""
    bake = f"bulkhead image bake --region {region or 'REGION'} --tier {tier}"
    return [
        f"commit={ref}; [[ {ref} =~ ^[0-9a-f]{{40}}$ ]] || commit=$(git ls-remote --exit-code {repo} {ref} | cut -f1)",
        f"git -C {PULL_DIR} fetch -q --tags {repo} '+refs/heads/*:refs/remotes/pulled/*'",
        f'git -C {PULL_DIR} checkout -q --detach "$commit"',
        f"want=$(python3 {PULL_DIR}/platform/bulkhead/install_inputs.py {tier} {PULL_DIR})",
        "have=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[\"install_digest\"])' "
        f"{IMAGE_RECORD})",
        'if [ "$want" != "$have" ]; then',
        '  echo "this image was baked from install inputs $have, and commit $commit needs $want: run'
        f' \\`{bake}\\`, then launch the host again" >&2',
        "  exit 4",
        "fi",
    ]


def user_data_base64(role: str, facts: Mapping[str, Any], ansible_repo: str, ansible_ref: str) -> str:
    """The same script, base64-encoded as launch templates require."""
    return base64.b64encode(user_data(role, facts, ansible_repo, ansible_ref).encode()).decode()
