"""The router agent: keeps HAProxy in step with the route records dyno hosts publish in the registry.

Two threads and one bounded buffer between them:
- the watcher reads every record under the region's routes prefix, then watches from that revision;
  each change goes into `Pending`, which keeps only the newest value per key, so a burst or a slow
  consumer never queues without bound. When the stream ends (a member lost, a compaction, silence), it
  reads everything again.
- the applier, every `interval` s, takes the whole batch, checks each record (`routes.merge`: a bad one
  is skipped and counted, and never takes a good route away), and applies the new table to HAProxy
  (runtime API, or a validated reload when a backend comes or goes).
If HAProxy will not take a table, nothing is changed: the router keeps serving its last good table,
read-only, raises its alert and tries again later. With the `router-read-only` rod on, it does not
apply the stream at all. Nothing here exits on a bad record, a lost registry or a refused change.

Its figures (`State`) are written every second to a JSON file that the metrics agent and the drills read.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bulkhead.agents import routes
from bulkhead.agents.haproxy import Haproxy, HaproxyError, backends, render
from bulkhead.agents.registry import Registry, RegistryError
from bulkhead.files import write_json
from bulkhead.ops.rods import Reader

log = logging.getLogger("bulkhead.agents.router_sync")
# Seconds a rejection keeps the alert raised.
ALERT_SECONDS = 300.0
# Rejections logged one by one per 10 s; beyond that they are counted only.
LOGGED_REJECTIONS = 10
# Seconds a removed route's server may finish its requests before they are cut.
DRAIN_SECONDS = 30.0
# Seconds without a change after which servers added at runtime are reloaded from the routes file.
CONSOLIDATE_SECONDS = 30.0


@dataclass
class State:
    """What the agent reports about itself."""

    mode: str = "starting"
    routes: int = 0
    apps: list[str] = field(default_factory=list)
    revision: int = 0
    records_seen: int = 0
    records_applied: int = 0
    records_rejected: int = 0
    recent_rejections: list[dict] = field(default_factory=list)
    alert: bool = False
    alert_reason: str = ""
    apply_failures: int = 0
    reloads: int = 0
    consolidations: int = 0
    runtime_changes: int = 0
    resyncs: int = 0
    overflowed: int = 0
    pending: int = 0
    oldest_pending_s: float = 0.0
    lag_s: float = 0.0
    rss_bytes: int = 0
    pid: int = 0
    started_at: float = 0.0
    updated_at: float = 0.0


def rss_bytes() -> int:
    """This process's resident memory."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class RouterSync:
    """One router's agent."""

    def __init__(self, registry: Registry, haproxy: Haproxy, region: str, state_path: Path,
                 rods: Reader | None = None, default_app: str = "sample", interval: float = 0.25,
                 max_routes: int = 20000, retry_seconds: float = 5.0) -> None:  # fmt: skip
        self.registry, self.haproxy, self.region = registry, haproxy, region
        self.state_path, self.rods, self.default_app = state_path, rods, default_app
        self.interval, self.max_routes, self.retry_seconds = interval, max_routes, retry_seconds
        self.pending = routes.Pending(max_routes)
        self.table: dict[str, routes.Route] = {}
        self.apps: frozenset[str] = frozenset()
        self.state = State(pid=os.getpid(), started_at=time.time())
        self._stop = threading.Event()
        self._resync = threading.Event()
        self._rejections: deque[tuple[float, str, str]] = deque(maxlen=20)
        self._last_rejection = 0.0
        self._logged: deque[float] = deque(maxlen=LOGGED_REJECTIONS)
        self._failure = ""
        self._retry_at = 0.0
        self._read_only_rod = False
        # `backend/server` -> when it began draining: removed routes finish their requests before deletion.
        self.draining: dict[str, float] = {}
        # The routes file HAProxy is known to run (None: not known yet, so the first table is applied whole).
        self._applied: str | None = None
        # Since when HAProxy has had servers added through the runtime API (0: none since the last reload),
        # and when the table last changed.
        self._runtime_since = 0.0
        self._last_change = 0.0

    # --- the watcher ---

    def watch(self) -> None:
        """Read everything, then follow changes; again whenever the stream ends. Never returns until stopped."""
        prefix = routes.routes_prefix(self.region)
        backoff = 0.5
        while not self._stop.is_set():
            try:
                snapshot, revision = self.registry.get_prefix(prefix)
                self._resync.clear()
                self.pending.replace(snapshot)
                self.state.revision = revision
                self.state.records_seen += len(snapshot)
                backoff = 0.5
                for event in self.registry.watch_prefix(prefix, revision + 1):
                    self.pending.put(event.key, event.value)
                    self.state.revision = event.revision
                    self.state.records_seen += 1
                    if self._stop.is_set() or self._resync.is_set():
                        break
            except RegistryError as error:
                log.warning("registry unreachable; serving the routes we have", extra={"error": str(error)[:300]})
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)  # short: a registry back must be followed within seconds
            except Exception:  # a bug here must not end the watcher: log it and read everything again
                log.exception("watcher failed; reading the registry again")
                self._stop.wait(backoff)
            self.state.resyncs += 1

    # --- the applier ---

    def refresh_apps(self) -> None:
        """The declared apps; when they change, records once refused as unknown are read again."""
        try:
            found, _ = self.registry.get_prefix(routes.apps_prefix(self.region))
        except RegistryError:
            return  # keep the apps we know
        apps = frozenset(k[len(routes.apps_prefix(self.region)) :] for k in found) | {self.default_app}
        apps = frozenset(a for a in apps if routes.APP_NAME.fullmatch(a))
        if apps != self.apps:
            log.info("declared apps changed", extra={"apps": sorted(apps)})
            self.apps = apps
            self._resync.set()

    def step(self, now: float | None = None) -> None:
        """One round of the applier."""
        now = now or time.time()
        read_only = self.rods.on("router-read-only") if self.rods else False
        if read_only != self._read_only_rod:
            log.warning("router-read-only rod is %s", "on" if read_only else "off")
            self._read_only_rod = read_only
            if not read_only:
                self._resync.set()  # whatever the stream said meanwhile, read it whole
        if read_only:
            self.state.mode = "read-only (rod router-read-only)"
            return
        if self._failure and now < self._retry_at:
            return
        changes, snapshot, oldest = self.pending.take()
        if not changes and not snapshot and not self._failure:
            self.state.mode = "following"
            return
        outcome = routes.merge(self.table, changes, snapshot, self.region, self.apps, self.max_routes)
        for key, reason in outcome.rejected.items():
            self._reject(key, reason, now)
        try:
            self._apply(outcome.table)
        except (HaproxyError, OSError) as error:
            self.pending.give_back(changes, snapshot, oldest or now)
            self.state.apply_failures += 1
            self._failure = str(error)[:300]
            self._retry_at = now + self.retry_seconds
            self.state.mode = f"read-only (cannot apply: {self._failure})"
            log.error("routes not applied; serving the last good table", extra={"error": self._failure})
            return
        self._failure = ""
        self.table = outcome.table
        self.state.records_applied += outcome.applied
        if not snapshot:  # a full read carries old records: their age is not the stream's lag
            lags = [now - r.at for k, r in outcome.table.items() if k in changes and r.at]
            self.state.lag_s = round(max(lags), 3) if lags else 0.0
        self.state.mode = "following"

    def _reject(self, key: str, reason: str, now: float) -> None:
        self.state.records_rejected += 1
        self._last_rejection = now
        self._rejections.append((now, key[:120], reason))
        self._logged.append(now)
        if len(self._logged) < LOGGED_REJECTIONS or now - self._logged[0] > 10:
            log.warning("route record rejected", extra={"key": key[:120], "reason": reason})

    def _apply(self, table: dict[str, routes.Route]) -> None:
        """Make HAProxy serve `table`; remember the routes file it then runs, so a failure is retried whole."""
        self._apply_changes(table)

    def _apply_changes(self, table: dict[str, routes.Route]) -> None:
        """Make HAProxy serve `table`: the routes file first (checked), then the runtime API or a reload."""
        apps = set(self.apps) | {self.default_app} | {r.app for r in table.values()}
        text = render(table.values(), apps, self.haproxy.settings)
        if text == self._applied:
            return
        self._last_change = time.time()
        self.haproxy.write_routes(text)
        if self.haproxy.backends() != backends(text):
            self._reload()  # a backend comes or goes: only a reload makes one
            self._applied = text
            return
        live = self.haproxy.servers()
        before = {(f"app_{r.app}", r.server): r for r in self.table.values()}
        after = {(f"app_{r.app}", r.server): r for r in table.values()}
        try:
            for (backend, server), route in after.items():
                present = server in live.get(backend, set())
                old = before.get((backend, server))
                draining = self.draining.pop(f"{backend}/{server}", None) is not None
                if present and old is not None and old.same_target(route) and not draining:
                    continue
                if present:
                    self.haproxy.readd(route)
                else:
                    self.haproxy.add(route)
                self.state.runtime_changes += 1
                self._runtime_since = self._runtime_since or time.time()
            for (backend, server), _ in before.items():
                if (backend, server) not in after and server in live.get(backend, set()):
                    self.haproxy.drain(f"{backend}/{server}")
                    self.draining[f"{backend}/{server}"] = time.time()
                    self.state.runtime_changes += 1
        except HaproxyError as error:
            log.warning("runtime change refused; reloading from the routes file", extra={"error": str(error)[:200]})
            self._reload()
        self._applied = text

    def reap(self, now: float) -> None:
        """Delete drained servers once idle; after DRAIN_SECONDS, cut what is still open and delete anyway."""
        for server, since in list(self.draining.items()):
            try:
                self.haproxy.delete(server, force=now - since > DRAIN_SECONDS)
            except HaproxyError:
                if now - since > DRAIN_SECONDS:
                    self.draining.pop(server)  # gone already (a reload), or never to be: stop trying
                continue
            self.draining.pop(server)

    def consolidate(self, now: float) -> None:
        """Reload once the table has been still for CONSOLIDATE_SECONDS after runtime changes: HAProxy 2.6
        serves servers added at runtime at about half the rate of those read from a file (benchmarks/
        routing.py), so the runtime API carries the churn and a quiet moment's reload restores the rate."""
        if self._runtime_since and now - self._last_change >= CONSOLIDATE_SECONDS and not self.draining:
            self._reload()
            self.state.consolidations += 1
            log.info("runtime changes consolidated by a reload")

    def _reload(self) -> None:
        self._runtime_since = 0.0
        self.haproxy.reload()
        self.draining.clear()  # the new workers start from the routes file, which has none of them
        self.state.reloads += 1

    # --- reporting and running ---

    def report(self, now: float | None = None) -> State:
        now = now or time.time()
        oldest = self.pending.oldest()
        state = self.state
        state.routes, state.apps, state.pending = len(self.table), sorted(self.apps), len(self.pending)
        state.oldest_pending_s = round(now - oldest, 3) if oldest else 0.0
        state.overflowed = self.pending.overflowed
        state.recent_rejections = [{"at": at, "key": key, "reason": reason} for at, key, reason in self._rejections]
        recent = now - self._last_rejection < ALERT_SECONDS if self._last_rejection else False
        state.alert = bool(recent or self._failure or self.pending.overflowed)
        if self._failure:
            state.alert_reason = "cannot apply routes: " + self._failure
        elif recent:
            state.alert_reason = "route records rejected"
        else:
            state.alert_reason = "route records beyond the table's bound" if self.pending.overflowed else ""
        state.rss_bytes, state.updated_at = rss_bytes(), now
        write_json(self.state_path, asdict(state))
        return state

    def run(self) -> None:
        """Until stopped: the watcher on its thread, the applier and the report here."""
        log.info("router agent started", extra={"region": self.region, "registry": self.registry.endpoints})
        threading.Thread(target=self.watch, name="watcher", daemon=True).start()
        next_apps = next_report = 0.0
        while not self._stop.is_set():
            now = time.time()
            try:
                if now >= next_apps:
                    self.refresh_apps()
                    next_apps = now + 2.0
                self.step(now)
                if self.draining and not self._failure:
                    self.reap(now)
                if not self._failure and not self._read_only_rod:
                    self.consolidate(now)
                if now >= next_report:
                    self.report(now)
                    next_report = now + 1.0
            except Exception:  # never exit: June 2012's routers died on what they did not expect
                log.exception("applier round failed; serving the last good table")
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
