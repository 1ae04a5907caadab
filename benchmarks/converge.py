"""Benchmark: making and configuring 4 and 9 sandbox hosts, first run and a no-change re-run.

Run: .venv/bin/python benchmarks/converge.py
Hosts come from eu-west-1 in a fresh local cloud: 4 = two database members (etcd's quorum of three),
a dyno host and a router; 9 = every host (three of each tier). Baseline: the first run of 4 hosts (the
table gives each row's ratio to it).
"""

from __future__ import annotations

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


def _pick(specs, count: int):
    by_role = {role: [s for s in specs if s.role == role] for role in ("postgres", "dyno_host", "router")}
    primary = [s for s in by_role["postgres"] if s.tags.get("bulkhead:postgres") == "primary"]
    standby = [s for s in by_role["postgres"] if s.tags.get("bulkhead:postgres") == "standby"]
    if count == 4:
        return primary + standby[:1] + by_role["dyno_host"][:1] + by_role["router"][:1]
    return primary + standby + by_role["dyno_host"] + by_role["router"]


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="bulkhead-bench-converge-"))
    store = Store(base / "local")
    rows = []
    try:
        cloud.up([REGION], store, project_dir=PROJECT_DIR)
        specs = inventory.local_hosts(REGION, store, PROJECT_DIR)
        for count in (4, 9):
            sandboxes = Sandboxes(base / f"hosts-{count}")
            chosen = _pick(specs, count)
            started = time.perf_counter()
            sandboxes.up(chosen)
            made = time.perf_counter() - started
            path = inventory.write_inventory(chosen, sandboxes, store)
            extra = converge.extra_vars(chosen, sandboxes, store, PROJECT_DIR)
            for label in ("first run", "no-change re-run"):
                started = time.perf_counter()
                report = converge.converge(sandboxes, path, extra, PROJECT_DIR)
                seconds = time.perf_counter() - started
                if not report.succeeded:
                    raise SystemExit("; ".join(report.failures))
                rows.append(
                    (count, label, made if label == "first run" else 0.0, seconds, sum(report.changed.values()))
                )
            sandboxes.down()
    finally:
        server.stop(store.directory)
    baseline = rows[0][3]
    table = Table(title="sandbox hosts: make and configure (roles/site.yml)")
    for column in ("hosts", "run", "make sandboxes (s)", "configure (s)", "changed tasks", "ratio to 4-host first run"):
        table.add_column(column, justify="right")
    for count, label, made, seconds, changed in rows:
        table.add_row(str(count), label, f"{made:.1f}", f"{seconds:.1f}", str(changed), f"{seconds / baseline:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
