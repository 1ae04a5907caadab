"""Continuous backup and restore on a real PostgreSQL 15 against a moto S3."""

from __future__ import annotations

import datetime as dt
import shutil
import time

import pytest

from bulkhead.backup import base_backup, copy, restore
from bulkhead.backup.settings import Archive

pytestmark = pytest.mark.postgres


def _rows(pg) -> list[tuple[int, int]]:
    with pg.connect() as connection:
        return connection.execute("SELECT id, batch FROM ledger ORDER BY id").fetchall()


def _write_batch(pg, batch: int, count: int = 500) -> None:
    with pg.connect() as connection:
        connection.execute(
            "INSERT INTO ledger (batch, note) SELECT %s, md5(g::text) FROM generate_series(1, %s) g", (batch, count)
        )


def _primary_with_a_backup(servers, archive: Archive, archive_timeout: int = 60):
    """Given a primary archiving continuously, with a first batch of rows and a base backup of them."""
    pg = servers("primary")
    pg.init(archive, archive_timeout)
    pg.start()
    with pg.connect() as connection:
        connection.execute(
            "CREATE TABLE ledger (id bigserial PRIMARY KEY, batch int NOT NULL, note text, "
            "at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
    _write_batch(pg, 1)
    backup = base_backup.backup(archive, "127.0.0.1", pg.port, "postgres", jobs=2, timeout=300)
    return pg, backup


def _start_restored(servers, name: str, data_dir_owner_path) -> object:
    pg = servers(name)
    pg.data_dir = data_dir_owner_path
    pg.start()
    pg.wait_until_primary()
    return pg


def test_restore__ebs_loss_latest_restore_has_every_archived_row(servers, archive, workdir):
    # Given a primary with a backup and more rows committed and archived after it
    pg, backup = _primary_with_a_backup(servers, archive)
    _write_batch(pg, 2)
    pg.switch_and_wait_archived()
    expected = _rows(pg)
    # When its disk is lost: killed without warning, data directory gone
    pg.kill()
    shutil.rmtree(pg.data_dir)
    # Then a restore of the latest state into a new directory starts with every row
    target = workdir / "restored"
    chosen = restore.restore(archive, target)
    assert chosen.backup_id == backup.backup_id
    assert (target / "recovery.signal").exists()
    restored = _start_restored(servers, "restored", target)
    assert _rows(restored) == expected
    assert {batch for _, batch in expected} == {1, 2}


def test_restore__point_in_time_between_batches_has_exactly_the_first(servers, archive, workdir):
    pg, _ = _primary_with_a_backup(servers, archive)
    first = _rows(pg)
    time.sleep(1.0)
    with pg.connect() as connection:
        between = connection.execute("SELECT clock_timestamp()").fetchone()[0]
    time.sleep(1.0)
    _write_batch(pg, 2)
    pg.switch_and_wait_archived()
    pg.kill()
    target = workdir / "pitr"
    restore.restore(archive, target, target_time=between)
    restored = _start_restored(servers, "pitr", target)
    assert _rows(restored) == first


def test_restore__from_the_partner_copy_after_the_first_bucket_is_gone(servers, archive, s3, s3_endpoint, workdir):
    pg, _ = _primary_with_a_backup(servers, archive)
    _write_batch(pg, 2)
    pg.switch_and_wait_archived()
    expected = _rows(pg)
    pg.kill()
    s3.create_bucket(Bucket=archive.bucket + "-partner")
    partner = Archive(f"s3://{archive.bucket}-partner/pg", archive.server, s3_endpoint)
    first = copy.copy_archive(archive, partner)
    again = copy.copy_archive(archive, partner)
    assert first.copied > 0 and (again.copied, again.skipped) == (0, first.copied), "the copy is incremental"
    for version in s3.list_object_versions(Bucket=archive.bucket).get("Versions", []):
        s3.delete_object(Bucket=archive.bucket, Key=version["Key"], VersionId=version["VersionId"])
    s3.delete_bucket(Bucket=archive.bucket)
    target = workdir / "from-partner"
    restore.restore(partner, target)
    assert _rows(_start_restored(servers, "from-partner", target)) == expected


def test_rpo__rows_lost_on_a_sudden_kill_are_within_archive_timeout(servers, archive, workdir, record_property):
    archive_timeout = 5
    pg, _ = _primary_with_a_backup(servers, archive, archive_timeout=archive_timeout)
    committed: list[tuple[int, dt.datetime]] = []
    with pg.connect() as connection:
        # Three archive_timeout periods: segments ship on the timer at least twice before the kill.
        deadline = time.monotonic() + 3 * archive_timeout
        while time.monotonic() < deadline:
            committed.append(connection.execute("INSERT INTO ledger (batch) VALUES (9) RETURNING id, at").fetchone())
            time.sleep(0.02)
    pg.kill()
    target = workdir / "rpo"
    restore.restore(archive, target)
    restored = _start_restored(servers, "rpo", target)
    with restored.connect() as connection:
        kept = {row[0] for row in connection.execute("SELECT id FROM ledger WHERE batch = 9")}
    lost = [(i, at) for i, at in committed if i not in kept]
    assert kept <= {i for i, _ in committed}
    # The kill lands while rows are still in the unarchived segment: with none lost, nothing was measured.
    assert lost, "no row was lost: the kill did not cut into unarchived WAL, so this run measured no RPO"
    assert max(kept) < lost[0][0] and [i for i, _ in lost] == [i for i, _ in committed[-len(lost) :]], (
        "only the newest rows may be lost: a restore never skips a committed row and keeps a later one"
    )
    window = (committed[-1][1] - lost[0][1]).total_seconds()
    record_property("rpo_rows_lost", len(lost))
    record_property("rpo_seconds_lost", round(window, 2))
    print(
        f"RPO: {len(lost)} of {len(committed)} rows lost, the last {window:.2f} s (archive_timeout {archive_timeout} s)"
    )
    # Every row committed before the last archive_timeout (plus the archiver's own latency) survives.
    assert window <= archive_timeout + 3


def test_restore_fleet__failures_of_any_kind_stay_in_their_compartment(servers, archive, s3, s3_endpoint, workdir):
    pg, _ = _primary_with_a_backup(servers, archive)
    expected = _rows(pg)
    pg.switch_and_wait_archived()
    s3.create_bucket(Bucket=archive.bucket + "-empty")
    empty = Archive(f"s3://{archive.bucket}-empty/pg", "pg-free", s3_endpoint)
    # A target under a regular file: the restore fails with an OSError, not a BackupError.
    (workdir / "a-file").write_text("not a directory")
    jobs = [
        restore.RestoreJob(empty, workdir / "free", priority=200),
        restore.RestoreJob(archive, workdir / "a-file" / "db", priority=50),
        restore.RestoreJob(archive, workdir / "paying", priority=10),
    ]
    outcomes = {o.job.target.name: o for o in restore.restore_fleet(jobs, concurrency=2)}
    assert outcomes["free"].error == "the archive holds no finished backup; take one with `bulkhead db backup`"
    assert outcomes["db"].error.startswith("NotADirectoryError: ")
    assert outcomes["paying"].error is None
    assert _rows(_start_restored(servers, "paying", workdir / "paying")) == expected
