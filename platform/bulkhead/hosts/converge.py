"""Run the playbooks against the sandbox hosts through ansible-runner, and say what happened per host."""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import ansible_runner

from bulkhead import topology
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


def converge(
    sandboxes: Sandboxes,
    inventory_path: Path,
    extra: dict,
    project_dir: Path,
    playbook: str = "site.yml",
    limit: str | None = None,
    on_event: Callable[[str, str, str], None] | None = None,
) -> Converged:
    """Run the project's `roles/<playbook>`; `on_event(host, task, outcome)` sees each task result as it happens."""
    roles_dir = project_dir / "roles"
    report = Converged()
    tasks: dict[str, str] = {}

    def handle(event: dict) -> bool:
        data = event.get("event_data", {})
        kind = event.get("event", "")
        if kind == "playbook_on_task_start":
            tasks[data.get("task_uuid", "")] = data.get("task", "")
        host, task = data.get("host", ""), data.get("task", "")
        if kind in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
            result = data.get("res", {})
            message = str(result.get("msg") or result.get("stderr") or "failed").strip().splitlines()
            what = "is unreachable" if kind == "runner_on_unreachable" else f"failed at '{task}'"
            report.failures.append(f"host {host} {what}: {message[-1] if message else ''}")
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
            "ANSIBLE_NOCOLOR": "1",
        },
    )
    stats = result.stats or {}
    report.ok = dict(stats.get("ok", {}))
    report.changed = dict(stats.get("changed", {}))
    if result.rc != 0 and not report.failures:
        report.failures.append(f"ansible-playbook exited {result.rc}: {result.stdout.read().strip().splitlines()[-1:]}")
    return report
