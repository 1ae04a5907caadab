"""The metrics agent: one per host, publishing what the alarms watch to CloudWatch every 10 s, and a
heartbeat to the status region.

What a host publishes depends on what it runs (each source is given on the command line by its tier):
- routers: requests and 5xx answers since the last round, from HAProxy's `show stat` (`Bulkhead/Router`);
- dyno hosts: each boot's seconds, from the dyno manager's state file (`Bulkhead/Runtime`);
- database hosts: the WAL archive lag of the primary, from `pg_stat_archiver` and the archive status
  directory, and how many etcd members do not answer healthy (`Bulkhead/Postgres`);
- every host: a heartbeat (`Bulkhead/Heartbeat`) into the status account's CloudWatch through the one
  role that account lets the platform assume. Where to send it is the region's SSM parameter
  `/bulkhead/<region>/heartbeat`, so the host learns it from its own region, never from a controller.

Decisions (parsing, deltas, the data to send) are functions without I/O; `MetricsAgent` does the I/O.
A source that fails is logged and counted, never fatal: the heartbeat goes on regardless.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bulkhead import topology
from bulkhead.files import write_json

log = logging.getLogger("bulkhead.agents.metrics")
INTERVAL = 10.0
ROUTER, RUNTIME, POSTGRES = "Bulkhead/Router", "Bulkhead/Runtime", "Bulkhead/Postgres"
# How long a heartbeat destination read from SSM is trusted before it is read again.
DESTINATION_TTL = 300.0


@dataclass(frozen=True)
class Counts:
    """HAProxy's running totals over its frontends."""

    requests: int
    http_5xx: int


def haproxy_counts(show_stat: str) -> Counts:
    """Totals of `req_tot` and `hrsp_5xx` over the FRONTEND rows of HAProxy's `show stat` CSV."""
    rows = csv.DictReader(io.StringIO(show_stat.lstrip("# ")))
    requests = failures = 0
    for row in rows:
        if row.get("svname") == "FRONTEND":
            requests += int(row.get("req_tot") or 0)
            failures += int(row.get("hrsp_5xx") or 0)
    return Counts(requests, failures)


def since(previous: int | None, current: int) -> int:
    """What a running total added since `previous`; all of it when the counter restarted (a reload)."""
    if previous is None:
        return 0
    return current - previous if current >= previous else current


def datum(name: str, value: float, unit: str, region: str, at: dt.datetime) -> dict:
    """One CloudWatch datum, by region (the alarms' one dimension)."""
    return {"MetricName": name, "Dimensions": [{"Name": "Region", "Value": region}], "Value": float(value),
            "Unit": unit, "Timestamp": at}  # fmt: skip


def new_boots(state: dict, after: float) -> list[tuple[float, float]]:
    """(at, seconds) of each boot in the dyno manager's state newer than `after`, oldest first."""
    boots = [(b["at"], b["seconds"]) for b in state.get("boots", []) if b.get("seconds") is not None]
    return sorted(b for b in boots if b[0] > after)


def boot_data(boots: list[tuple[float, float]], region: str, at: dt.datetime) -> list[dict]:
    """The boots as one datum of values (CloudWatch takes up to 150 values in one)."""
    if not boots:
        return []
    item = datum("DynoBootSeconds", 0, "Seconds", region, at)
    del item["Value"]
    return [{**item, "Values": [float(s) for _, s in boots[-150:]]}]


@dataclass
class Figures:
    """What the agent has done, written to its state file each round."""

    rounds: int = 0
    published: int = 0
    heartbeats: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    last_error: dict[str, str] = field(default_factory=dict)
    last_round_at: float = 0.0
    last_heartbeat_at: float = 0.0
    last: dict[str, float] = field(default_factory=dict)

    def failed(self, source: str, error: BaseException) -> None:
        self.errors[source] = self.errors.get(source, 0) + 1
        self.last_error[source] = f"{type(error).__name__}: {str(error)[:200]}"


@dataclass
class Sources:
    """What this host has to report; each is optional."""

    haproxy_socket: Path | None = None
    dyno_state: Path | None = None
    postgres: str | None = None
    registry: list[str] = field(default_factory=list)


def _show_stat(path: Path) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(3)
        connection.connect(str(path))
        connection.sendall(b"show stat\n")
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def _unhealthy(members: list[str]) -> int:
    """How many etcd members do not answer their /health as healthy within 2 s."""
    count = 0
    for member in members:
        address = member if ":" in member else f"{member}:2379"
        try:
            with urllib.request.urlopen(f"http://{address}/health", timeout=2) as answer:
                healthy = json.loads(answer.read()).get("health") in ("true", True)
        except (OSError, ValueError):
            healthy = False
        count += not healthy
    return count


class MetricsAgent:
    """Publishes this host's figures and heartbeat every `interval` seconds until stopped."""

    def __init__(self, region: str, host: str, sources: Sources, state: Path,
                 cloudwatch: Callable[[], object], heartbeat: Callable[[], object | None],
                 interval: float = INTERVAL) -> None:  # fmt: skip
        """`cloudwatch()`: the region's CloudWatch client; `heartbeat()`: the status account's, or None when
        the destination is not known (yet)."""
        self.region, self.host, self.sources, self.state = region, host, sources, state
        self.cloudwatch, self.heartbeat, self.interval = cloudwatch, heartbeat, interval
        self.figures = Figures()
        self._requests: int | None = None
        self._5xx: int | None = None
        self._boots_after = time.time()
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.round()
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def round(self) -> None:
        at = dt.datetime.now(dt.UTC)
        data: dict[str, list[dict]] = {}
        for source, namespace, read in (("router", ROUTER, self._router), ("dynos", RUNTIME, self._dynos),
                                        ("postgres", POSTGRES, self._postgres)):  # fmt: skip
            try:
                found = read(at)
            except Exception as error:  # a source that fails never stops the others or the heartbeat
                self.figures.failed(source, error)
                log.warning("source failed", extra={"source": source, "error": str(error)[:200]})
                continue
            if found:
                data.setdefault(namespace, []).extend(found)
        for namespace, items in data.items():
            try:
                self.cloudwatch().put_metric_data(Namespace=namespace, MetricData=items)
                self.figures.published += len(items)
                for item in items:
                    self.figures.last[item["MetricName"]] = item.get("Value", max(item.get("Values", [0.0])))
            except Exception as error:
                self.figures.failed(f"publish {namespace}", error)
                log.warning("publish failed", extra={"namespace": namespace, "error": str(error)[:200]})
        self._beat(at)
        self.figures.rounds += 1
        self.figures.last_round_at = time.time()
        write_json(self.state, self.figures.__dict__)

    def _beat(self, at: dt.datetime) -> None:
        try:
            client = self.heartbeat()
            if client is None:
                raise LookupError(f"no heartbeat destination in SSM /bulkhead/{self.region}/heartbeat yet")
            # High resolution: the status region's alarm on it has periods of 30 s.
            beat = {**datum(topology.HEARTBEAT_METRIC, 1, "Count", self.region, at), "StorageResolution": 1}
            client.put_metric_data(Namespace=topology.HEARTBEAT_NAMESPACE, MetricData=[beat])
            self.figures.heartbeats += 1
            self.figures.last_heartbeat_at = time.time()
        except Exception as error:
            self.figures.failed("heartbeat", error)
            log.warning("heartbeat failed", extra={"error": str(error)[:200]})

    def _router(self, at: dt.datetime) -> list[dict]:
        if not self.sources.haproxy_socket:
            return []
        counts = haproxy_counts(_show_stat(self.sources.haproxy_socket))
        first = self._requests is None
        requests, failures = since(self._requests, counts.requests), since(self._5xx, counts.http_5xx)
        self._requests, self._5xx = counts.requests, counts.http_5xx
        if first:
            return []  # a baseline: the totals so far belong to no round of this agent
        return [
            datum("Requests", requests, "Count", self.region, at),
            datum("Http5xx", failures, "Count", self.region, at),
        ]

    def _dynos(self, at: dt.datetime) -> list[dict]:
        if not self.sources.dyno_state or not self.sources.dyno_state.exists():
            return []
        boots = new_boots(json.loads(self.sources.dyno_state.read_text()), self._boots_after)
        if boots:
            self._boots_after = boots[-1][0]
        return boot_data(boots, self.region, at)

    def _postgres(self, at: dt.datetime) -> list[dict]:
        found = []
        if self.sources.registry:
            found.append(datum("EtcdUnhealthyMembers", _unhealthy(self.sources.registry), "Count", self.region, at))
        if self.sources.postgres:
            from bulkhead.backup.archive_lag import archive_lag

            lag = archive_lag(self.sources.postgres)
            # Only the primary archives; a standby's figure would hide the primary's in the Maximum.
            if lag.role == "primary":
                found.append(datum("WalArchiveLagSeconds", lag.lag_seconds, "Seconds", self.region, at))
        return found


class HeartbeatDestination:
    """The status account's CloudWatch, as the SSM parameter of this host's region names it, through the
    heartbeat role; read again every DESTINATION_TTL seconds (and after a failure)."""

    def __init__(self, ssm, sts, region: str, client: Callable[..., object]) -> None:
        self.ssm, self.sts, self.region, self.client = ssm, sts, region, client
        self._client: object | None = None
        self._expires = 0.0

    def __call__(self) -> object | None:
        if self._client is not None and time.time() < self._expires:
            return self._client
        self._client = None
        value = json.loads(self.ssm.get_parameter(Name=f"/bulkhead/{self.region}/heartbeat")["Parameter"]["Value"])
        granted = self.sts.assume_role(RoleArn=value["roleArn"], RoleSessionName=f"heartbeat-{self.region}")
        credentials = granted["Credentials"]
        self._client = self.client("cloudwatch", value["region"], credentials)
        self._expires = time.time() + DESTINATION_TTL
        return self._client
