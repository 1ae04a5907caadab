"""The one way the operator's machine reaches a region's hosts: Patroni's REST API on the database
members, and files on the dyno hosts.

Here, a region's hosts are sandboxes, and the operator stands in the region's fabric namespace (the
VPC's bridge), from where every member's address answers as it would through a VPC endpoint. On AWS
the same requests go through SSM Session Manager port forwarding; that path is not built yet, and a
region without sandbox hosts is refused with one line that says so. No other module knows how hosts
are reached.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bulkhead.agents.registry import CLIENT_PORT, Registry
from bulkhead.ha.cluster import LEADER_ROLES, ClusterError, Member, members
from bulkhead.hosts.sandbox import HostSpec, Sandboxes, fabric_netns

PATRONI_PORT = 8008


@dataclass(frozen=True)
class Answer:
    """What one HTTP request got: the status (None: no answer in time) and the body, parsed when JSON."""

    status: int | None
    body: Any

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class Reach:
    """A region's hosts, as the operator reaches them."""

    def __init__(self, sandboxes: Sandboxes, region: str) -> None:
        self.sandboxes = sandboxes
        self.region = region
        self.hosts = [s for s in sandboxes.recorded() if s.region == region]
        if not self.hosts:
            raise ClusterError(
                f"no hosts of region {region} are reachable from here: run `bulkhead hosts up --region {region}` "
                "and `bulkhead hosts configure` (reaching hosts on AWS through SSM port forwarding is not built yet)"
            )

    @classmethod
    def of_project(cls, project_dir: Path, region: str) -> Reach:
        return cls(Sandboxes.of_project(project_dir), region)

    @property
    def database_hosts(self) -> list[HostSpec]:
        return [s for s in self.hosts if s.role == "postgres"]

    def of_role(self, role: str) -> list[HostSpec]:
        return [s for s in self.hosts if s.role == role]

    def patroni(self, address: str, method: str, path: str, body: dict | None = None, timeout: float = 3) -> Answer:
        """One request to the Patroni REST API of the member at `address`."""
        command = ["ip", "netns", "exec", fabric_netns(self.region, self.sandboxes.directory), "curl", "-s",
                   "--max-time", str(timeout), "-X", method, "-w", "\n%{http_code}",
                   f"http://{address}:{PATRONI_PORT}{path}"]  # fmt: skip
        if body is not None:
            command += ["-H", "Content-Type: application/json", "--data", json.dumps(body)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout + 5, check=False)
        text, _, code = result.stdout.rpartition("\n")
        status = int(code) if code.isdigit() and code != "000" else None
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = text
        return Answer(status, parsed)

    def cluster(self) -> list[Member]:
        """Every member, as the members see the cluster; all unreachable if none answers.

        A member that was cut off answers from its own stale view (in which it may still lead), so the
        view taken is one whose leader confirms it: its /primary answers 200 only while it holds the
        leader key and runs as primary.
        """
        hosts = {s.name: (s.az, s.address) for s in self.database_hosts}
        views = []
        for spec in self.database_hosts:
            answer = self.patroni(spec.address, "GET", "/cluster", timeout=2)
            if answer.ok and isinstance(answer.body, dict):
                views.append(answer.body)
        for view in views:
            leader = next((m for m in view.get("members", []) if m.get("role") in LEADER_ROLES), None)
            if leader and self.patroni(leader.get("host", ""), "GET", "/primary", timeout=2).ok:
                return members(view, hosts)
        return members(views[0] if views else {}, hosts)

    def dynamic_config(self) -> dict:
        """The cluster's dynamic configuration (ttl, maximum_lag_on_failover, synchronous_mode, ...)."""
        for spec in self.database_hosts:
            answer = self.patroni(spec.address, "GET", "/config", timeout=2)
            if answer.ok and isinstance(answer.body, dict):
                return answer.body
        raise ClusterError(f"no database member of {self.region} answered; see `bulkhead db status --region "
                           f"{self.region}`")  # fmt: skip

    @contextlib.contextmanager
    def registry(self) -> Iterator[Registry]:
        """The region's registry (etcd on the database members), through a port forward to each member."""
        from bulkhead.hosts.fabric import PortForward

        netns = fabric_netns(self.region, self.sandboxes.directory)
        forwards = [PortForward(netns, spec.address, CLIENT_PORT) for spec in self.database_hosts]
        try:
            yield Registry([f"127.0.0.1:{f.port}" for f in forwards])
        finally:
            for forward in forwards:
                forward.close()

    def read_file(self, host: HostSpec, path: str) -> str:
        """A file on a host, as its own root holds it."""
        result = self.sandboxes.run(host, "cat", path, timeout=10)
        if result.returncode != 0:
            raise ClusterError(f"host {host.name} has no {path}: run `bulkhead hosts configure`")
        return result.stdout
