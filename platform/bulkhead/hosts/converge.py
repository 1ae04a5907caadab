"""Run the playbooks against the sandbox hosts through ansible-runner, and say what happened per host.

A host that converged records a digest of what it applied (`bootstrap.CONVERGE_RECORD`, as a first boot's
`bulkhead-converge` does): here, the roles as they are in this checkout, the playbook, the variables the
run gives it (its own inventory entry and groups, the database members every tier reads, the extra vars)
and the secrets the roles read. A host whose inputs have the digest it recorded is left out of the run and
reported as unchanged; `force` runs every host.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import ansible_runner
import yaml

from bulkhead import bootstrap, topology
from bulkhead.hosts.sandbox import AWS_API_PORT, HostSpec, Sandboxes
from bulkhead.localcloud import server
from bulkhead.localcloud.aws import local_environment
from bulkhead.localcloud.state import Store


@dataclass
class Converged:
    """What one playbook run did, per host."""

    ok: dict[str, int] = field(default_factory=dict)
    changed: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # Hosts left out because their inputs were those they last converged with.
    unchanged: list[str] = field(default_factory=list)
    # Hosts the playbook had a play for (Ansible's "processed").
    processed: list[str] = field(default_factory=list)
    # Each task's seconds, added up over the hosts it ran on ("role : task"): where a converge spends its time.
    task_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        return not self.failures


def extra_vars(specs: list[HostSpec], sandboxes: Sandboxes, store: Store, project_dir: Path) -> dict:
    """What the local cloud tells the roles: the VPC's networks, the archive's endpoint and credentials.

    The database hosts' bulkhead, barman-cloud and Patroni are the role's default, /opt/bulkhead/barman,
    which scripts/setup fills from this checkout (a first boot installs it from the pulled ref).
    """
    files = topology.StackFiles(project_dir)
    regions = sorted({s.region for s in specs})
    networks = sorted({str(ipaddress.ip_network(files.config(r)["bulkhead:vpcCidr"])) for r in regions})
    info = server.running(store.directory)
    return {
        "postgres_allowed_networks": networks,
        "postgres_archive_endpoint_url": info.endpoint if info else "",
        # The local cloud takes any credentials; on AWS the instance role provides them instead.
        "postgres_environment": local_environment(regions[0] if regions else "us-east-1"),
        "bulkhead_secrets_dir": str(sandboxes.directory / "secrets"),
        # The host agents reach the local cloud's other APIs (SSM's rods, CloudWatch, STS) through the sandbox's
        # own relay beside S3's, with the same credentials: a drill can then cut S3 alone.
        "common_aws_endpoint_url": f"http://127.0.0.1:{AWS_API_PORT}" if info else "",
        "common_environment": local_environment(regions[0] if regions else "us-east-1"),
        # Sandboxes share this machine's clock: configure chrony, never let it steer the clock.
        "common_time_sync_start": False,
    }


def tree_digest(directory: Path) -> str:
    """The digest of every file under `directory`, by relative path and content."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(directory)}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def host_inputs(inventory_document: dict) -> dict[str, dict]:
    """What each host of an inventory converges from, of the inventory: its own entry, the groups it is in,
    and the database members' addresses (which every tier reads, through the role_postgres group)."""
    everyone = inventory_document.get("all", {})
    hosts = everyone.get("hosts") or {}
    children = everyone.get("children") or {}
    groups = {name: sorted((group or {}).get("hosts") or {}) for name, group in children.items()}
    members = [hosts.get(name, {}).get("bulkhead_address") for name in groups.get("role_postgres", [])]
    return {
        name: {
            "vars": variables,
            "groups": sorted(g for g, names in groups.items() if name in names),
            "database_members": members,
        }
        for name, variables in hosts.items()
    }


def inputs_digest(shared: dict, own: dict) -> str:
    """One host's digest: what every host of the run shares (roles, playbook, extra vars, secrets) and its own."""
    document = json.dumps({"shared": shared, "own": own}, sort_keys=True, default=str)
    return hashlib.sha256(document.encode()).hexdigest()


def to_run(wanted: dict[str, str], recorded: dict[str, str | None], force: bool) -> tuple[list[str], list[str]]:
    """Which hosts to converge and which to leave: a host runs unless its recorded digest is the one wanted."""
    run = [h for h in wanted if force or recorded.get(h) != wanted[h]]
    return run, [h for h in wanted if h not in run]


def _secrets(extra: dict) -> dict[str, str]:
    directory = Path(str(extra.get("bulkhead_secrets_dir", ""))).expanduser()
    if not extra.get("bulkhead_secrets_dir") or not directory.is_dir():
        return {}
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def _record_path(variables: dict) -> Path | None:
    """Where a host of the inventory keeps its record, seen from here (a sandbox's root), if it has a root."""
    root = Path(str(variables.get("ansible_host", "")))
    return root / bootstrap.CONVERGE_RECORD.lstrip("/") if variables.get("ansible_host") and root.is_dir() else None


def _read_record(path: Path | None) -> str | None:
    try:
        return path.read_text().strip() if path else None
    except OSError:
        return None


def _write_record(path: Path | None, digest: str | None) -> None:
    if path is None:
        return
    if digest is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    staged = path.with_name(path.name + ".new")
    staged.write_text(digest + "\n")
    staged.replace(path)


def _limited(limit: str | None, leave: list[str]) -> str | None:
    """An Ansible limit that leaves out `leave`, within `limit`."""
    if not leave:
        return limit
    return ":".join([limit or "all", *(f"!{h}" for h in leave)])


def _targeted(inventory_path: Path, limit: str | None) -> set[str]:
    """The hosts a limit names, resolved as ansible-playbook resolves it."""
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader

    manager = InventoryManager(loader=DataLoader(), sources=[str(inventory_path)])
    if limit:
        manager.subset(limit)
    return {host.name for host in manager.get_hosts()}


def converge(
    sandboxes: Sandboxes,
    inventory_path: Path,
    extra: dict,
    project_dir: Path,
    playbook: str = "site.yml",
    limit: str | None = None,
    on_event: Callable[[str, str, str], None] | None = None,
    force: bool = False,
) -> Converged:
    """Run the project's `roles/<playbook>` on every host of the inventory (within `limit`) whose inputs changed
    since it last converged, or on all of them with `force`; `on_event(host, task, outcome)` sees each task
    result as it happens."""
    started = time.perf_counter()
    roles_dir = project_dir / "roles"
    document = yaml.safe_load(Path(inventory_path).read_text()) or {}
    owns = host_inputs(document)
    targeted = _targeted(Path(inventory_path), limit) if limit else set(owns)
    shared = {"roles": tree_digest(roles_dir), "playbook": playbook, "extra": extra, "secrets": _secrets(extra)}
    wanted = {h: inputs_digest(shared, owns[h]) for h in owns if h in targeted}
    paths = {h: _record_path(owns[h]["vars"]) for h in owns}
    recorded = {h: _read_record(paths[h]) for h in wanted}
    run, unchanged = to_run(wanted, recorded, force)
    if not run:
        return Converged(unchanged=unchanged, seconds=time.perf_counter() - started)
    # A run that stops half-way must not leave a record behind: the host converges in full next time.
    for host in run:
        _write_record(paths[host], None)
    report = _run(sandboxes, Path(inventory_path), extra, roles_dir, playbook, _limited(limit, unchanged), on_event)
    report.unchanged = unchanged
    failed = {f.split()[1] for f in report.failures if f.startswith("host ")}
    # The secrets as the run left them: a first run makes the ones it uses (the password lookups).
    applied = {**shared, "secrets": _secrets(extra)}
    for host in run:
        reached = host in report.processed
        if host not in failed and (reached or not report.failures):
            # A host the playbook has no play for was not touched: what it recorded before still holds.
            _write_record(paths[host], inputs_digest(applied, owns[host]) if reached else recorded[host])
    report.seconds = time.perf_counter() - started
    return report


def _run(
    sandboxes: Sandboxes,
    inventory_path: Path,
    extra: dict,
    roles_dir: Path,
    playbook: str,
    limit: str | None,
    on_event: Callable[[str, str, str], None] | None,
) -> Converged:
    report = Converged()

    def handle(event: dict) -> bool:
        data = event.get("event_data", {})
        kind = event.get("event", "")
        host, task = data.get("host", ""), data.get("task", "")
        if kind in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
            result = data.get("res", {})
            message = str(result.get("msg") or result.get("stderr") or "failed").strip().splitlines()
            what = "is unreachable" if kind == "runner_on_unreachable" else f"failed at '{task}'"
            report.failures.append(f"host {host} {what}: {message[-1] if message else ''}")
        if kind.startswith("runner_on_") and isinstance(data.get("duration"), int | float):
            name = f"{data.get('role') or '-'} : {task}"
            report.task_seconds[name] = report.task_seconds.get(name, 0.0) + float(data["duration"])
        if on_event and kind.startswith("runner_on_"):
            on_event(host, task, kind.removeprefix("runner_on_"))
        return True

    private = sandboxes.directory / "runner"
    private.mkdir(parents=True, exist_ok=True)
    result = ansible_runner.run(
        private_data_dir=str(private),
        playbook=str(roles_dir / playbook),
        inventory=str(inventory_path),
        limit=limit,
        extravars=extra,
        quiet=True,
        event_handler=handle,
        # Otherwise ansible-runner writes the first run's extra vars to env/extravars and keeps reading them.
        suppress_env_files=True,
        envvars={
            "PATH": f"{Path(sys.prefix) / 'bin'}:{os.environ.get('PATH', '')}",
            "ANSIBLE_ROLES_PATH": str(roles_dir),
            "ANSIBLE_FORKS": "8",
            # Each module goes down the connection's stdin in one command, instead of a temporary directory made,
            # the module copied in, run and removed: four commands in the sandbox (or SSH round trips) for one.
            "ANSIBLE_PIPELINING": "1",
            "ANSIBLE_NOCOLOR": "1",
        },
    )
    stats = result.stats or {}
    report.ok = dict(stats.get("ok", {}))
    report.changed = dict(stats.get("changed", {}))
    report.processed = sorted(stats.get("processed", {}))
    if result.rc != 0 and not report.failures:
        report.failures.append(f"ansible-playbook exited {result.rc}: {result.stdout.read().strip().splitlines()[-1:]}")
    return report
