"""Route records: what a dyno host publishes for each app process, and which records a router accepts.

A record lives at `/bulkhead/<region>/routes/<app>/<host>:<port>` in etcd, under the publishing host's
lease, and holds one JSON object: `{"app", "host", "address", "port", "az", "at"}` (`at`: when it was
written, seconds since the epoch, for the router's lag figure). The June 2012 outage began with one
record the router did not expect; here every record is checked before it can reach HAProxy's
configuration, and one that fails is rejected with a reason, never raised. Pure functions and plain
values: the router agent (`bulkhead.agents.router_sync`) does the I/O.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import threading
import time
from dataclasses import dataclass

from bulkhead.errors import BulkheadError

# Longest record a router reads; a route is about 120 bytes, so anything near this is not a route.
MAX_RECORD_BYTES = 1024
# The names that reach HAProxy's configuration: letters, digits and a few separators, nothing a config
# line or a runtime API command could read as syntax.
APP_NAME = re.compile(r"[a-z][a-z0-9-]{0,29}")
HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,62}")
AZ_NAME = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9][a-z]")
PORTS = (1024, 65535)


def routes_prefix(region: str) -> str:
    """Under it, every route record of a region (with the trailing slash)."""
    return f"/bulkhead/{region}/routes/"


def apps_prefix(region: str) -> str:
    """Under it, each app's desired state, `/bulkhead/<region>/apps/<app>`: the apps routers accept."""
    return f"/bulkhead/{region}/apps/"


@dataclass(frozen=True)
class Route:
    """One app process a router may send traffic to."""

    app: str
    host: str
    address: str
    port: int
    az: str
    at: float | None = None

    @property
    def server(self) -> str:
        """Its server name in HAProxy: unique within the app's backend, and safe as a config word."""
        return f"{self.host}_{self.port}"

    def key(self, region: str) -> str:
        return f"{routes_prefix(region)}{self.app}/{self.host}:{self.port}"

    def value(self) -> str:
        return json.dumps({"app": self.app, "host": self.host, "address": self.address, "port": self.port,
                           "az": self.az, "at": self.at}, sort_keys=True)  # fmt: skip

    def same_target(self, other: Route) -> bool:
        """Whether HAProxy would need no change going from `other` to this (the time may differ)."""
        return (self.app, self.host, self.address, self.port) == (other.app, other.host, other.address, other.port)


class Rejected(BulkheadError):
    """A record a router will not apply; the message is the reason, short enough for a metric label."""


def _text(document: dict, name: str, pattern: re.Pattern[str]) -> str:
    value = document.get(name)
    if not isinstance(value, str):
        raise Rejected(f"{name} is {type(value).__name__}, not a string")
    if not pattern.fullmatch(value):
        raise Rejected(f"{name} {value[:40]!r} is not a valid name")
    return value


def parse(key: str, value: bytes | str, region: str, apps: frozenset[str] | set[str]) -> Route:
    """The route a record describes, or `Rejected` with why.

    `apps` are the region's declared apps; a record for any other app is rejected (it would add a backend
    nobody asked for). The key must be the one the record's own fields give, so that one host can never
    overwrite another's route by publishing under its key.
    """
    raw = value.encode() if isinstance(value, str) else value
    if len(raw) > MAX_RECORD_BYTES:
        raise Rejected(f"record of {len(raw)} bytes; at most {MAX_RECORD_BYTES}")
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise Rejected("not a JSON document (truncated or garbled)") from None
    if not isinstance(document, dict):
        raise Rejected(f"a JSON {type(document).__name__}, not an object")
    app = _text(document, "app", APP_NAME)
    if app not in apps:
        raise Rejected(f"unknown app {app!r}")
    host = _text(document, "host", HOST_NAME)
    az = _text(document, "az", AZ_NAME)
    if not az.startswith(region):
        raise Rejected(f"az {az!r} is not in {region}")
    port = document.get("port")
    if type(port) is not int:
        raise Rejected(f"port is {type(port).__name__}, not an integer")
    if not PORTS[0] <= port <= PORTS[1]:
        raise Rejected(f"port {port} is outside {PORTS[0]}-{PORTS[1]}")
    address = document.get("address")
    if not isinstance(address, str):
        raise Rejected(f"address is {type(address).__name__}, not a string")
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        raise Rejected(f"address {address[:40]!r} is not an IPv4 address") from None
    if not ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast:
        raise Rejected(f"address {address} is not a private unicast address")
    at = document.get("at")
    if at is not None and (type(at) not in (int, float) or not math.isfinite(at)):
        raise Rejected("at is not a finite number of seconds")
    route = Route(app, host, str(ip), port, az, float(at) if at is not None else None)
    if key != route.key(region):
        raise Rejected(f"key {key[:80]!r} is not the record's own ({route.key(region)})")
    return route


class Pending:
    """Changes the router has heard of and not yet applied, coalesced: the newest value per key.

    The watch thread `put`s; the agent `take`s the whole batch. However fast records change, this holds
    at most one value per key and at most `limit` keys, so a burst costs no more memory than the table
    it describes (the 2011 lesson: a bounded queue between control plane and routers). A key beyond the
    limit is refused, counted, and a full resync is asked for (`overflowed`).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._changes: dict[str, tuple[bytes | None, float]] = {}
        self._snapshot = False
        self.overflowed = 0

    def put(self, key: str, value: bytes | None, now: float | None = None) -> bool:
        """Record the newest value of `key` (None: deleted); False if the limit refused a new key."""
        with self._lock:
            if key not in self._changes and len(self._changes) >= self.limit:
                self.overflowed += 1
                return False
            first_heard = self._changes.get(key, (None, now or time.time()))[1]
            self._changes[key] = (value, first_heard)
            return True

    def replace(self, snapshot: dict[str, bytes]) -> None:
        """A full read of the registry: it is the whole truth, and keys absent from it are gone."""
        now = time.time()
        with self._lock:
            self._changes = {k: (v, now) for k, v in list(snapshot.items())[: self.limit]}
            self.overflowed += max(0, len(snapshot) - self.limit)
            self._snapshot = True

    def take(self) -> tuple[dict[str, bytes | None], bool, float | None]:
        """Every pending change, whether they are a full snapshot, and when the oldest was first heard."""
        with self._lock:
            changes, snapshot = self._changes, self._snapshot
            self._changes, self._snapshot = {}, False
        oldest = min((heard for _, heard in changes.values()), default=None)
        return {k: v for k, (v, _) in changes.items()}, snapshot, oldest

    def give_back(self, changes: dict[str, bytes | None], snapshot: bool, heard: float) -> None:
        """Return a batch that could not be applied; newer changes that came meanwhile win."""
        with self._lock:
            for key, value in changes.items():
                if key not in self._changes:
                    self._changes[key] = (value, heard)
            self._snapshot = self._snapshot or snapshot

    def oldest(self) -> float | None:
        """When the oldest change still pending was first heard (None: nothing pending)."""
        with self._lock:
            return min((heard for _, heard in self._changes.values()), default=None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._changes)


@dataclass
class Outcome:
    """What applying one batch to a table did: the new table, and each rejected key with its reason."""

    table: dict[str, Route]
    rejected: dict[str, str]
    applied: int


def merge(table: dict[str, Route], changes: dict[str, bytes | None], snapshot: bool, region: str,
          apps: frozenset[str] | set[str], limit: int) -> Outcome:  # fmt: skip
    """The table after a batch. A deletion removes its route; a valid record sets it; a rejected record
    leaves the route the key had (a bad update never takes a good route away). After a snapshot, keys it
    lacks are removed, except for a route whose key now holds a rejected record."""
    new = {} if snapshot else dict(table)
    rejected: dict[str, str] = {}
    applied = 0
    for key, value in changes.items():
        if value is None:
            if new.pop(key, None) is not None:
                applied += 1
            continue
        try:
            route = parse(key, value, region, apps)
        except Rejected as reason:
            rejected[key] = str(reason)
            if key in table:
                new[key] = table[key]
            continue
        if key not in new and len(new) >= limit:
            rejected[key] = f"the table is full ({limit} routes)"
            continue
        new[key] = route
        applied += 1
    return Outcome(new, rejected, applied)
