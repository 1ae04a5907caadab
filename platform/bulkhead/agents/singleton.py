"""Singleton fencing: run a process only while holding the region's lease for it (seed 002's "phantom"
dynos ran a singleton twice).

`bulkhead agent singleton --name N -- COMMAND...` takes a lease of `ttl` s in the registry, creates the
singleton's key under it (only if absent: whoever holds it blocks everyone else), and starts COMMAND with
FENCING_TOKEN set to the key's create revision, a number that only grows, so every holder's token is
larger than the one before. It renews the lease every ttl/3 s. If it cannot, it stops COMMAND once
`ttl - margin` s have passed since it *sent* the last renewal that succeeded: the registry expires the
lease no earlier than `ttl` s after it received that request, so the old copy has always stopped before
another can take the key. The decision is `must_stop`; the rest is I/O.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time

from bulkhead.agents.registry import Registry, RegistryError
from bulkhead.errors import UsageError

log = logging.getLogger("bulkhead.agents.singleton")


def singleton_key(region: str, name: str) -> str:
    return f"/bulkhead/{region}/singletons/{name}"


def must_stop(now: float, last_renewal_sent: float, ttl: float, margin: float) -> bool:
    """Whether the holder must stop its process now: its lease may expire at `last_renewal_sent + ttl`."""
    return now >= last_renewal_sent + ttl - margin


class Singleton:
    """One singleton's holder on one host."""

    def __init__(self, registry: Registry, region: str, name: str, command: list[str], ttl: int = 10,
                 margin: float = 3.0, holder: str | None = None) -> None:  # fmt: skip
        if margin >= ttl:
            raise UsageError(f"--margin {margin} must be shorter than --ttl {ttl}")
        self.registry, self.key, self.command = registry, singleton_key(region, name), command
        self.ttl, self.margin = ttl, margin
        self.holder = f"{holder or socket.gethostname()}:{os.getpid()}"
        self._stop = threading.Event()

    def acquire(self) -> tuple[int, int, float]:
        """Wait until this holder has the key: its lease, its fencing token, when the lease was granted."""
        while not self._stop.is_set():
            try:
                sent = time.time()
                lease = self.registry.grant(self.ttl)
                if self.registry.create(self.key, json.dumps({"holder": self.holder}), lease=lease):
                    token = self.registry.create_revision(self.key) or 0
                    return lease, token, sent
                self.registry.revoke(lease)
            except RegistryError as error:
                log.warning("registry unreachable while waiting for the singleton", extra={"error": str(error)[:200]})
            self._stop.wait(1.0)
        raise SystemExit(0)

    def run(self) -> int:
        lease, token, last_ok = self.acquire()
        log.warning("singleton acquired", extra={"key": self.key, "token": token, "holder": self.holder})
        child = subprocess.Popen(self.command, env={**os.environ, "FENCING_TOKEN": str(token)})
        renewed = [last_ok]

        def renew() -> None:
            while not self._stop.is_set() and child.poll() is None:
                sent = time.time()
                try:
                    if self.registry.keep_alive(lease) > 0:
                        renewed[0] = sent
                    else:
                        log.error("singleton lease expired", extra={"token": token})
                except RegistryError as error:
                    log.warning("singleton lease not renewed", extra={"token": token, "error": str(error)[:200]})
                self._stop.wait(self.ttl / 3)

        threading.Thread(target=renew, daemon=True).start()
        while child.poll() is None:
            if self._stop.is_set() or must_stop(time.time(), renewed[0], self.ttl, self.margin):
                reason = "asked to stop" if self._stop.is_set() else "lease not renewed in time"
                self._end(child)
                log.error("singleton stopped", extra={"token": token, "reason": reason, "stopped_at": time.time()})
                if not self._stop.is_set():
                    return 3
                break
            time.sleep(0.2)
        with contextlib.suppress(RegistryError):
            self.registry.revoke(lease)  # let the next holder in at once
        return child.returncode or 0

    @staticmethod
    def _end(child: subprocess.Popen) -> None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()

    def stop(self) -> None:
        self._stop.set()
