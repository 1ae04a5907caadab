"""The WAL shipper's pieces without PostgreSQL or S3: the segment check, the order of ready segments, the
ledger, and the archive_command shell's decisions."""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from bulkhead.backup import shipper
from bulkhead.backup.settings import Archive, BackupError, archive_command

pytestmark = pytest.mark.unit
MIB = 2**20
ARCHIVE = Archive("s3://bucket/prefix", "pg-test", "http://127.0.0.1:9")


def _segment(name: str, size: int = MIB, page_address: int | None = None, info: int = 0x0002) -> bytes:
    """A WAL segment's first page header as PostgreSQL 15 writes it, then zeros to `size`."""
    _, log_id, segment = (int(name[0:8], 16), int(name[8:16], 16), int(name[16:24], 16))
    start = (log_id * (2**32 // size) + segment) * size if page_address is None else page_address
    head = struct.pack("=HHIQI", 0xD110, info, 1, start, 0) + b"\0" * 4 + struct.pack("=QII", 7, size, 8192)
    return head + b"\0" * (size - len(head))


@pytest.mark.parametrize("size", [MIB, 16 * MIB])
def test_segment_problem__a_whole_segment_passes(tmp_path, size):
    path = tmp_path / "0000000100000002000000A3"
    path.write_bytes(_segment(path.name, size))
    assert shipper.segment_problem(path) is None


def test_segment_problem__truncated_recycled_and_garbage_files_are_named(tmp_path):
    name = "000000010000000000000010"
    cut = tmp_path / name
    cut.write_bytes(_segment(name)[: MIB // 2])
    assert "is 524288 bytes but its header says segments are 1048576: it is partial" in shipper.segment_problem(cut)
    recycled = tmp_path / "000000010000000000000011"
    recycled.write_bytes(_segment(name))  # an old segment renamed for reuse: its pages start elsewhere
    assert "recycled or corrupt" in shipper.segment_problem(recycled)
    garbage = tmp_path / "000000010000000000000012"
    garbage.write_bytes(_segment(garbage.name, info=0))
    assert "does not begin with a WAL segment header" in shipper.segment_problem(garbage)
    empty = tmp_path / "000000010000000000000013"
    empty.write_bytes(b"")
    assert "too short" in shipper.segment_problem(empty)
    assert "does not exist" in shipper.segment_problem(tmp_path / "000000010000000000000014")


def test_segment_problem__history_and_partial_files_have_no_fixed_size(tmp_path):
    for name in ("00000002.history", "000000010000000000000010.partial"):
        (tmp_path / name).write_bytes(b"1\t0/3000000\tno recovery target specified\n")
        assert shipper.segment_problem(tmp_path / name) is None


def test_ready_segments__history_first_then_oldest_and_junk_reported(tmp_path):
    status = tmp_path / "pg_wal" / "archive_status"
    status.mkdir(parents=True)
    for entry in ("000000020000000000000005.ready", "000000010000000000000004.ready", "00000002.history.ready",
                  "000000010000000000000003.done", "000000020000000000000005.partial.ready", "junk.ready",
                  "0000000100000000000000.ready"):  # fmt: skip
        (status / entry).touch()
    junk: list[str] = []
    assert shipper.ready_segments(tmp_path, junk.append) == [
        "00000002.history", "000000010000000000000004", "000000020000000000000005",
        "000000020000000000000005.partial",
    ]  # fmt: skip
    assert sorted(junk) == ["0000000100000000000000.ready", "junk.ready"]


def test_ledger__markers_are_per_archive_and_pruned_once_postgres_is_done_with_them(tmp_path):
    (tmp_path / "pg_wal" / "archive_status").mkdir(parents=True)
    ledger = shipper.Ledger(tmp_path, ARCHIVE)
    other = shipper.Ledger(tmp_path, Archive("s3://other/prefix", "pg-test"))
    ledger.ensure()
    names = ["000000010000000000000001", "000000010000000000000002", "000000010000000000000003"]
    for name in names:
        (tmp_path / "pg_wal" / name).write_bytes(b"x")
        ledger.record(shipper.Shipped(name, f"k/{name}", '"etag"', 10, 1, 0.1))
    assert ledger.marker(names[0])["etag"] == '"etag"' and other.marker(names[0]) is None
    (tmp_path / "pg_wal" / "archive_status" / f"{names[0]}.done").touch()
    (tmp_path / "pg_wal" / names[1]).unlink()
    (tmp_path / "pg_wal" / "archive_status" / f"{names[2]}.ready").touch()
    assert ledger.prune() == 2
    assert [n for n in names if ledger.marker(n)] == [names[2]]


def test_ledger__never_brings_back_a_data_directory_that_is_gone(tmp_path):
    # A shipper outlives its volume: making its ledger must not leave a non-empty PGDATA for Patroni to trust.
    gone = tmp_path / "main"
    with pytest.raises(BackupError, match="is gone"):
        shipper.Ledger(gone, ARCHIVE).ensure()
    assert not gone.exists()


def _fake_python_path(tmp_path: Path) -> Path:
    """A stand-in for the bulkhead CLI that archive_command execs: records its arguments, exits 42."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "bulkhead"
    script.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/python-path\nexit 42\n')
    script.chmod(0o755)
    return bin_dir


def _run_archive_command(tmp_path: Path, monkeypatch, name: str = "000000010000000000000007"):
    monkeypatch.setenv("BULKHEAD_BARMAN_BIN", str(_fake_python_path(tmp_path)))
    command = archive_command(ARCHIVE, max_parallel=6).replace("%f", name).replace("%p", f"pg_wal/{name}")
    return subprocess.run(["sh", "-c", command], cwd=tmp_path / "data", capture_output=True, text=True, timeout=60)


@pytest.fixture
def data(tmp_path):
    directory = tmp_path / "data"
    directory.mkdir()
    ledger = shipper.Ledger(directory, ARCHIVE)
    ledger.ensure()
    return ledger


def test_archive_command__a_marker_answers_at_once_without_python(tmp_path, monkeypatch, data):
    data.record(shipper.Shipped("000000010000000000000007", "k", '"e"', 1, 1, 0.1))
    done = _run_archive_command(tmp_path, monkeypatch)
    assert done.returncode == 0 and not (tmp_path / "python-path").exists()


def test_archive_command__no_shipper_runs_the_python_path_with_the_settings(tmp_path, monkeypatch, data):
    done = _run_archive_command(tmp_path, monkeypatch)
    assert done.returncode == 42
    said = (tmp_path / "python-path").read_text().split()
    assert said[:3] == ["--log-json", "db", "archive-wal"]
    assert said[said.index("--max-parallel") + 1] == "6" and said[-1] == "pg_wal/000000010000000000000007"


def _hold_lock(ledger: shipper.Ledger) -> int:
    descriptor = os.open(ledger.lock_path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    return descriptor


def test_archive_command__with_a_shipper_running_it_waits_for_the_marker(tmp_path, monkeypatch, data):
    held = _hold_lock(data)
    marker = threading.Timer(0.5, data.record, [shipper.Shipped("000000010000000000000007", "k", '"e"', 1, 1, 0.1)])
    marker.start()
    try:
        started = time.monotonic()
        done = _run_archive_command(tmp_path, monkeypatch)
        waited = time.monotonic() - started
    finally:
        os.close(held)
    assert done.returncode == 0 and waited >= 0.5 and not (tmp_path / "python-path").exists()


def test_archive_command__the_running_shipper_s_failure_is_postgres_s_error(tmp_path, monkeypatch, data):
    held = _hold_lock(data)
    data.fail("000000010000000000000007", "upload of 000000010000000000000007 failed: connection refused")
    try:
        done = _run_archive_command(tmp_path, monkeypatch)
    finally:
        os.close(held)
    assert done.returncode == 1
    assert done.stderr.strip() == "upload of 000000010000000000000007 failed: connection refused"
