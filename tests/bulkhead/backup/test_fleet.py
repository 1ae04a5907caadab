"""Shared databases: made with their archives, then restored elsewhere from the archive alone, paying
customers first, through barman's library in a few worker processes."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import psycopg
import pytest

from bulkhead.backup import fleet
from bulkhead.backup.local_postgres import PgServer
from bulkhead.backup.settings import BackupError

pytestmark = pytest.mark.postgres


def _free_ports(count: int) -> int:
    """The first of `count` consecutive free ports on 127.0.0.1."""
    for base in range(21000, 40000, count + 7):
        ok = True
        for port in range(base, base + count):
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port range")


def _rows(port: int) -> int:
    with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True) as connection:
        return connection.execute("SELECT count(*) FROM rows").fetchone()[0]


def test_read_plan__refuses_a_bad_entry_naming_it(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("- {name: a, priority: 1}\n- {name: b, priority: 0}\n")
    with pytest.raises(BackupError, match=r"entry 2 \(b\): priority must be a whole number from 1"):
        fleet.read_plan(plan)
    plan.write_text("- {name: a, priority: 1}\n- {name: a, priority: 2}\n")
    with pytest.raises(BackupError, match="entry 2: name must be a unique word"):
        fleet.read_plan(plan)
    plan.write_text("- {name: a, priority: 3, paying: true}\n- {name: b}\n")
    assert fleet.read_plan(plan, base_port=7000) == [fleet.Database("a", 3, True, 7000),
                                                     fleet.Database("b", 100, False, 7001)]  # fmt: skip


def test_restore__every_database_comes_back_elsewhere_paying_first_with_every_archived_row(s3, s3_endpoint, workdir):
    source_bucket, target_bucket = (f"fleet-{uuid.uuid4().hex[:10]}" for _ in range(2))
    for bucket in (source_bucket, target_bucket):
        s3.create_bucket(Bucket=bucket)
    plan = workdir / "plan.yaml"
    names = [("free-a", 5, False), ("paying-b", 9, True), ("free-c", 1, False), ("paying-d", 2, True)]
    plan.write_text("".join(f"- {{name: {n}, priority: {p}, paying: {str(y).lower()}}}\n" for n, p, y in names))
    databases = fleet.read_plan(plan, base_port=_free_ports(4))
    source_root, target_root = workdir / "source", workdir / "target"
    environment = {k: v for k, v in __import__("os").environ.items() if k.startswith("AWS_")}
    made = fleet.create(databases, source_root, f"s3://{source_bucket}/fleet", s3_endpoint, "secret", 60,
                        environment, listen="127.0.0.1")  # fmt: skip
    try:
        assert [m["created"] for m in made] == [True] * 4
        expected = {}
        for index, database in enumerate(databases):
            server = PgServer(source_root / database.name, database.port)
            with server.connect() as connection:
                connection.execute("INSERT INTO rows (n) SELECT generate_series(1, %s)", (10 * (index + 1),))
            server.switch_and_wait_archived()
            expected[database.name] = 10 * (index + 1)
        # Running again changes nothing: every database already serves.
        again = fleet.create(databases, source_root, f"s3://{source_bucket}/fleet", s3_endpoint, "secret", 60,
                             environment, listen="127.0.0.1")  # fmt: skip
        assert [m["created"] for m in again] == [False] * 4
    finally:
        fleet.stop_all(databases, source_root)
    jobs = [fleet.FleetJob(d.name, d.priority, d.paying, d.port, str(target_root / d.name), f"s3://{source_bucket}/fleet",
                           s3_endpoint, f"s3://{target_bucket}/fleet", s3_endpoint, 60, "127.0.0.1")
            for d in databases]  # fmt: skip
    target_root.mkdir()
    __import__("shutil").chown(target_root, "postgres", "postgres")
    events = []
    try:
        results = fleet.restore(jobs, concurrency=2, on_event=lambda kind, what: events.append((kind, what["name"])))
        assert [r["error"] for r in results] == [None] * 4
        assert [r["name"] for r in results] == ["paying-d", "paying-b", "free-c", "free-a"]
        assert [name for kind, name in events if kind == "started"] == ["paying-d", "paying-b", "free-c", "free-a"]
        for database in databases:
            assert _rows(database.port) == expected[database.name], database.name
            with psycopg.connect(f"host=127.0.0.1 port={database.port} user=postgres dbname=postgres") as restored:
                # Promoted onto a timeline of its own: its WAL never shares names with the lost copy's.
                assert restored.execute("SELECT timeline_id FROM pg_control_checkpoint()").fetchone()[0] == 2
        # Each restored database is protected where it now lives: a base backup in the new archive.
        assert all(r["new_backup_id"] for r in results)
        listed = s3.list_objects_v2(Bucket=target_bucket, Prefix="fleet/paying-d/base/")
        assert listed.get("KeyCount", 0) > 0
        assert not list(Path(target_root).glob(".*.restoring"))
    finally:
        fleet.stop_all(databases, target_root)


def test_restore__a_database_without_a_backup_fails_alone_and_leaves_nothing(s3, s3_endpoint, workdir):
    bucket = f"fleet-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    port = _free_ports(1)
    job = fleet.FleetJob("ghost", 1, True, port, str(workdir / "ghost"), f"s3://{bucket}/fleet", s3_endpoint, None,
                         None, 60, "127.0.0.1")  # fmt: skip
    [result] = fleet.restore([job], concurrency=1)
    assert "ghost: no finished base backup" in result["error"]
    assert not (workdir / "ghost").exists() and not (workdir / ".ghost.restoring").exists()


def test_wal_to_replay__from_the_backup_on_its_timeline_or_on_every_later_one():
    segments = ["000000010000000000000003", "000000010000000000000004", "000000010000000000000005",
                "000000020000000000000005", "000000020000000000000006", "000000010000000000000002"]  # fmt: skip
    assert fleet.wal_to_replay(segments, "000000010000000000000003", one_timeline=True) == [
        "000000010000000000000003", "000000010000000000000004", "000000010000000000000005"]  # fmt: skip
    assert fleet.wal_to_replay(segments, "000000010000000000000004", one_timeline=False) == [
        "000000010000000000000004", "000000010000000000000005", "000000020000000000000005",
        "000000020000000000000006"]  # fmt: skip


def test_restore__a_copy_at_a_point_in_time_serves_beside_the_live_one(s3, s3_endpoint, workdir):
    import datetime as dt
    import time

    bucket = f"fleet-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    plan = workdir / "plan.yaml"
    plan.write_text("- {name: customer, priority: 1, paying: true}\n")
    base = _free_ports(2)
    [database] = fleet.read_plan(plan, base_port=base)
    root = workdir / "live"
    environment = {k: v for k, v in __import__("os").environ.items() if k.startswith("AWS_")}
    fleet.create([database], root, f"s3://{bucket}/fleet", s3_endpoint, "secret", 60, environment, listen="127.0.0.1")
    live = PgServer(root / "customer", database.port)
    try:
        with live.connect() as connection:
            connection.execute("INSERT INTO rows (n) SELECT generate_series(1, 100)")
            time.sleep(1.5)
            before_migration = dt.datetime.now(dt.UTC).isoformat()
            time.sleep(1.5)
            connection.execute("DELETE FROM rows WHERE n > 10")  # the bad migration
        live.switch_and_wait_archived()
        job = fleet.FleetJob("customer", 1, True, base + 1, str(root / "customer-copy"), f"s3://{bucket}/fleet",
                             s3_endpoint, None, None, 60, "127.0.0.1", before_migration)  # fmt: skip
        [result] = fleet.restore([job], concurrency=1)
        assert result["error"] is None
        assert _rows(base + 1) == 100  # as it was before the migration
        assert _rows(database.port) == 10  # the live one, untouched
        with psycopg.connect(f"host=127.0.0.1 port={base + 1} user=postgres dbname=postgres") as copy:
            assert copy.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
            assert copy.execute("SHOW archive_mode").fetchone()[0] == "off"
    finally:
        fleet.stop_all([database], root, drain=False)
        PgServer(root / "customer-copy", base + 1).stop()
