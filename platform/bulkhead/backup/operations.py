"""`bulkhead db` operations: backup, list, verify, restore and copy an archive.

Each one checks what it can before it writes anything (the archive is reachable, the target empty,
the WAL continuous), so that a failure leaves nothing half-done.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psycopg

from bulkhead.backup import barman, wal
from bulkhead.backup.settings import BACKUP_COMPRESSION, Archive, BackupError, conf_lines, restore_command
from bulkhead.backup.store import ArchiveStore

log = logging.getLogger("bulkhead.db")


@dataclass(frozen=True)
class Backup:
    """One base backup in the archive."""

    backup_id: str
    status: str
    begin_time: dt.datetime | None
    end_time: dt.datetime | None
    begin_wal: str
    end_wal: str

    def as_dict(self) -> dict:
        return {
            "backup_id": self.backup_id,
            "status": self.status,
            "begin_time": self.begin_time.isoformat() if self.begin_time else None,
            "end_time": self.end_time.isoformat() if self.end_time else None,
            "begin_wal": self.begin_wal,
            "end_wal": self.end_wal,
        }


def _time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def list_backups(archive: Archive) -> list[Backup]:
    """Every backup in the archive, oldest first, read from the `backup.info` barman writes for each."""
    store = ArchiveStore(archive)
    store.check_access()
    backups = []
    for item in store.objects("base/"):
        if item.key.endswith("/backup.info"):
            info = parse_backup_info(store.read(item.key).decode(errors="replace"))
            backups.append(
                Backup(
                    backup_id=info.get("backup_id") or item.key.split("/")[-2],
                    status=info.get("status", ""),
                    begin_time=_time(info.get("begin_time")),
                    end_time=_time(info.get("end_time")),
                    begin_wal=info.get("begin_wal", ""),
                    end_wal=info.get("end_wal", ""),
                )
            )
    return sorted(backups, key=lambda b: b.end_time or dt.datetime.min.replace(tzinfo=dt.UTC))


def parse_backup_info(text: str) -> dict[str, str]:
    """barman's backup.info: `key=value` lines, `None` for unset."""
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs if value.strip() != "None"}


# --- decisions ---


def choose_backup(backups: list[Backup], target_time: dt.datetime | None) -> Backup:
    """The newest finished backup, or the newest that ended before `target_time`."""
    done = [b for b in backups if b.status == "DONE" and b.end_time]
    if not done:
        raise BackupError("the archive holds no finished backup; take one with `bulkhead db backup`")
    if target_time is None:
        return done[-1]
    before = [b for b in done if b.end_time <= target_time]
    if not before:
        raise BackupError(
            f"no backup ended before {target_time.isoformat()}; the oldest ended at {done[0].end_time.isoformat()}"
        )
    return before[-1]


@dataclass(frozen=True)
class Verification:
    """What a restore from the newest backup can reach."""

    backup: Backup
    continuity: wal.Continuity
    unreadable: list[str]

    @property
    def ok(self) -> bool:
        return self.continuity.missing is None and not self.unreadable

    def problem(self) -> str | None:
        """One line on what is wrong and how far a restore can still go, or None."""
        gap = self.continuity
        if gap.missing is None and not self.unreadable:
            return None
        if gap.missing is not None and gap.last_contiguous is None:
            return f"WAL {gap.missing}, where backup {self.backup.backup_id} begins, is missing: it cannot be restored"
        if gap.missing is not None and wal.position(gap.missing) <= wal.position(self.backup.end_wal):
            return (
                f"WAL {gap.missing} is missing inside backup {self.backup.backup_id} "
                f"(it needs {self.backup.begin_wal}..{self.backup.end_wal}): it cannot be restored"
            )
        if gap.missing is not None:
            return (
                f"WAL {gap.missing} is missing ({gap.later_segments} later segments are stranded); a restore from "
                f"backup {self.backup.backup_id} can reach the end of WAL {gap.last_contiguous}"
            )
        return f"WAL {', '.join(self.unreadable)} cannot be read back (corrupt); restore to a time before them"


def verify(archive: Archive, backup: Backup | None = None, read_all: bool = True) -> Verification:
    """Check that a backup (default: the newest) and every WAL segment after it are present and readable."""
    store = ArchiveStore(archive)
    chosen = backup or choose_backup(list_backups(archive), None)
    segments = store.wal_segments()
    continuity = wal.check(chosen.begin_wal, segments)
    unreadable = []
    if read_all and continuity.last_contiguous:
        name = chosen.begin_wal
        while True:
            if not store.readable_segment(segments[name]):
                unreadable.append(name)
            if name == continuity.last_contiguous:
                break
            name = wal.following(name)
    return Verification(chosen, continuity, unreadable)


# --- backup ---


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


def backup(
    archive: Archive,
    host: str,
    port: int,
    user: str,
    jobs: int = 4,
    timeout: float = 3600,
    on_progress: Callable[[int], None] | None = None,
) -> Backup:
    """Take a base backup with barman-cloud-backup and return it as the archive lists it."""
    store = ArchiveStore(archive)
    store.check_access()
    problem = archiving_problem(f"host={host} port={port} user={user} dbname=postgres")
    if problem:
        raise BackupError(f"refusing to start a base backup that would wait forever for WAL: {problem}")
    before = {b.backup_id for b in list_backups(archive)}
    args = [BACKUP_COMPRESSION, "--immediate-checkpoint", "-J", str(jobs), "-h", host, "-p", str(port), "-U", user]
    if on_progress is None:
        barman.run("barman-cloud-backup", archive, [*args, archive.url, archive.server], timeout)
    else:
        _with_upload_progress(store, archive, [*args, archive.url, archive.server], timeout, on_progress)
    new = [b for b in list_backups(archive) if b.backup_id not in before]
    if not new or new[-1].status != "DONE":
        raise BackupError("barman-cloud-backup finished but no finished backup appeared in the archive")
    log.info("base backup done", extra={"server": archive.server, "backup_id": new[-1].backup_id,
                                        "begin_wal": new[-1].begin_wal, "end_wal": new[-1].end_wal})  # fmt: skip
    return new[-1]


def _with_upload_progress(store, archive, args, timeout, on_progress) -> None:
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
        on_progress(sum(o.size for o in store.objects("base/")))
    if failure:
        raise failure[0]


# --- restore ---


def restore(
    archive: Archive,
    target: Path,
    target_time: dt.datetime | None = None,
    force: bool = False,
    owner: str = "postgres",
) -> Backup:
    """Lay down a data directory in `target` that recovers to the end of the archive or `target_time`.

    The restore goes to a staging directory beside `target` and is moved into place only when whole.
    """
    if target.exists() and any(target.iterdir()) and not force:
        raise BackupError(f"{target} is not empty; restore into an empty directory or pass --force to replace it")
    chosen = choose_backup(list_backups(archive), target_time)
    verification = verify(archive, chosen, read_all=False)
    gap = verification.continuity
    if gap.missing is not None:
        problem = verification.problem()
        reaches_target = (
            target_time is not None
            and gap.last_contiguous is not None
            and wal.position(gap.missing) > wal.position(chosen.end_wal)
        )
        # A point-in-time restore may still succeed short of the gap; to the latest point it cannot.
        if not reaches_target:
            raise BackupError(problem)
    goal = target_time.isoformat() if target_time else "latest"
    log.info("restore started", extra={"server": archive.server, "backup_id": chosen.backup_id,
                                       "target": str(target), "target_time": goal})  # fmt: skip
    staging = target.parent / f".{target.name}.restoring"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
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
        log.warning("restore failed; nothing was left behind", extra={"server": archive.server, "target": str(target)})
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


# --- copy to the partner region ---


@dataclass(frozen=True)
class CopyReport:
    copied: int
    skipped: int
    bytes: int
    seconds: float


def copy_archive(source: Archive, destination: Archive, on_object: Callable[[str], None] | None = None) -> CopyReport:
    """Copy every object of the server's archive that the destination lacks or holds differently."""
    started = time.perf_counter()
    source_store, destination_store = ArchiveStore(source), ArchiveStore(destination)
    source_store.check_access()
    destination_store.check_access()
    present = {o.key[len(destination.prefix) :]: o for o in destination_store.objects()}
    copied = skipped = size = 0
    for item in source_store.objects():
        relative = item.key[len(source.prefix) :]
        existing = present.get(relative)
        # Archived files never change once written: the same key and size means already copied.
        # (ETags cannot be compared: multipart uploads give the same bytes different ETags.)
        if existing is not None and existing.size == item.size:
            skipped += 1
            continue
        destination_store.upload(destination.prefix + relative, source_store.read(item.key))
        copied += 1
        size += item.size
        if on_object:
            on_object(relative)
    report = CopyReport(copied, skipped, size, time.perf_counter() - started)
    log.info("archive copied", extra={"server": source.server, "to": destination.url, "copied": copied,
                                      "skipped": skipped, "bytes": size})  # fmt: skip
    return report


# --- many databases at once (April 2011: shared databases came back one by one over 60 hours) ---


@dataclass(frozen=True)
class RestoreJob:
    """One database to bring back; lower `priority` goes first (paying customers before free ones)."""

    archive: Archive
    target: Path
    priority: int = 100
    target_time: dt.datetime | None = None


@dataclass(frozen=True)
class RestoreOutcome:
    job: RestoreJob
    backup: Backup | None
    error: str | None
    seconds: float


def restore_order(jobs: list[RestoreJob]) -> list[RestoreJob]:
    """Highest priority first; among equals, the order given."""
    return sorted(jobs, key=lambda job: job.priority)


def restore_fleet(
    jobs: list[RestoreJob], concurrency: int = 4, on_outcome: Callable[[RestoreOutcome], None] | None = None
) -> list[RestoreOutcome]:
    """Restore every job with at most `concurrency` at a time; one failure does not stop the others."""

    def one(job: RestoreJob) -> RestoreOutcome:
        started = time.perf_counter()
        try:
            chosen = restore(job.archive, job.target, job.target_time)
            outcome = RestoreOutcome(job, chosen, None, time.perf_counter() - started)
        except BackupError as error:
            outcome = RestoreOutcome(job, None, str(error), time.perf_counter() - started)
        if on_outcome:
            on_outcome(outcome)
        return outcome

    # The pool takes work in submission order, so the most important databases start first.
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        return list(pool.map(one, restore_order(jobs)))
