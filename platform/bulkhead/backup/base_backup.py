"""Taking a base backup with barman-cloud-backup, after checking that it would not wait forever for WAL."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg

from bulkhead.backup import barman
from bulkhead.backup.catalog import Backup, list_backups
from bulkhead.backup.decisions import uploaded_bytes
from bulkhead.backup.settings import BACKUP_COMPRESSION, Archive, BackupError
from bulkhead.backup.store import ArchiveStore

log = logging.getLogger("bulkhead.db")


def archiving_problem(conninfo: str) -> str | None:
    """Why a base backup would hang waiting for WAL on this server, or None if archiving works."""
    try:
        with psycopg.connect(conninfo, connect_timeout=5, autocommit=True) as connection:
            mode, command = connection.execute(
                "SELECT current_setting('archive_mode'), current_setting('archive_command')"
            ).fetchone()
            if mode == "off" or not command:
                return "archive_mode is off or archive_command is empty; apply `bulkhead db archive-command`"
            last_ok, last_failed, failed_wal = connection.execute(
                "SELECT last_archived_time, last_failed_time, last_failed_wal FROM pg_stat_archiver"
            ).fetchone()
    except psycopg.Error as error:
        raise BackupError(f"cannot connect to PostgreSQL ({conninfo}): {str(error).strip().splitlines()[0]}") from None
    if last_failed and (last_ok is None or last_failed > last_ok):
        return f"archive_command is failing (last failure {last_failed.isoformat()} on {failed_wal}); see the log"
    return None


def in_recovery(conninfo: str) -> bool:
    """The server is a replica (Patroni's leader is elsewhere): only the leader takes scheduled backups."""
    try:
        with psycopg.connect(conninfo, connect_timeout=5, autocommit=True) as connection:
            return bool(connection.execute("SELECT pg_is_in_recovery()").fetchone()[0])
    except psycopg.Error as error:
        raise BackupError(f"cannot connect to PostgreSQL ({conninfo}): {str(error).strip().splitlines()[0]}") from None


def backup(
    archive: Archive,
    host: str,
    port: int,
    user: str,
    jobs: int = 4,
    timeout: float = 3600,
    on_progress: Callable[[int], None] | None = None,
) -> Backup:
    """Take a base backup with barman-cloud-backup and return it as the archive lists it.

    `on_progress(bytes)` hears, about once a second, how much of this backup has been uploaded.
    """
    store = ArchiveStore(archive)
    store.check_access()
    problem = archiving_problem(f"host={host} port={port} user={user} dbname=postgres")
    if problem:
        raise BackupError(f"refusing to start a base backup that would wait forever for WAL: {problem}")
    before = {b.backup_id for b in list_backups(archive)}
    args = [BACKUP_COMPRESSION, "--immediate-checkpoint", "-J", str(jobs), "-h", host, "-p", str(port), "-U", user]
    args += [archive.url, archive.server]
    if on_progress is None:
        barman.run("barman-cloud-backup", archive, args, timeout)
    else:
        _with_upload_progress(store, archive, args, timeout, on_progress)
    new = [b for b in list_backups(archive) if b.backup_id not in before]
    if not new or new[-1].status != "DONE":
        raise BackupError("barman-cloud-backup finished but no finished backup appeared in the archive")
    log.info("base backup done", extra={"server": archive.server, "backup_id": new[-1].backup_id,
                                        "begin_wal": new[-1].begin_wal, "end_wal": new[-1].end_wal})  # fmt: skip
    return new[-1]


def _with_upload_progress(
    store: ArchiveStore, archive: Archive, args: list[str], timeout: float, on_progress: Callable[[int], None]
) -> None:
    # Earlier backups live under the same prefix: only what appears from now on is this backup.
    earlier = {o.key for o in store.objects("base/")}
    done = threading.Event()
    failure: list[BaseException] = []

    def work() -> None:
        try:
            barman.run("barman-cloud-backup", archive, args, timeout)
        except BaseException as error:
            failure.append(error)
        finally:
            done.set()

    threading.Thread(target=work, daemon=True).start()
    while not done.wait(1.0):
        on_progress(uploaded_bytes(earlier, store.objects("base/")))
    if failure:
        raise failure[0]
