"""What a tier's *install* part is made from, and its digest: the name a baked image of the tier carries.

The install part of a tier's playbook is its tasks tagged `install` (packages, venvs, the host install of
`bulkhead`): nothing in it depends on which instance runs it, so an image can hold it. Its inputs are
- each role file of the tier's playbook that holds an `install` task, and that role's defaults (the
  package lists live there);
- the `bulkhead` package the hosts install (`pyproject.toml` and `platform/bulkhead/`), which brings the
  Ansible requirements of the first boot with it (`bulkhead.bootstrap`).

A baked image records this digest, and a host booting from it compares the digest with its own at the
commit it converges: an image baked from other inputs is stale and is refused, never booted silently.

This file runs on the hosts too, as a script of the checkout they pull (`python3 install_inputs.py
TIER ROOT`), so it imports nothing beyond the standard library: the host and the baker compute one digest
with one piece of code.
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

TAG = "install"
PLAYBOOKS = {"router": "router.yml", "dyno_host": "dyno_host.yml", "postgres": "postgres.yml"}
_ROLE_LINE = re.compile(r"^\s+-\s+(?:role:\s*)?([a-z][a-z0-9_]*)\s*$")
_INSTALL_TAG = re.compile(rf"^\s+tags:\s*\[[^\]]*\b{TAG}\b[^\]]*\]\s*$", re.M)


def tier_roles(root: Path, tier: str) -> list[str]:
    """The roles the tier's playbook lists, in order, each once."""
    if tier not in PLAYBOOKS:
        raise ValueError(f"unknown tier {tier!r}; expected one of {sorted(PLAYBOOKS)}")
    roles: list[str] = []
    section = None  # the indent of the `roles:` key being read, if one is
    for line in (root / "roles" / PLAYBOOKS[tier]).read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        if re.match(r"^\s*roles:\s*$", line):
            section = indent
        elif section is not None and indent <= section:
            section = None
        elif section is not None and (found := _ROLE_LINE.match(line)) and found.group(1) not in roles:
            roles.append(found.group(1))
    return roles


def input_files(root: Path, tier: str) -> list[Path]:
    """Every file the tier's install part is made from, relative to `root`, sorted."""
    files: set[Path] = set()
    for role in tier_roles(root, tier):
        base = root / "roles" / role
        for path in sorted((base / "tasks").glob("*.yml")):
            if _INSTALL_TAG.search(path.read_text()):
                files.add(path)
        if (base / "defaults" / "main.yml").exists():
            files.add(base / "defaults" / "main.yml")
    files.add(root / "pyproject.toml")
    files.update(p for p in (root / "platform" / "bulkhead").rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return sorted(p.relative_to(root) for p in files)


def digest(root: Path, tier: str) -> str:
    """12 hex digits over the tier, each input's path and its contents."""
    hasher = hashlib.sha256(f"tier {tier}\n".encode())
    for relative in input_files(root, tier):
        hasher.update(f"{relative}\n".encode())
        hasher.update(hashlib.sha256((root / relative).read_bytes()).hexdigest().encode() + b"\n")
    return hasher.hexdigest()[:12]


def image_name(tier: str, inputs_digest: str) -> str:
    """The AMI name a bake of the tier registers: `bulkhead-<tier>-<digest>`."""
    return f"bulkhead-{tier.replace('_', '-')}-{inputs_digest}"


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: install_inputs.py TIER CHECKOUT: prints the digest of the tier's install part")
    print(digest(Path(sys.argv[2]), sys.argv[1]))
