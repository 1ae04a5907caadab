"""Benchmark: losing a region with 50 shared databases, and restoring 20 small databases serially and in parallel.

Run: .venv/bin/python benchmarks/region_loss.py [--databases 50] [--small 20] [--skip-drill]
- The drill: `bulkhead drill region-loss --databases 50` in a local cloud of its own (us-east-1 lost,
  us-west-2 takes over). Prints the time to the first paying database serving and to all of them, and
  rows lost, against the April 2011 anchor (up to 60 h for shared databases by hand) and the goal:
  all 50 within 10 minutes here, the first paying one within 60 s.
- The restore: N small databases (made and archived here, on 127.0.0.1) restored and serving, one at a
  time and two at a time (this machine's cores), through `bulkhead.backup.fleet`'s worker processes.
  Goal: a speed-up of at least 1.8x; the baseline is 1.49x, what one barman-cloud-restore process per
  database gave (benchmarks/backup_restore.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
from rich.console import Console
from rich.table import Table

from bulkhead.backup import fleet
from bulkhead.backup.local_postgres import PgServer, postgres_workdir
from bulkhead.localcloud import controller, server
from bulkhead.localcloud.aws import local_environment

ANCHOR_S = 60 * 3600
GOAL_ALL_S, GOAL_FIRST_S = 600, 60
GOAL_SPEEDUP, BASELINE_SPEEDUP = 1.8, 1.49
PROJECT = Path(__file__).resolve().parents[1]


def drill(databases: int, console: Console) -> dict:
    base = Path(tempfile.mkdtemp(prefix="bulkhead-bench-region-"))
    environment = {**os.environ, "BULKHEAD_LOCAL_DIR": str(base / "local"), "BULKHEAD_HOSTS_DIR": str(base / "hosts")}
    command = [sys.executable, "-m", "bulkhead.cli", "--project", str(PROJECT)]
    try:
        subprocess.run([*command, "local", "up", "--stacks", "us-east-1,us-west-2,global"], env=environment,
                       check=True, capture_output=True)  # fmt: skip
        console.print(f"drilling region-loss with {databases} databases ...")
        started = time.perf_counter()
        done = subprocess.run([*command, "drill", "region-loss", "--region", "us-east-1", "--databases",
                               str(databases), "--json"], env=environment, capture_output=True, text=True)  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"the drill failed: {done.stderr.strip().splitlines()[-1]}")
        report = json.loads(done.stdout)
        report["wall_s"] = time.perf_counter() - started
        return report
    finally:
        subprocess.run([*command, "hosts", "down"], env=environment, capture_output=True)
        controller.stop(base / "local")
        server.stop(base / "local")


def small_restores(count: int, console: Console) -> dict[int, float]:
    os.environ.update(local_environment())
    moto_dir = Path(tempfile.mkdtemp(prefix="bulkhead-bench-moto-"))
    info = server.start(moto_dir)
    workdir = postgres_workdir("bulkhead-bench-fleet-")
    try:
        boto3.client("s3", endpoint_url=info.endpoint, region_name="us-east-1").create_bucket(Bucket="bench-fleet")
        plan = workdir / "plan.yaml"
        plan.write_text("".join(f"- {{name: db{i:02d}, priority: {1 + i % 5}, paying: {str(i % 4 == 0).lower()}}}\n"
                                for i in range(count)))  # fmt: skip
        databases = fleet.read_plan(plan, base_port=server.free_port())
        environment = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
        console.print(f"making {count} small databases ...")
        made = fleet.create(databases, workdir / "source", "s3://bench-fleet/fleet", info.endpoint, "bench", 60,
                            environment, listen="127.0.0.1")  # fmt: skip
        for database in databases:
            source = PgServer(workdir / "source" / database.name, database.port)
            with source.connect() as connection:
                connection.execute("INSERT INTO rows (n) SELECT generate_series(1, 5000)")
            source.switch_and_wait_archived()
        fleet.stop_all(databases, workdir / "source", drain=False)
        del made
        timings = {}
        for concurrency in (1, 2):
            root = workdir / f"restored-{concurrency}"
            root.mkdir()
            shutil.chown(root, "postgres", "postgres")
            jobs = [fleet.FleetJob(d.name, d.priority, d.paying, d.port, str(root / d.name), "s3://bench-fleet/fleet",
                                   info.endpoint, None, None, 60, "127.0.0.1") for d in databases]  # fmt: skip
            console.print(f"restoring {count}, {concurrency} at a time ...")
            started = time.perf_counter()
            results = fleet.restore(jobs, concurrency, backup_after=False)
            timings[concurrency] = time.perf_counter() - started
            fleet.stop_all(databases, root, drain=False)
            failed = [r for r in results if r["error"]]
            if failed:
                raise SystemExit(f"restore failed: {failed[0]['name']}: {failed[0]['error']}")
        return timings
    finally:
        server.stop(moto_dir)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--databases", type=int, default=50)
    parser.add_argument("--small", type=int, default=20)
    parser.add_argument("--skip-drill", action="store_true", help="only the small restores")
    args = parser.parse_args()
    console = Console(width=max(120, Console().width))
    if not args.skip_drill:
        report = drill(args.databases, console)
        first, every = report["rto_s"]["first_paying"], report["rto_s"]["all"]
        table = Table(title=f"region loss, {args.databases} shared databases (drill took {report['wall_s']:.0f} s)")
        for column in ("figure", "here", "goal", "ratio to goal", "April 2011", "ratio to April 2011"):
            table.add_column(column, justify="right")
        first_ratio = f"{first / GOAL_FIRST_S:.2f}"
        table.add_row("first paying database serving (s)", f"{first:.1f}", f"{GOAL_FIRST_S}", first_ratio, "", "")
        table.add_row("all databases serving (s)", f"{every:.1f}", f"{GOAL_ALL_S}", f"{every / GOAL_ALL_S:.2f}",
                      f"{ANCHOR_S}", f"{every / ANCHOR_S:.6f}")  # fmt: skip
        lost, acked = sum(report["rows_lost"].values()), sum(report["rows_acknowledged"].values())
        table.add_row("rows lost / acknowledged", f"{lost} / {acked}", "", "", "", "")
        table.add_row("longest loss window (s)", f"{max(report['loss_window_s'].values()):.1f}",
                      f"<= {report['bound_s']:g}", "", "", "")  # fmt: skip
        table.add_row("priority inversions", str(report["priority_inversions"]), "0", "", "", "")
        console.print(table)
    timings = small_restores(args.small, console)
    speedup = timings[1] / timings[2]
    table = Table(title=f"{args.small} small databases restored and serving")
    for column in ("how", "seconds", "speed-up", "goal", "baseline (a process per database)"):
        table.add_column(column, justify="right")
    table.add_row("one at a time", f"{timings[1]:.1f}", "1.00", "", "")
    table.add_row("two at a time", f"{timings[2]:.1f}", f"{speedup:.2f}", f">= {GOAL_SPEEDUP}", f"{BASELINE_SPEEDUP}")
    console.print(table)


if __name__ == "__main__":
    main()
