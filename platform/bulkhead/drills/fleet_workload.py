"""The load on a region's shared databases during a drill: one process writing numbered rows to every
database in turn, and a reader of which rows each database has.

Both run on the region's bridge (where the apps' traffic would come from), as real clients over the
network. The writer logs one `DATABASE NUMBER EPOCH ok|fail` line per attempt; a row counts as
acknowledged once its INSERT committed. Run as `python -m bulkhead.drills.fleet_workload write|count
TARGETS.json` with the password in BULKHEAD_FLEET_PASSWORD.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bulkhead.drills.common import DrillError
from bulkhead.hosts.sandbox import Sandboxes, fabric_netns

PASSWORD_VARIABLE = "BULKHEAD_FLEET_PASSWORD"
RECONNECT_SECONDS = 1.0


@dataclass(frozen=True)
class Attempted:
    database: str
    n: int
    at: float
    ok: bool


def parse(log: Path) -> list[Attempted]:
    attempts = []
    for line in log.read_text().splitlines():
        parts = line.split()
        if len(parts) == 4:
            attempts.append(Attempted(parts[0], int(parts[1]), float(parts[2]), parts[3] == "ok"))
    return attempts


def acknowledged(attempts: list[Attempted]) -> dict[str, dict[int, float]]:
    """Per database, each acknowledged row and when it was acknowledged."""
    rows: dict[str, dict[int, float]] = {}
    for attempt in attempts:
        if attempt.ok:
            rows.setdefault(attempt.database, {})[attempt.n] = attempt.at
    return rows


def _conninfo(target: dict) -> str:
    # tcp_user_timeout: a statement to a host that lost power fails within seconds, not TCP's minutes.
    return (f"host={target['address']} port={target['port']} user=postgres dbname=postgres connect_timeout=2 "
            f"tcp_user_timeout=3000 password={os.environ[PASSWORD_VARIABLE]}")  # fmt: skip


def write(targets: list[dict], log: Path, stop: Path, pause: float = 0.02) -> None:
    """Insert rows 1, 2, 3, ... into each database in turn until `stop` exists."""
    import psycopg

    connections: dict[str, object] = {}
    retry_at: dict[str, float] = {}
    numbers = dict.fromkeys((t["name"] for t in targets), 0)
    # Line-buffered: a row is in the log as soon as its commit returned, whenever the writer is stopped.
    with log.open("a", buffering=1) as out:
        while not stop.exists():
            for target in targets:
                name = target["name"]
                if name not in connections:
                    if time.time() < retry_at.get(name, 0):
                        continue
                    try:
                        connections[name] = psycopg.connect(_conninfo(target), autocommit=True)
                    except psycopg.Error:
                        retry_at[name] = time.time() + RECONNECT_SECONDS
                        continue
                numbers[name] += 1
                try:
                    connections[name].execute("INSERT INTO rows (n) VALUES (%s)", (numbers[name],))
                    out.write(f"{name} {numbers[name]} {time.time():.6f} ok\n")
                except psycopg.Error:
                    out.write(f"{name} {numbers[name]} {time.time():.6f} fail\n")
                    connections.pop(name).close()
                    retry_at[name] = time.time() + RECONNECT_SECONDS
            time.sleep(pause)


def count(targets: list[dict]) -> dict[str, list[int] | None]:
    """Each database's rows (None: it did not answer)."""
    import psycopg

    found: dict[str, list[int] | None] = {}
    for target in targets:
        try:
            with psycopg.connect(_conninfo(target), autocommit=True) as connection:
                found[target["name"]] = [row[0] for row in connection.execute("SELECT n FROM rows ORDER BY n")]
        except psycopg.Error:
            found[target["name"]] = None
    return found


class FleetWriter:
    """The writer, started in a region's bridge namespace; `stop` ends it and returns every attempt."""

    def __init__(self, sandboxes: Sandboxes, region: str, targets: list[dict], directory: Path, password: str,
                 run: str) -> None:  # fmt: skip
        directory.mkdir(parents=True, exist_ok=True)
        self.log, self.stop_file = directory / f"{run}-fleet.log", directory / f"{run}-fleet-stop"
        spec = directory / f"{run}-fleet-targets.json"
        spec.write_text(json.dumps(targets))
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", fabric_netns(region, sandboxes.directory), sys.executable, "-m",
             "bulkhead.drills.fleet_workload", "write", str(spec), str(self.log), str(self.stop_file)],
            env={**os.environ, PASSWORD_VARIABLE: password}, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=(directory / f"{run}-fleet.err").open("ab"), start_new_session=True,
        )  # fmt: skip

    def acknowledged(self) -> dict[str, dict[int, float]]:
        return acknowledged(parse(self.log)) if self.log.exists() else {}

    def wait_for(self, rows_each: int, names: list[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            acked = self.acknowledged()
            if all(len(acked.get(name, {})) >= rows_each for name in names):
                return True
            if self.process.poll() is not None:
                raise DrillError(f"the fleet writer exited ({self.process.returncode}); see {self.log}")
            time.sleep(0.5)
        return False

    def stop(self, grace: float = 3) -> list[Attempted]:
        """Ask the writer to stop; one stuck on a dead host is killed after `grace` seconds (each row it
        logged had already committed)."""
        self.stop_file.touch()
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return parse(self.log) if self.log.exists() else []


def rows_in(sandboxes: Sandboxes, region: str, targets: list[dict], directory: Path, password: str,
            run: str) -> dict[str, list[int] | None]:  # fmt: skip
    """Which rows each database serves, read from the region's bridge."""
    spec = directory / f"{run}-count-{region}.json"
    spec.write_text(json.dumps(targets))
    result = subprocess.run(
        ["ip", "netns", "exec", fabric_netns(region, sandboxes.directory), sys.executable, "-m",
         "bulkhead.drills.fleet_workload", "count", str(spec)],
        env={**os.environ, PASSWORD_VARIABLE: password}, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise DrillError(f"could not read the databases' rows in {region}: {result.stderr.strip()[-300:]}")
    return json.loads(result.stdout)


if __name__ == "__main__":
    verb, spec = sys.argv[1], json.loads(Path(sys.argv[2]).read_text())
    if verb == "write":
        write(spec, Path(sys.argv[3]), Path(sys.argv[4]))
    else:
        print(json.dumps(count(spec)))
