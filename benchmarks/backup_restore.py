"""Benchmark: base backup and restore throughput against the moto S3, and restoring many databases.

Run: .venv/bin/python benchmarks/backup_restore.py [--scale 64] [--databases 20] [--concurrency 8]
- A pgbench database of about 1 GB (scale 64) is backed up and restored; the baseline for restore is
  downloading the same backup bytes from the same server with boto3 (what any restore must at least do).
  Goal: restore within 2x of that download.
- Many small databases: one small server's archive copied to N archives, then restored one by one and
  with bounded concurrency. Goal: concurrent at least 3x faster than serial.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import boto3
from rich.console import Console
from rich.table import Table

from bulkhead.backup import base_backup, copy, restore
from bulkhead.backup.local_postgres import PG_BIN, PgServer, as_postgres, postgres_workdir
from bulkhead.backup.settings import BACKUP_COMPRESSION, Archive
from bulkhead.backup.store import ArchiveStore
from bulkhead.localcloud import server
from bulkhead.localcloud.aws import local_environment

MIB = 2**20


def _primary(workdir: Path, archive: Archive, name: str) -> PgServer:
    pg = PgServer(workdir / name, server.free_port())
    pg.init(archive)
    pg.start()
    return pg


def _download_seconds(archive: Archive, backup_id: str, into: Path) -> tuple[float, int]:
    store = ArchiveStore(archive)
    objects = list(store.objects(f"base/{backup_id}/"))
    started = time.perf_counter()
    for item in objects:
        store.s3.download_file(archive.bucket, item.key, str(into / item.key.rsplit("/", 1)[-1]))
    return time.perf_counter() - started, sum(o.size for o in objects)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=64, help="pgbench scale (64 is about 1 GB)")
    parser.add_argument("--databases", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    console = Console()
    os.environ.update(local_environment())
    moto_dir = Path(tempfile.mkdtemp(prefix="bulkhead-bench-moto-"))
    info = server.start(moto_dir)
    workdir = postgres_workdir("bulkhead-bench-")
    s3 = boto3.client("s3", endpoint_url=info.endpoint, region_name="us-east-1")
    servers: list[PgServer] = []
    try:
        s3.create_bucket(Bucket="bench-big")
        big = Archive("s3://bench-big/pg", "pg-big", info.endpoint)
        pg = _primary(workdir, big, "big")
        servers.append(pg)
        console.print(f"loading pgbench scale {args.scale} ...")
        as_postgres(str(PG_BIN / "pgbench"), "-i", "-q", "-s", str(args.scale), "-h", "127.0.0.1", "-p", str(pg.port),
                     "postgres")  # fmt: skip
        with pg.connect() as connection:
            size = connection.execute("SELECT pg_database_size('postgres')").fetchone()[0]
        console.print(f"database: {size / MIB:.0f} MiB; backing up ...")
        started = time.perf_counter()
        made = base_backup.backup(big, "127.0.0.1", pg.port, "postgres", jobs=2, timeout=3600)
        backup_seconds = time.perf_counter() - started
        pg.switch_and_wait_archived()
        download_dir = Path(tempfile.mkdtemp(prefix="bulkhead-bench-dl-"))
        download_seconds, stored = _download_seconds(big, made.backup_id, download_dir)
        shutil.rmtree(download_dir)
        console.print("restoring ...")
        started = time.perf_counter()
        restore.restore(big, workdir / "big-restored")
        restore_seconds = time.perf_counter() - started

        stored_note = f"{stored / MIB:.0f} MiB stored, {BACKUP_COMPRESSION}"
        table = Table(title=f"base backup and restore of {size / MIB:.0f} MiB ({stored_note})")
        for column in ("step", "seconds", "MiB/s of database", "ratio to raw download"):
            table.add_column(column, justify="right")
        table.add_row(
            "backup (barman-cloud-backup -J 2)", f"{backup_seconds:.1f}", f"{size / MIB / backup_seconds:.1f}", ""
        )
        for label, seconds in (("raw download of the stored bytes", download_seconds),
                               ("restore (barman-cloud-restore)", restore_seconds)):  # fmt: skip
            ratio = f"{seconds / download_seconds:.2f}"
            table.add_row(label, f"{seconds:.1f}", f"{size / MIB / seconds:.1f}", ratio)
        console.print(table)

        s3.create_bucket(Bucket="bench-small")
        small = Archive("s3://bench-small/pg", "pg-small", info.endpoint)
        pg_small = _primary(workdir, small, "small")
        servers.append(pg_small)
        with pg_small.connect() as connection:
            connection.execute(
                "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS note FROM generate_series(1, 20000) g"
            )
        base_backup.backup(small, "127.0.0.1", pg_small.port, "postgres", jobs=1, timeout=600)
        pg_small.switch_and_wait_archived()
        copies = []
        for index in range(args.databases):
            s3.create_bucket(Bucket=f"bench-small-{index}")
            archive_copy = Archive(f"s3://bench-small-{index}/pg", "pg-small", info.endpoint)
            copy.copy_archive(small, archive_copy)
            copies.append(archive_copy)
        timings = {}
        for label, concurrency in (("one by one", 1), (f"{args.concurrency} at a time", args.concurrency)):
            targets = workdir / f"fleet-{concurrency}"
            jobs = [restore.RestoreJob(c, targets / f"db{i}") for i, c in enumerate(copies)]
            started = time.perf_counter()
            outcomes = restore.restore_fleet(jobs, concurrency=concurrency)
            timings[label] = time.perf_counter() - started
            failed = [o.error for o in outcomes if o.error]
            if failed:
                raise SystemExit(f"restore failed: {failed[0]}")
        fleet = Table(title=f"{args.databases} small databases restored")
        for column in ("how", "seconds", "speed-up over one by one"):
            fleet.add_column(column, justify="right")
        serial = timings["one by one"]
        for label, seconds in timings.items():
            fleet.add_row(label, f"{seconds:.1f}", f"{serial / seconds:.2f}")
        console.print(fleet)
    finally:
        for pg in servers:
            pg.stop()
        server.stop(moto_dir)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
