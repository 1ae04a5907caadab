"""Route 53 health checks and failover answers, decided by real probes: moto's checks always pass.

Each health check is probed as Route 53's checkers would: an HTTP(S) request to its target every
`RequestInterval` seconds, unhealthy after `FailureThreshold` failures in a row, healthy again after as
many successes. A check's target is a region's load balancer; locally that is the region's routers, in
their sandboxes, reached from the region's bridge where the load balancer stands. A failover record is
answered as Route 53 answers it: PRIMARY while its check is healthy, else SECONDARY if its check is; when
both are unhealthy Route 53 answers PRIMARY.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("bulkhead.local.health")
CONNECT_TIMEOUT = 4.0  # Route 53: a connection within four seconds
RESPONSE_TIMEOUT = 2.0  # and a response within two seconds of it


@dataclass(frozen=True)
class Check:
    id: str
    region: str
    fqdn: str
    port: int
    type: str
    path: str
    interval: int
    threshold: int


@dataclass
class Status:
    """One check's view: healthy until `threshold` failures in a row, as Route 53 starts a new check."""

    healthy: bool = True
    failures: int = 0
    successes: int = 0
    probed_at: float = 0.0
    last: str = "not probed yet"
    changed_at: float = field(default_factory=time.time)


def observe(status: Status, ok: bool, threshold: int, what: str, now: float) -> Status:
    """The status after one probe: a run of `threshold` results the other way flips it."""
    failures = 0 if ok else status.failures + 1
    successes = status.successes + 1 if ok else 0
    healthy = status.healthy
    if healthy and failures >= threshold:
        healthy = False
    elif not healthy and successes >= threshold:
        healthy = True
    changed = now if healthy != status.healthy else status.changed_at
    return Status(healthy, failures, successes, now, what, changed)


def checks_of(route53) -> list[Check]:
    """Every health check with its `bulkhead:region` tag (the region whose edge it watches)."""
    found = route53.list_health_checks().get("HealthChecks", [])
    if not found:
        return []
    tags = route53.list_tags_for_resources(ResourceType="healthcheck", ResourceIds=[c["Id"] for c in found])
    regions = {entry["ResourceId"]: {t["Key"]: t["Value"] for t in entry.get("Tags", [])}.get("bulkhead:region", "")
               for entry in tags.get("ResourceTagSets", [])}  # fmt: skip
    checks = []
    for raw in found:
        config = raw["HealthCheckConfig"]
        checks.append(
            Check(
                raw["Id"],
                regions.get(raw["Id"], ""),
                config.get("FullyQualifiedDomainName", ""),
                int(config.get("Port", 443)),
                config.get("Type", "HTTPS"),
                config.get("ResourcePath", "/"),
                int(config.get("RequestInterval", 30)),
                int(config.get("FailureThreshold", 3)),
            )
        )
    return checks


def failover_answer(records: list[dict], healthy: Callable[[str], bool]) -> dict | None:
    """The record Route 53 answers among one name's failover records (as `list_resource_record_sets` gives)."""
    by_role = {r.get("Failover"): r for r in records if r.get("Failover")}
    if not by_role:
        return records[0] if records else None
    primary, secondary = by_role.get("PRIMARY"), by_role.get("SECONDARY")

    def ok(record: dict | None) -> bool:
        return record is not None and (not record.get("HealthCheckId") or healthy(record["HealthCheckId"]))

    if ok(primary):
        return primary
    if ok(secondary):
        return secondary
    return primary or secondary


def probe(connect: Callable[[], socket.socket], check: Check, address: str) -> tuple[bool, str]:
    """One request as a Route 53 checker sends it; 2xx and 3xx pass. Certificates are not checked (nor are
    they by Route 53)."""
    sock = connect()
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        sock.connect((address, check.port))
        if check.type.startswith("HTTPS"):
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            sock = context.wrap_socket(sock, server_hostname=check.fqdn or None)
        sock.settimeout(RESPONSE_TIMEOUT)
        request = (
            f"GET {check.path} HTTP/1.1\r\nHost: {check.fqdn}\r\nUser-Agent: Amazon-Route53-Health-Check-Service\r\n"
        )
        sock.sendall((request + "Connection: close\r\n\r\n").encode())
        status_line = sock.recv(256).split(b"\r\n", 1)[0].decode(errors="replace")
        parts = status_line.split()
        code = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        return 200 <= code < 400, f"{address}: {status_line or 'no answer'}"
    except (OSError, ssl.SSLError) as error:
        return False, f"{address}: {error.__class__.__name__} {error}".strip()
    finally:
        with contextlib.suppress(OSError):
            sock.close()


class Prober:
    """Probes every check on its interval; `targets(region)` gives (connect, addresses) for a region's edge."""

    def __init__(self, route53: Callable[[], object], targets: Callable[[str], tuple[Callable, list[str]]]) -> None:
        self.route53 = route53
        self.targets = targets
        self.status: dict[str, Status] = {}
        self.checks: dict[str, Check] = {}
        self._listed_at = 0.0

    def healthy(self, check_id: str) -> bool:
        return self.status.get(check_id, Status()).healthy

    def tick(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if now - self._listed_at >= 5:
            self.checks = {c.id: c for c in checks_of(self.route53())}
            self._listed_at = now
        for check in self.checks.values():
            status = self.status.get(check.id, Status())
            if now - status.probed_at < check.interval:
                continue
            connect, addresses = self.targets(check.region)
            ok, what = False, f"no host serves {check.region}'s edge"
            for address in addresses:  # a load balancer answers if any of its targets does
                ok, what = probe(connect, check, address)
                if ok:
                    break
            after = observe(status, ok, check.threshold, what, now)
            if after.healthy != status.healthy:
                log.warning("health check %s", "healthy" if after.healthy else "unhealthy",
                            extra={"check": check.id, "region": check.region, "last": what})  # fmt: skip
            self.status[check.id] = after

    def as_json(self) -> dict:
        return {cid: {"region": self.checks[cid].region if cid in self.checks else "", "healthy": s.healthy,
                      "failures": s.failures, "last": s.last, "probed_at": s.probed_at}
                for cid, s in self.status.items()}  # fmt: skip
