"""The load a drill runs through its fault: a writer committing numbered rows through a dyno host's
127.0.0.1:5432, and a prober sending HTTP through routers. Both are real processes inside the region
(the writer on the dyno host, the prober on the VPC's bridge, where the load balancer would be), and
both log one `NUMBER EPOCH ok|fail` line per attempt.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from bulkhead.drills.common import DrillError
from bulkhead.drills.report import Attempt, parse_attempts
from bulkhead.hosts.sandbox import HostSpec, Sandboxes, fabric_netns

# Every attempt is its own psql: a connection through HAProxy, one INSERT, autocommit. A failed attempt
# (no leader yet, a read-only server) is logged and the next number tried after a short pause.
WRITER = r"""
export PGCONNECT_TIMEOUT=2
psql "$URL" -qc "CREATE TABLE IF NOT EXISTS drill_rows (run text, n bigint, at timestamptz DEFAULT now(),
  PRIMARY KEY (run, n))" >/dev/null 2>&1
n=0
while [ ! -e "$STOP" ]; do
  n=$((n + 1))
  if psql "$URL" -qtAc "SET statement_timeout = '10s'; INSERT INTO drill_rows (run, n) VALUES ('$RUN', $n)" \
      >/dev/null 2>&1; then
    echo "$n $(date +%s.%N) ok"
  else
    echo "$n $(date +%s.%N) fail"
    sleep 0.2
  fi
  sleep "$PAUSE"
done >> "$LOG"
"""
PROBER = r"""
n=0
while [ ! -e "$STOP" ]; do
  for target in $TARGETS; do
    n=$((n + 1))
    if curl -sfk -o /dev/null --max-time 2 "https://$target/"; then
      echo "$n $(date +%s.%N) ok"
    else
      echo "$n $(date +%s.%N) fail"
    fi
  done
  sleep "$PAUSE"
done >> "$LOG"
"""


SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Workload:
    """One background loop and its log; `stop` ends it and returns every attempt."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path, stop: Path) -> None:
        self.log, self.stop_file = log, stop
        for path in (log, stop):
            path.unlink(missing_ok=True)
        log.touch()
        self.process = subprocess.Popen(
            command, env={**env, "PATH": SANDBOX_PATH, "LANG": "C.UTF-8"},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip

    def attempts(self) -> list[Attempt]:
        return parse_attempts(self.log.read_text())

    def wait_for(self, successes: int, after: float = 0.0, timeout: float = 60) -> bool:
        """Wait until `successes` attempts that finished after `after` have worked."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(1 for a in self.attempts() if a.ok and a.at > after) >= successes:
                return True
            if self.process.poll() is not None:
                return False
            time.sleep(0.2)
        return False

    def stop(self) -> list[Attempt]:
        self.stop_file.touch()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)
        return self.attempts()


def writer(sandboxes: Sandboxes, host: HostSpec, url: str, run: str, pause: float = 0.05) -> Workload:
    """Commit rows 1, 2, 3, ... of `run` into drill_rows through the host's local endpoint."""
    root = sandboxes.root(host)
    log, stop = f"/tmp/drill-{run}-writes.log", f"/tmp/drill-{run}-stop"
    command = ["ip", "netns", "exec", host.netns, "chroot", str(root), "/bin/sh", "-c", WRITER]
    env = {"URL": url, "RUN": run, "LOG": log, "STOP": stop, "PAUSE": str(pause)}
    return Workload(command, env, root / log.lstrip("/"), root / stop.lstrip("/"))


def prober(sandboxes: Sandboxes, region: str, routers: list[HostSpec], directory: Path, run: str,
           pause: float = 0.1) -> Workload:  # fmt: skip
    """GET / through each router in turn, from the region's bridge (where the load balancer stands)."""
    directory.mkdir(parents=True, exist_ok=True)
    log, stop = directory / f"{run}-http.log", directory / f"{run}-http-stop"
    command = ["ip", "netns", "exec", fabric_netns(region, sandboxes.directory), "/bin/sh", "-c", PROBER]
    env = {"TARGETS": " ".join(r.address for r in routers), "LOG": str(log), "STOP": str(stop), "PAUSE": str(pause)}
    return Workload(command, env, log, stop)


def rows_present(sandboxes: Sandboxes, host: HostSpec, url: str, run: str) -> set[int]:
    """The row numbers of `run` the current primary has, read through the host's local endpoint."""
    result = sandboxes.run(host, "psql", url, "-tAc", f"SELECT n FROM drill_rows WHERE run = '{run}'", timeout=30)
    if result.returncode != 0:
        raise DrillError(f"could not read the drill's rows on {host.name}: {result.stderr.strip()}")
    return {int(line) for line in result.stdout.split()}
