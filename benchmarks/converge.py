"""Benchmark: configuring the 9 sandbox hosts of a region, first run, a re-run with nothing changed, and a forced run.

Run: .venv/bin/python benchmarks/converge.py [--hosts 4|9]
Hosts come from eu-west-1 in a fresh local cloud: 9 = every host (three of each tier); 4 = two database
members (etcd's quorum of three), a dyno host and a router. Goals (issue 24): nothing changed < 10 s, forced
< 90 s; the first run has no goal and is the table's baseline. Then the slowest tasks of the forced run,
added up over the hosts they ran on (ansible-runner's task events).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bulkhead import project
from bulkhead.hosts import converge, inventory
from bulkhead.hosts.sandbox import Sandboxes
from bulkhead.localcloud import cloud, server
from bulkhead.localcloud.state import Store

PROJECT_DIR = project.find(start=Path(__file__).parent)
REGION = "eu-west-1"
GOALS = {"first run": None, "nothing changed": 10.0, "forced": 90.0}


def _pick(specs, count: int):
    by_role = {role: [s for s in specs if s.role == role] for role in ("postgres", "dyno_host", "router")}
    primary = [s for s in by_role["postgres"] if s.tags.get("bulkhead:postgres") == "primary"]
    standby = [s for s in by_role["postgres"] if s.tags.get("bulkhead:postgres") == "standby"]
    if count == 4:
        return primary + standby[:1] + by_role["dyno_host"][:1] + by_role["router"][:1]
    return primary + standby + by_role["dyno_host"] + by_role["router"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, choices=(4, 9), default=9)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bulkhead-bench-converge-"))
    store = Store(base / "local")
    sandboxes = Sandboxes(base / "hosts")
    rows, forced = [], None
    try:
        cloud.up([REGION], store, project_dir=PROJECT_DIR)
        chosen = _pick(inventory.local_hosts(REGION, store, PROJECT_DIR), args.hosts)
        sandboxes.up(chosen, s3_port=server.running(store.directory).port)
        path = inventory.write_inventory(chosen, sandboxes, store)
        extra = converge.extra_vars(chosen, sandboxes, store, PROJECT_DIR)
        for label in GOALS:
            started = time.perf_counter()
            report = converge.converge(sandboxes, path, extra, PROJECT_DIR, force=label == "forced")
            seconds = time.perf_counter() - started
            if not report.succeeded:
                raise SystemExit("; ".join(report.failures))
            rows.append((label, seconds, len(report.processed), len(report.unchanged), sum(report.changed.values())))
            forced = report if label == "forced" else forced
    finally:
        sandboxes.down()
        server.stop(store.directory)
    table = Table(title=f"{args.hosts} sandbox hosts: roles/site.yml")
    for column in ("run", "seconds", "hosts run", "hosts left", "changed tasks", "goal (s)", "ratio to goal",
                   "ratio to first run"):  # fmt: skip
        table.add_column(column, justify="right")
    for label, seconds, ran, left, changed in rows:
        goal = GOALS[label]
        table.add_row(label, f"{seconds:.1f}", str(ran), str(left), str(changed), f"{goal:.0f}" if goal else "-",
                      f"{seconds / goal:.2f}" if goal else "-", f"{seconds / rows[0][1]:.2f}")  # fmt: skip
    Console().print(table)
    slowest = Table(title="slowest tasks of the forced run (seconds over all hosts)")
    for column in ("task", "seconds"):
        slowest.add_column(column)
    for name, seconds in sorted(forced.task_seconds.items(), key=lambda item: -item[1])[:15]:
        slowest.add_row(name, f"{seconds:.1f}")
    Console().print(slowest)


if __name__ == "__main__":
    main()
