"""A leader lost before it archived its last whole segment: the promoted standby archives it (archive-heal),
so that a restore from a backup taken before the failover reaches the new timeline. Real PostgreSQL 15
primary and streaming standby, a moto S3."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from bulkhead.backup import base_backup, heal, shipper
from bulkhead.backup.local_postgres import PG_BIN, as_postgres
from bulkhead.backup.settings import Archive, barman_bin, tool_environment
from bulkhead.backup.store import ArchiveStore
from bulkhead.localcloud.aws import local_environment

pytestmark = pytest.mark.postgres

HISTORY = "1\t0/7000C60\tno recovery target specified\n\n2\t0/D003710\tno recovery target specified\n"


def test_switch_points__each_earlier_timeline_and_where_it_ended():
    assert heal.switch_points(HISTORY) == {1: 0x7000C60, 2: 0xD003710}
    assert heal.switch_points("# a comment\n") == {}


def _rows(pg) -> list[int]:
    with pg.connect() as connection:
        return [n for (n,) in connection.execute("SELECT n FROM ledger ORDER BY n").fetchall()]


def _insert(pg, first: int, count: int) -> None:
    with pg.connect() as connection:
        last = first + count - 1
        connection.execute("INSERT INTO ledger SELECT g FROM generate_series(%s::int, %s::int) g", (first, last))


def _standby_of(primary, servers, name: str):
    standby = servers(name)
    as_postgres(str(PG_BIN / "pg_basebackup"), "-D", str(standby.data_dir), "-h", "127.0.0.1", "-p",
                str(primary.port), "-U", "postgres", "-X", "stream", "-R", "-c", "fast")  # fmt: skip
    standby.start()
    return standby


def _caught_up(primary, standby, timeout: float = 60) -> None:
    with primary.connect() as connection:
        target = connection.execute("SELECT pg_current_wal_flush_lsn()").fetchone()[0]
    deadline = time.monotonic() + timeout
    with standby.connect() as connection:
        while time.monotonic() < deadline:
            if connection.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)).fetchone()[0]:
                return
            time.sleep(0.1)
    raise AssertionError(f"the standby did not replay up to {target} within {timeout:.0f} s")


def _heal_as_patroni_would(data_dir: Path, archive: Archive, port: int | None = None) -> dict:
    """The pre_promote hook's command (with the standby's port) or on_role_change's (without), as postgres."""
    command = [str(barman_bin() / "bulkhead"), "--log-json", "db", "archive-heal", "--archive", archive.url,
               "--server", archive.server, "--endpoint-url", archive.endpoint_url, "--data-dir", str(data_dir),
               *(["--host", "127.0.0.1", "--port", str(port)] if port else [])]  # fmt: skip
    environment = {**local_environment(), **tool_environment(archive)}
    done = subprocess.run(["runuser", "-u", "postgres", "--", "env", *[f"{k}={v}" for k, v in environment.items()],
                           *command], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_archive_heal__the_standby_promoted_archives_the_segment_the_lost_leader_never_did(servers, archive, restored):
    # Given a primary with a base backup and a streaming standby
    primary = servers("primary")
    primary.init(archive)
    primary.start()
    with primary.connect() as connection:
        connection.execute("CREATE TABLE ledger (n int PRIMARY KEY)")
    _insert(primary, 1, 100)
    base_backup.backup(archive, "127.0.0.1", primary.port, "postgres", jobs=2, timeout=300)
    standby = _standby_of(primary, servers, "standby")
    # And a segment the primary finished but could not archive (its archive_command now fails, and the WAL
    # shipper the last one started, which would ship ready segments on its own, is gone)
    with primary.connect() as connection:
        connection.execute("ALTER SYSTEM SET archive_command = 'exit 1'")
        connection.execute("SELECT pg_reload_conf()")
    running = shipper.shipper_pid(shipper.Ledger(primary.data_dir, archive))
    if running:
        os.kill(running, signal.SIGKILL)
    _insert(primary, 101, 100)
    with primary.connect() as connection:
        hole = connection.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
        connection.execute("SELECT pg_switch_wal()")
    _insert(primary, 201, 100)
    with primary.connect() as connection:
        receiving = connection.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
    _caught_up(primary, standby)
    # When the primary's volume is lost, the archive has a hole where its last whole segment should be
    primary.kill()
    shutil.rmtree(primary.data_dir)
    assert hole not in ArchiveStore(archive).wal_segments(), "the test made no hole in the archive"
    # Then the standby, before it is promoted (Patroni's pre_promote), ships the hole, and not the segment it
    # was still receiving
    healed = _heal_as_patroni_would(standby.data_dir, archive, standby.port)
    assert hole in healed["shipped"] and healed["failed"] == {}
    assert receiving not in healed["shipped"] and receiving not in ArchiveStore(archive).wal_segments()
    # And once promoted (on_role_change) a second run has nothing of the old timeline left to ship (at most the
    # new timeline's history file, racing the server's own archiver to it)
    as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(standby.data_dir), "-w", "promote")
    standby.wait_until_primary()
    again = _heal_as_patroni_would(standby.data_dir, archive)
    assert set(again["shipped"]) <= {"00000002.history"} and again["failed"] == {}
    # And a restore from the backup taken before the failover crosses onto the new timeline with every row,
    # those written after the promotion too
    _insert(standby, 301, 100)
    standby.switch_and_wait_archived()
    assert _rows(restored(archive)) == list(range(1, 401))
