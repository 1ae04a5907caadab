"""Bad input to `bulkhead db`: one clear line, a non-zero exit, nothing half-written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from bulkhead.backup import base_backup, catalog, restore, wal
from bulkhead.backup.settings import Archive, BackupError
from bulkhead.backup.store import ArchiveStore
from bulkhead.localcloud import server

pytestmark = pytest.mark.postgres


def _primary_with_backup_and_wal(servers, archive, segments_after: int = 3):
    pg = servers("primary")
    pg.init(archive)
    pg.start()
    with pg.connect() as connection:
        connection.execute("CREATE TABLE t (id serial, note text)")
        connection.execute("INSERT INTO t (note) SELECT md5(g::text) FROM generate_series(1, 100) g")
    backup = base_backup.backup(archive, "127.0.0.1", pg.port, "postgres", jobs=2, timeout=300)
    for _ in range(segments_after):
        with pg.connect() as connection:
            connection.execute("INSERT INTO t (note) VALUES ('more')")
        pg.switch_and_wait_archived()
    return pg, backup


def test_restore__empty_archive_fails_clearly(archive, workdir):
    expected = r"^the archive holds no finished backup; take one with `bulkhead db backup`$"
    with pytest.raises(BackupError, match=expected):
        restore.restore(archive, workdir / "empty")
    assert not (workdir / "empty").exists()
    with pytest.raises(BackupError, match="no finished backup"):
        catalog.verify(archive)


def test_verify_and_restore__a_missing_segment_says_how_far_a_restore_reaches(servers, archive, s3, workdir):
    _, backup = _primary_with_backup_and_wal(servers, archive)
    assert catalog.verify(archive).ok
    segments = sorted(
        k
        for k in ArchiveStore(archive).wal_segments()
        if wal.position(k, backup.segment_size) > wal.position(backup.end_wal, backup.segment_size)
    )
    missing = segments[1]
    key = ArchiveStore(archive).wal_segments()[missing].key
    s3.delete_object(Bucket=archive.bucket, Key=key)
    problem = catalog.verify(archive).problem()
    assert problem == (
        f"WAL {missing} is missing ({len(segments) - 2} later segments are stranded); a restore from backup "
        f"{backup.backup_id} can reach the end of WAL {segments[0]}"
    )
    with pytest.raises(BackupError, match=f"^WAL {missing} is missing"):
        restore.restore(archive, workdir / "gap")
    assert not (workdir / "gap").exists() and not list(workdir.glob(".gap.restoring"))


def test_restore__a_corrupted_backup_fails_and_leaves_nothing(servers, archive, s3, workdir):
    _, backup = _primary_with_backup_and_wal(servers, archive, segments_after=1)
    store = ArchiveStore(archive)
    (data,) = [o.key for o in store.objects(f"base/{backup.backup_id}/") if ".tar" in o.key]
    s3.put_object(Bucket=archive.bucket, Key=data, Body=b"not a tar at all" * 100)
    with pytest.raises(BackupError, match=r"^barman-cloud-restore failed: "):
        restore.restore(archive, workdir / "corrupt")
    assert not (workdir / "corrupt").exists() and not list(workdir.glob(".corrupt.restoring"))


def test_db__an_endpoint_where_nothing_listens_fails_clearly(archive, workdir):
    nowhere = Archive(archive.url, archive.server, f"http://127.0.0.1:{server.free_port()}")
    with pytest.raises(
        BackupError, match=r"^cannot reach the S3 endpoint http://127\.0\.0\.1:\d+; check --endpoint-url"
    ):
        catalog.list_backups(nowhere)
    with pytest.raises(BackupError, match="cannot reach the S3 endpoint"):
        restore.restore(nowhere, workdir / "nowhere")
    assert not (workdir / "nowhere").exists()


def test_db__credentials_the_store_refuses_fail_clearly(tmp_path):
    # A moto server that checks every request's credentials against its IAM users (it has none).
    info = server.start(tmp_path / "strict", environment={"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    try:
        strict = Archive("s3://any-bucket/pg", "pg-test", info.endpoint)
        with pytest.raises(BackupError, match=r"refused the credentials \(403\); check the AWS access key and secret"):
            catalog.list_backups(strict)
    finally:
        server.stop(tmp_path / "strict")


def test_restore__a_non_empty_target_is_refused_and_left_alone(archive, workdir):
    target = workdir / "busy"
    target.mkdir()
    (target / "PG_VERSION").write_text("15\n")
    with pytest.raises(BackupError, match=rf"^{target} is not empty; restore into an empty directory or pass --force"):
        restore.restore(archive, target)
    assert (target / "PG_VERSION").read_text() == "15\n"


def test_cli__restore_into_a_non_empty_target_is_one_line_and_exit_1(archive, workdir):
    target = workdir / "busy"
    target.mkdir()
    (target / "keep").write_text("x")
    result = subprocess.run(
        [sys.executable, "-m", "bulkhead.cli", "db", "restore", "--archive", archive.url, "--server", archive.server,
         "--endpoint-url", archive.endpoint_url, "--to", str(target)],
        capture_output=True, text=True, env=os.environ, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"bulkhead: error: {target} is not empty; restore into an empty directory or pass --force to replace it"
    ]


def test_cli__ctrl_c_during_a_restore_exits_130_and_leaves_nothing(servers, archive, workdir):
    _primary_with_backup_and_wal(servers, archive, segments_after=1)
    target = workdir / "interrupted"
    staging = workdir / ".interrupted.restoring"
    process = subprocess.Popen(
        [sys.executable, "-m", "bulkhead.cli", "db", "restore", "--archive", archive.url, "--server", archive.server,
         "--endpoint-url", archive.endpoint_url, "--to", str(target)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ,
    )  # fmt: skip
    try:
        # When: Ctrl-C arrives while barman-cloud-restore is laying files down (bounded at 60 s)
        deadline = time.monotonic() + 60
        while not staging.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert staging.exists(), "the restore never started writing"
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    # Then: exit 130, one line, and neither the target nor the staging directory is left
    assert process.returncode == 130
    assert stderr.strip().splitlines() == [
        "WARNING bulkhead.db: restore stopped; nothing was left behind",
        "bulkhead: interrupted",
    ]
    assert not target.exists() and not staging.exists()
