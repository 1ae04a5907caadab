"""Parallel WAL archiving on a real PostgreSQL 15 into a moto S3: bulk loads, a killed shipper, S3 cut off,
bad .ready entries and two archivers racing. Segments are 1 MiB so that a load of 40 segments is quick."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from bulkhead.backup import base_backup, shipper
from bulkhead.backup.archive_lag import archive_lag
from bulkhead.backup.settings import Archive, barman_bin, serial_archive_command, tool_environment
from bulkhead.backup.store import decompress_wal
from bulkhead.localcloud.aws import local_environment
from bulkhead.localcloud.fronts import RegionFront

pytestmark = pytest.mark.postgres
SEGMENT = 2**20
WAL_1MIB = ("--wal-segsize=1",)


def _server(servers, archive: Archive, name: str = "primary", **settings: str):
    pg = servers(name)
    pg.init(archive, archive_timeout=60, initdb_args=WAL_1MIB, settings={"wal_keep_size": "512MB", **settings})
    pg.start()
    with pg.connect() as connection:
        connection.execute("CREATE TABLE ledger (id bigint PRIMARY KEY, note text NOT NULL)")
    return pg


def _load(pg, first: int, count: int) -> None:
    """One statement writing about count/10,000 MiB of WAL."""
    with pg.connect() as connection:
        connection.execute(
            "INSERT INTO ledger SELECT g, repeat(md5(g::text), 3) FROM generate_series(%s::bigint, %s::bigint) g",
            (first, first + count - 1),
        )


def _wait_caught_up(pg, timeout: float = 60) -> None:
    """Close the current segment and wait until no finished segment waits. The WAL record written first makes
    the switch finish a segment, which wakes PostgreSQL's archiver even after failures put it to sleep."""
    with pg.connect() as connection:
        connection.execute("SELECT pg_logical_emit_message(false, 'bulkhead', 'caught up?')")
        connection.execute("SELECT pg_switch_wal()")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if archive_lag(pg.conninfo).lag_segments == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"the archive did not catch up in {timeout} s: {archive_lag(pg.conninfo)}")


def _archived(s3, archive: Archive) -> dict[str, dict]:
    """Every WAL object of the archive: name (as barman stores it) -> its listing entry."""
    prefix = f"{archive.prefix}wals/"
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=archive.bucket, Prefix=prefix)
    return {item["Key"].rsplit("/", 1)[1]: item for page in pages for item in page.get("Contents", [])}


def _content(s3, archive: Archive, key: str) -> bytes:
    return decompress_wal(key, s3.get_object(Bucket=archive.bucket, Key=key)["Body"].read())


def _restore_rows(restored, archive: Archive) -> int:
    with restored(archive).connect() as connection:
        return connection.execute("SELECT count(*) FROM ledger").fetchone()[0]


def _ledger(pg, archive: Archive) -> shipper.Ledger:
    return shipper.Ledger(pg.data_dir, archive)


def _markers_confirmed(s3, pg, archive: Archive) -> None:
    """Every marker names an object S3 holds with the recorded ETag and size: nothing marked wrongly."""
    ledger = _ledger(pg, archive)
    for entry in ledger.directory.iterdir():
        if entry.name.startswith(".") or entry.name.endswith((".failed", ".lock")):
            continue
        marker = ledger.marker(entry.name)
        found = s3.head_object(Bucket=archive.bucket, Key=marker["key"])
        assert (found["ETag"], found["ContentLength"]) == (marker["etag"], marker["size"]), entry.name


def test_bulk_load__every_segment_lands_and_a_restore_has_every_row(servers, archive, s3, restored):
    # Given a server archiving through the shipper, with a base backup
    pg = _server(servers, archive)
    base_backup.backup(archive, "127.0.0.1", pg.port, "postgres", jobs=2, timeout=300)
    with pg.connect() as connection:
        start = connection.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    # When one statement writes well over 35 segments
    _load(pg, 1, 200_000)
    with pg.connect() as connection:
        written = connection.execute("SELECT pg_current_wal_lsn() - %s::pg_lsn", (start,)).fetchone()[0]
    _wait_caught_up(pg)
    # Then every segment of the load is in the archive, as PostgreSQL itself saw it archived
    assert written / SEGMENT >= 35
    archived = _archived(s3, archive)
    with pg.connect() as connection:
        last = connection.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()[0]
        names = connection.execute("SELECT name FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$' AND name <= %s",
                                   (last,)).fetchall()  # fmt: skip
    assert len(names) >= 35
    assert {f"{n}.lz4" for (n,) in names} <= set(archived)
    _markers_confirmed(s3, pg, archive)
    # And a restore to the end of the archive has every row
    pg.kill()
    assert _restore_rows(restored, archive) == 200_000


def test_sigkill__the_shipper_killed_mid_batch_loses_nothing(servers, archive, s3, restored):
    pg = _server(servers, archive)
    base_backup.backup(archive, "127.0.0.1", pg.port, "postgres", jobs=2, timeout=300)
    kills: list[int] = []
    loading = threading.Thread(target=_load, args=(pg, 1, 200_000))
    loading.start()
    # When the shipper is SIGKILLed while segments are waiting, twice
    deadline = time.monotonic() + 60
    while len(kills) < 2 and time.monotonic() < deadline:
        pid = shipper.shipper_pid(_ledger(pg, archive))
        if pid and shipper.ready_segments(pg.data_dir):
            os.kill(pid, signal.SIGKILL)
            kills.append(len(shipper.ready_segments(pg.data_dir)))
            time.sleep(0.3)
        time.sleep(0.01)
    loading.join()
    assert len(kills) == 2 and all(kills), f"the shipper was not caught mid-batch: {kills}"
    # Then PostgreSQL's next call starts another, the batch completes, and no marker lies
    _wait_caught_up(pg)
    _markers_confirmed(s3, pg, archive)
    pg.kill()
    assert _restore_rows(restored, archive) == 200_000


def test_parallel_and_serial__write_the_same_objects(servers, archive, s3, s3_endpoint):
    # Given segments archived by the shipper
    pg = _server(servers, archive)
    _load(pg, 1, 40_000)
    _wait_caught_up(pg)
    parallel = {name: item for name, item in _archived(s3, archive).items() if ".history" not in name}
    assert len(parallel) >= 6
    # When the same files are archived one at a time by barman-cloud-wal-archive into another prefix
    serial = Archive(archive.url.replace("/pg", "/serial"), archive.server, s3_endpoint)
    for name in parallel:
        wal = name.removesuffix(".lz4")
        command = serial_archive_command(serial).replace("%p", f"pg_wal/{wal}")
        done = subprocess.run(["runuser", "-u", "postgres", "--", "sh", "-c", f"cd {pg.data_dir} && {command}"],
                              env={**os.environ, **local_environment()}, capture_output=True, text=True)  # fmt: skip
        assert done.returncode == 0, done.stderr
    # Then the names are the same, and so is every object's content once decompressed
    by_serial = _archived(s3, serial)
    assert set(by_serial) == set(parallel)
    for name in parallel:
        assert _content(s3, archive, parallel[name]["Key"]) == _content(s3, serial, by_serial[name]["Key"]), name


def test_s3_unreachable__postgres_retries_nothing_is_marked_and_the_lag_grows(servers, s3, s3_endpoint):
    # Given a server whose archive is reached through a relay the test can cut
    port = urlparse(s3_endpoint).port
    front = RegionFront("test", port)
    front.start()
    bucket = f"cut-{os.getpid()}-{int(time.time())}"
    s3.create_bucket(Bucket=bucket)
    archive = Archive(f"s3://{bucket}/pg", "pg-cut", f"http://127.0.0.1:{front.port}")
    try:
        pg = _server(servers, archive, "cut")
        _load(pg, 1, 20_000)
        _wait_caught_up(pg)
        before = set(_archived(s3, archive))
        # When S3 stops answering in the middle of a load
        front.stop()
        _load(pg, 20_001, 50_000)
        with pg.connect() as connection:
            connection.execute("SELECT pg_switch_wal()")
        time.sleep(4)
        first = archive_lag(pg.conninfo)
        time.sleep(3)
        second = archive_lag(pg.conninfo)
        # Then PostgreSQL keeps failing and retrying, the lag grows, and no marker is written for what S3 lacks
        assert first.failed_count >= 3  # PostgreSQL tried, and tried again
        assert first.lag_segments >= 5 and second.lag_seconds > first.lag_seconds
        assert set(_archived(s3, archive)) == before
        _markers_confirmed(s3, pg, archive)
        failures = list(_ledger(pg, archive).directory.glob("*.failed"))
        assert failures and "upload" in failures[0].read_text()
        # And once S3 is back, everything is shipped
        front.start()
        _wait_caught_up(pg, timeout=90)
        _markers_confirmed(s3, pg, archive)
        assert not list(_ledger(pg, archive).directory.glob("*.failed"))
    finally:
        front.stop()


def _archive_wal(data_dir: Path, archive: Archive, wal_path: str) -> subprocess.CompletedProcess:
    """archive_command's Python path, run as PostgreSQL runs it: as postgres, in the data directory."""
    command = [str(barman_bin() / "bulkhead"), "db", "archive-wal", "--archive", archive.url, "--server",
               archive.server, "--endpoint-url", archive.endpoint_url, "--timeout", "30", "--linger", "1",
               wal_path]  # fmt: skip
    environment = {**local_environment(), **tool_environment(archive)}
    return subprocess.run(["runuser", "-u", "postgres", "--", "env", *[f"{k}={v}" for k, v in environment.items()],
                           "sh", "-c", f'cd "{data_dir}" && exec "$@"', "sh", *command],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_bad_ready_entries__junk_is_skipped_and_a_partial_segment_is_refused(servers, archive, s3):
    pg = _server(servers, archive)
    status = pg.data_dir / "pg_wal" / "archive_status"
    # Given a .ready entry naming no WAL file, and one for a segment whose file is cut short
    (status / "not-a-wal-file.ready").touch()
    with pg.connect() as connection:
        current = connection.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
    partial = f"{current[:16]}000000F0"
    source = sorted(p for p in (pg.data_dir / "pg_wal").iterdir() if p.name <= current and len(p.name) == 24)[0]
    (pg.data_dir / "pg_wal" / partial).write_bytes(source.read_bytes()[: SEGMENT // 3])
    for path in (pg.data_dir / "pg_wal" / partial, status / "not-a-wal-file.ready"):
        os.chown(path, *_postgres_ids())
    # When archive_command is asked for the partial one
    done = _archive_wal(pg.data_dir, archive, f"pg_wal/{partial}")
    # Then it fails in one line saying why, and nothing of it is in the archive
    assert done.returncode != 0 and _said(done, f"pg_wal/{partial} is {SEGMENT // 3} bytes")
    assert "it is partial" in _said(done, "pg_wal/")
    assert f"{partial}.lz4" not in _archived(s3, archive)
    # And the real segments keep being archived past the junk entry
    _load(pg, 1, 20_000)
    _wait_caught_up(pg)
    assert (status / "not-a-wal-file.ready").exists()


def _said(done: subprocess.CompletedProcess, words: str) -> str:
    """The one line of bulkhead's error that holds `words` (the shipper's own log lines come after it)."""
    lines = [line for line in done.stderr.splitlines() if line.startswith("bulkhead: error:") and words in line]
    assert lines, done.stderr
    return lines[0]


def _postgres_ids() -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid


def _node_with(workdir: Path, name: str, segment: str, content: bytes) -> Path:
    """A data directory as a second node would have it: the segment and its .ready entry."""
    data = workdir / name
    (data / "pg_wal" / "archive_status").mkdir(parents=True)
    (data / "pg_wal" / segment).write_bytes(content)
    (data / "pg_wal" / "archive_status" / f"{segment}.ready").touch()
    subprocess.run(["chown", "-R", "postgres:postgres", str(data)], check=True)
    return data


def test_two_archivers__racing_for_one_segment_both_succeed_and_other_content_is_refused(servers, archive, s3, workdir):
    # Given one segment as two nodes both have it after a failover
    pg = _server(servers, archive, archive_mode="off")
    _load(pg, 1, 20_000)
    with pg.connect() as connection:
        segment = connection.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
        connection.execute("SELECT pg_switch_wal()")
    content = (pg.data_dir / "pg_wal" / segment).read_bytes()
    nodes = [_node_with(workdir, f"node-{n}", segment, content) for n in (1, 2)]
    # When both archive it at the same moment
    results: list[subprocess.CompletedProcess] = []
    racers = [threading.Thread(target=lambda d=d: results.append(_archive_wal(d, archive, f"pg_wal/{segment}")))
              for d in nodes]  # fmt: skip
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join()
    # Then both succeed and the archive holds the segment once, intact
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    archived = _archived(s3, archive)
    assert _content(s3, archive, archived[f"{segment}.lz4"]["Key"]) == content
    # And a third node with other WAL under the same name is refused, the archived object untouched
    other = bytearray(content)
    other[SEGMENT // 2] ^= 0xFF
    done = _archive_wal(_node_with(workdir, "node-3", segment, bytes(other)), archive, f"pg_wal/{segment}")
    assert done.returncode != 0 and _said(done, "already in the archive with other content")
    assert _content(s3, archive, archived[f"{segment}.lz4"]["Key"]) == content


def test_s3_down__a_shipper_that_only_fails_goes_away_and_the_next_call_starts_another(workdir, archive):
    # Given a node whose archive does not answer at all
    segment = "000000010000000000000003"
    node = _node_with(workdir, "node-down", segment, _whole_segment(segment))
    down = Archive(archive.url, archive.server, "http://127.0.0.1:9")
    # When archive_command's Python path runs
    done = _archive_wal(node, down, f"pg_wal/{segment}")
    # Then it fails with the shipper's reason, and the shipper, making no progress, is gone after its linger
    assert done.returncode != 0 and _said(done, f"upload of {segment} failed")
    ledger = shipper.Ledger(node, down)
    deadline = time.monotonic() + 20
    while shipper.shipper_running(ledger) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not shipper.shipper_running(ledger)
    # And once the archive answers, the next call ships it
    assert _archive_wal(node, archive, f"pg_wal/{segment}").returncode == 0
    assert shipper.Ledger(node, archive).marker(segment)


def _whole_segment(name: str) -> bytes:
    """A 1 MiB segment whose first page header is PostgreSQL 15's for `name` (the rest zeros)."""
    import struct

    start = int(name[8:16], 16) * 2**32 + int(name[16:24], 16) * SEGMENT
    head = struct.pack("=HHIQI", 0xD110, 0x0002, 1, start, 0) + b"\0" * 4 + struct.pack("=QII", 7, SEGMENT, 8192)
    return head + b"\0" * (SEGMENT - len(head))
