"""Restoring a data directory from the archive, alone or many at once in priority order.

A restore checks what it can before it writes anything (a finished backup, WAL that reaches the
goal, an empty target), lays the files down in a staging directory beside the target, and moves it
into place only when whole: a failure, or Ctrl-C, leaves nothing behind.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bulkhead.backup import barman
from bulkhead.backup.catalog import Backup, list_backups, verify
from bulkhead.backup.decisions import choose_backup, restore_blocker, restore_order
from bulkhead.backup.settings import Archive, BackupError, conf_lines, restore_command

log = logging.getLogger("bulkhead.db")


def restore(
    archive: Archive,
    target: Path,
    target_time: dt.datetime | None = None,
    force: bool = False,
    owner: str = "postgres",
) -> Backup:
    """Lay down a data directory in `target` that recovers to the end of the archive or `target_time`."""
    if target.exists() and any(target.iterdir()) and not force:
        raise BackupError(f"{target} is not empty; restore into an empty directory or pass --force to replace it")
    chosen = choose_backup(list_backups(archive), target_time)
    blocker = restore_blocker(verify(archive, chosen, read_all=False), target_time)
    if blocker:
        raise BackupError(blocker)
    goal = target_time.isoformat() if target_time else "latest"
    log.info("restore started", extra={"server": archive.server, "backup_id": chosen.backup_id,
                                       "target": str(target), "target_time": goal})  # fmt: skip
    staging = target.parent / f".{target.name}.restoring"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        barman.run(
            "barman-cloud-restore", archive, [archive.url, archive.server, chosen.backup_id, str(staging)], timeout=7200
        )
        _configure_recovery(staging, archive, target_time)
        shutil.chown(staging, owner, owner)
        for path in staging.rglob("*"):
            shutil.chown(path, owner, owner)
        staging.chmod(0o700)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        log.warning("restore stopped; nothing was left behind", extra={"server": archive.server, "target": str(target)})
        raise
    log.info("restore done", extra={"server": archive.server, "backup_id": chosen.backup_id, "target": str(target)})
    return chosen


def _configure_recovery(data_dir: Path, archive: Archive, target_time: dt.datetime | None) -> None:
    """barman-cloud-restore only lays down files: recovery itself is configured here."""
    (data_dir / "pg_wal").mkdir(exist_ok=True)
    (data_dir / "pg_wal" / "archive_status").mkdir(exist_ok=True)
    settings = {"restore_command": restore_command(archive), "recovery_target_timeline": "latest"}
    if target_time is not None:
        settings["recovery_target_time"] = target_time.isoformat()
        settings["recovery_target_action"] = "promote"
    # A restored copy must not archive into its origin's archive until an operator points it elsewhere.
    settings["archive_mode"] = "off"
    with (data_dir / "postgresql.auto.conf").open("a") as conf:
        conf.write("\n# Written by bulkhead db restore\n" + "\n".join(conf_lines(settings)) + "\n")
    (data_dir / "recovery.signal").touch()
    (data_dir / "postmaster.pid").unlink(missing_ok=True)


# --- many databases at once (April 2011: shared databases came back one by one over 60 hours) ---


@dataclass(frozen=True)
class RestoreJob:
    """One database to bring back: paying customers first, then lower `priority` first."""

    archive: Archive
    target: Path
    priority: int = 100
    target_time: dt.datetime | None = None
    paying: bool = False


@dataclass(frozen=True)
class RestoreOutcome:
    job: RestoreJob
    backup: Backup | None
    error: str | None
    seconds: float


def _restore_job(job: RestoreJob) -> Backup:
    return restore(job.archive, job.target, job.target_time)


def restore_fleet(
    jobs: list[RestoreJob],
    concurrency: int = 4,
    on_outcome: Callable[[RestoreOutcome], None] | None = None,
    on_start: Callable[[RestoreJob], None] | None = None,
    restore_one: Callable[[RestoreJob], Backup] = _restore_job,
) -> list[RestoreOutcome]:
    """Restore every job, at most `concurrency` at a time, most important first; outcomes in that order.

    Each job is its own compartment: whatever it raises (a BackupError, an OSError from chown or
    rename, anything but an interrupt) becomes its outcome, and the other jobs carry on. A worker
    takes the next job only when it is free, so a job starts only after every more important one has.
    """
    queue = restore_order(jobs)
    outcomes: dict[int, RestoreOutcome] = {}
    lock = threading.Lock()
    taken = iter(range(len(queue)))

    def worker() -> None:
        while True:
            with lock:
                index = next(taken, None)
                if index is None:
                    return
                if on_start:
                    on_start(queue[index])
            job, started = queue[index], time.perf_counter()
            try:
                outcome = RestoreOutcome(job, restore_one(job), None, time.perf_counter() - started)
            except Exception as error:  # every failure stays in its job's compartment
                message = str(error) if isinstance(error, BackupError) else f"{type(error).__name__}: {error}"
                outcome = RestoreOutcome(job, None, message, time.perf_counter() - started)
            with lock:
                outcomes[index] = outcome
                if on_outcome:
                    on_outcome(outcome)

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, min(concurrency, len(queue))))]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return [outcomes[index] for index in range(len(queue))]
