"""Benchmark: WAL archiving during a bulk load, one barman-cloud process per segment against the shipper.

Run: .venv/bin/python benchmarks/archive.py [--rows 3000000] [--max-parallel 4]

One `CREATE TABLE ... AS` writes about 560 MiB of WAL in a few seconds on a real PostgreSQL 15 that archives
into a moto S3 on this machine. Three ways of archiving, each on a fresh server:
- baseline: barman-cloud-wal-archive --gzip, one process per segment (what archive_command was);
- serial lz4: the same, with lz4 (to tell the compression's share from the shipper's);
- shipper: bulkhead's archive_command, the WAL shipper with --max-parallel.
For each, two runs of the load on fresh servers. Live, with archiving alongside: the load's WAL rate, the lag
when it ends, seconds until caught up (no finished segment waiting), and the CPU seconds archiving used
(archive_command's processes, reaped by PostgreSQL's archiver, plus the shipper's own). Backlog, with
archiving stalled during the load and then let go: archive throughput, the MiB/s at which it drains.
Goals: the shipper's throughput at least the load's WAL rate, caught up less than 3 s after the load.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import boto3
from psycopg import sql
from rich.console import Console
from rich.table import Table

from bulkhead.backup import shipper
from bulkhead.backup.archive_lag import archive_lag
from bulkhead.backup.local_postgres import PgServer, postgres_workdir
from bulkhead.backup.settings import Archive, _command, archive_command
from bulkhead.localcloud import server
from bulkhead.localcloud.aws import LOCAL_CREDENTIALS, local_environment

MIB = 2**20
TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int, children: bool) -> float:
    """utime+stime of a process (all its threads), or of its reaped children (cutime+cstime)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    first = 13 if children else 11  # fields after the name: state is 0; utime 11, stime 12, cutime 13, cstime 14
    return (int(fields[first]) + int(fields[first + 1])) / TICKS


def _archiver_pid(pg: PgServer) -> int:
    with pg.connect() as connection:
        return connection.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'archiver'").fetchone()[0]


def drain(label: str, command: str, workdir: Path, archive: Archive, rows: int) -> float:
    """MiB/s at which archiving empties a backlog: the load's WAL written with archiving stalled, then let go."""
    pg = PgServer(workdir / f"{label.replace(' ', '-')}-drain", server.free_port())
    pg.init(archive, settings={"archive_command": "/bin/false", "max_wal_size": "4GB", "checkpoint_timeout": "30min"})
    pg.start()
    try:
        with pg.connect() as connection:
            start_lsn = connection.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
            connection.execute(LOAD, (rows,))
            connection.execute("SELECT pg_switch_wal()")
            backlog = float(connection.execute(WRITTEN_SINCE, (start_lsn,)).fetchone()[0])
            connection.execute(sql.SQL("ALTER SYSTEM SET archive_command = {}").format(sql.Literal(command)))
            started = time.perf_counter()
            connection.execute("SELECT pg_reload_conf()")
        while archive_lag(pg.conninfo).lag_segments > 0:
            time.sleep(0.05)
        return backlog / MIB / (time.perf_counter() - started)
    finally:
        pg.stop()


WRITTEN_SINCE = "SELECT pg_current_wal_lsn() - %s::pg_lsn"
LOAD = ("CREATE TABLE bulk AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS payload, "
        "clock_timestamp() AS at FROM generate_series(1, %s) g")  # fmt: skip


def run_one(label: str, command: str, workdir: Path, archive: Archive, rows: int) -> dict:
    """The load with archiving running alongside, as on a live server."""
    pg = PgServer(workdir / label.replace(" ", "-"), server.free_port())
    pg.init(archive, settings={"archive_command": command, "max_wal_size": "4GB", "checkpoint_timeout": "30min"})
    pg.start()
    try:
        archiver = _archiver_pid(pg)
        with pg.connect() as connection:
            connection.execute("SELECT pg_switch_wal()")
        time.sleep(2)  # the first segment archived: a shipper (if any) is up, as on a server that runs all day
        before_cpu = _cpu_seconds(archiver, children=True)
        with pg.connect() as connection:
            start_lsn = connection.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
            started = time.perf_counter()
            connection.execute(LOAD, (rows,))
            load_s = time.perf_counter() - started
            wal_bytes = float(connection.execute(WRITTEN_SINCE, (start_lsn,)).fetchone()[0])
        at_end = archive_lag(pg.conninfo)
        shipper_cpu = 0.0
        while archive_lag(pg.conninfo).lag_segments > 0:
            pid = shipper.shipper_pid(shipper.Ledger(pg.data_dir, archive))
            if pid:
                shipper_cpu = max(shipper_cpu, _cpu_seconds(pid, children=False))
            time.sleep(0.05)
        caught_up_s = time.perf_counter() - started
        pid = shipper.shipper_pid(shipper.Ledger(pg.data_dir, archive))
        if pid:
            shipper_cpu = max(shipper_cpu, _cpu_seconds(pid, children=False))
        cpu = _cpu_seconds(archiver, children=True) - before_cpu + shipper_cpu
        return {
            "label": label,
            "wal_mib": wal_bytes / MIB,
            "load_s": load_s,
            "wal_rate": wal_bytes / MIB / load_s,
            "live_throughput": wal_bytes / MIB / caught_up_s,
            "lag_segments": at_end.lag_segments,
            "lag_seconds": at_end.lag_seconds,
            "after_load_s": caught_up_s - load_s,
            "cpu_s": cpu,
            "shipper_cpu_s": shipper_cpu,
        }
    finally:
        pg.stop()


def _way(label: str, archive: Archive, max_parallel: int) -> str:
    """The archive_command of one way of archiving."""
    if label == "shipper":
        return archive_command(archive, max_parallel)
    compression = ["--gzip"] if label == "baseline" else ["--lz4", "--compression-level", "low"]
    return _command(archive, "barman-cloud-wal-archive", *compression, archive.url, archive.server, "%p")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4_300_000, help="rows loaded (4.3 million: ~560 MiB of WAL)")
    parser.add_argument("--max-parallel", type=int, default=4)
    parser.add_argument("--only", choices=["baseline", "serial lz4", "shipper"], help="run one way only")
    args = parser.parse_args()
    console = Console(width=120)
    os.environ.update(local_environment())
    moto_dir = Path(tempfile.mkdtemp(prefix="bulkhead-bench-moto-"))
    info = server.start(moto_dir)
    workdir = postgres_workdir("bulkhead-bench-archive-")
    s3 = boto3.client("s3", endpoint_url=info.endpoint, region_name="us-east-1", **LOCAL_CREDENTIALS)
    results = []
    try:
        for label in ("baseline", "serial lz4", "shipper"):
            if args.only and label != args.only:
                continue
            bucket = f"bench-archive-{uuid.uuid4().hex[:8]}"
            s3.create_bucket(Bucket=bucket)
            archive = Archive(f"s3://{bucket}/pg", "pg-bench", info.endpoint)
            console.print(f"[bold]{label}[/]: loading {args.rows:,} rows")
            result = run_one(label, _way(label, archive, args.max_parallel), workdir, archive, args.rows)
            console.print(f"[bold]{label}[/]: the same load with archiving stalled, then draining the backlog")
            fresh = Archive(archive.url, f"{archive.server}-drain", archive.endpoint_url)  # the same WAL names again
            result["throughput"] = drain(label, _way(label, fresh, args.max_parallel), workdir, fresh, args.rows)
            results.append(result)
    finally:
        server.stop(moto_dir)
        shutil.rmtree(workdir, ignore_errors=True)
    table = Table(title=f"bulk load archiving ({args.rows:,} rows; shipper --max-parallel {args.max_parallel})")
    for column in ("way", "WAL MiB", "load s", "WAL rate MiB/s", "archive MiB/s (backlog)", "lag at end",
                   "caught up after", "archive CPU s", "vs baseline", "goal"):  # fmt: skip
        table.add_column(column, justify="right" if column != "way" else "left")
    baseline = next((r for r in results if r["label"] == "baseline"), None)
    for r in results:
        ratio = f"{r['throughput'] / baseline['throughput']:.2f}x" if baseline else "-"
        goal = "-"
        if r["label"] == "shipper":
            met = r["throughput"] >= r["wal_rate"] and r["after_load_s"] < 3
            goal = ("met" if met else "missed") + " (≥ WAL rate, < 3 s)"
        table.add_row(r["label"], f"{r['wal_mib']:.0f}", f"{r['load_s']:.1f}", f"{r['wal_rate']:.0f}",
                      f"{r['throughput']:.0f}", f"{r['lag_segments']} seg / {r['lag_seconds']:.1f} s",
                      f"{r['after_load_s']:.1f} s", f"{r['cpu_s']:.1f}", ratio, goal)  # fmt: skip
    console.print(table)


if __name__ == "__main__":
    main()
