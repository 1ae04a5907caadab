"""Look for the platform's secret values where they must never be: user data, stack outputs, `.bulkhead/`
state and reports, and the logs, on this machine and on every sandbox host.

The values looked for are the SSM SecureStrings under `/bulkhead/` in every region, and the passwords a
controller keeps for the sites it converges (the hosts' `secrets/` directory). A finding names the
secret's parameter and the place, never the value.
"""

from __future__ import annotations

import base64
import contextlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

MAX_FILE_BYTES = 64 * 2**20
# Where the hosts write their logs (roles/common: common_log_dir).
HOST_LOG_DIR = "/var/log/bulkhead"
# Shorter values cannot be told from chance text; the platform's passwords are 32 characters.
MIN_SECRET_LENGTH = 12


@dataclass(frozen=True)
class Finding:
    secret: str
    place: str


def ssm_secrets(ssm) -> dict[str, str]:
    """Every SecureString under /bulkhead/ in one region's SSM: name -> value."""
    found = {}
    for page in ssm.get_paginator("get_parameters_by_path").paginate(
        Path="/bulkhead/", Recursive=True, WithDecryption=True
    ):
        for parameter in page["Parameters"]:
            if parameter["Type"] == "SecureString":
                found[parameter["Name"]] = parameter["Value"]
    return found


def file_secrets(directory: Path) -> dict[str, str]:
    """Passwords a controller keeps in files (Ansible's password lookup): path -> value."""
    if not directory.is_dir():
        return {}
    return {
        str(p): p.read_text().split()[0] for p in sorted(directory.iterdir()) if p.is_file() and p.read_text().strip()
    }


class Scanner:
    """Matches the secrets' values in text, bytes and files."""

    def __init__(self, secrets: dict[str, str]) -> None:
        self.secrets = {name: value for name, value in secrets.items() if len(value) >= MIN_SECRET_LENGTH}
        # Each value as written and base64-encoded (user data, Kubernetes-style secrets), made once.
        self._needles = {
            name: (value.encode(), base64.b64encode(value.encode())) for name, value in self.secrets.items()
        }
        self.places = 0
        self.findings: list[Finding] = []

    def text(self, place: str, content: str | bytes) -> None:
        self.places += 1
        data = content.encode() if isinstance(content, str) else content
        for name, needles in self._needles.items():
            if any(needle in data for needle in needles):
                self.findings.append(Finding(name, place))

    def tree(self, root: Path, skip: Iterable[Path] = ()) -> None:
        """Every file under `root` (but those under `skip`, which is never entered), up to MAX_FILE_BYTES each."""
        skipped = {s.resolve() for s in skip}
        for directory, subdirectories, files in os.walk(root, onerror=lambda error: None):
            here = Path(directory)
            subdirectories[:] = sorted(d for d in subdirectories if (here / d).resolve() not in skipped)
            for name in sorted(files):
                path = here / name
                with contextlib.suppress(OSError):
                    if not path.is_symlink() and path.is_file() and path.stat().st_size <= MAX_FILE_BYTES:
                        self.text(str(path), path.read_bytes())

    def user_data(self, ec2, region: str) -> None:
        """Every launch template's latest user data and every instance's."""
        for template in ec2.describe_launch_templates()["LaunchTemplates"]:
            for version in ec2.describe_launch_template_versions(
                LaunchTemplateId=template["LaunchTemplateId"], Versions=["$Latest"]
            )["LaunchTemplateVersions"]:
                data = version["LaunchTemplateData"].get("UserData") or ""
                self.text(f"{region}: user data of {template['LaunchTemplateName']}", _decoded(data))
        for reservation in ec2.describe_instances()["Reservations"]:
            for instance in reservation["Instances"]:
                answer = ec2.describe_instance_attribute(InstanceId=instance["InstanceId"], Attribute="userData")
                self.text(f"{region}: user data of {instance['InstanceId']}",
                          _decoded(answer.get("UserData", {}).get("Value") or ""))  # fmt: skip


def _decoded(text: str) -> bytes:
    try:
        return base64.b64decode(text)
    except ValueError:
        return text.encode()


def scan(
    state_dirs: Iterable[Path], sandboxes, regions: Iterable[str], ssm: Callable[[str], object],
    ec2: Callable[[str], object],
) -> Scanner:  # fmt: skip
    """Scan the state directories (`.bulkhead/`), every running sandbox host's logs, and every region's user data.

    The values looked for: every region's SecureStrings, and the passwords in the sandboxes' `secrets/`.
    """
    regions = list(regions)
    secrets = file_secrets(sandboxes.directory / "secrets")
    for region in regions:
        secrets.update(ssm_secrets(ssm(region)))
    scanner = Scanner(secrets)
    specs = sandboxes.recorded()
    # The hosts' own roots hold their configuration (patroni.yml has its passwords, by design): only their logs.
    skip = [sandboxes.directory / "secrets", *(sandboxes.directory / spec.name for spec in specs)]
    for state in state_dirs:
        if state.is_dir():
            scanner.tree(state, skip=skip)
    for spec in specs:
        logs = sandboxes.root(spec) / HOST_LOG_DIR.lstrip("/")
        if sandboxes.alive(spec) and logs.is_dir():
            scanner.tree(logs)
    for region in regions:
        scanner.user_data(ec2(region), region)
    return scanner
