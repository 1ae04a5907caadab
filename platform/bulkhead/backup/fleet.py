"""Shared databases on a database host: many small PostgreSQL clusters, each with its own barman server
name and port, as Heroku's shared database servers held them (April 2011: restoring them took up to 60
hours, by hand, in no deliberate order).

`create` makes them on the host that runs it (initdb, continuous archiving, a first base backup).
`restore` brings a plan's databases back on the host that runs it from an archive (the partner region's
replica after a region loss): paying customers first, then priority, several at a time within the
host's cores. Each restore runs in one of a few long-lived worker processes through barman's own
library (the newest base backup, then every WAL segment after it, laid into pg_wal), so that a small
database is not bound by an interpreter starting per database or per WAL segment; PostgreSQL then
replays that WAL as after a crash and serves. What a restore writes is staged beside its target and
moved into place only when whole.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import multiprocessing
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from bulkhead import clock
from bulkhead.backup import base_backup
from bulkhead.backup.local_postgres import LocalPostgresError, PgServer, as_postgres
from bulkhead.backup.restore import restore_fleet
from bulkhead.backup.settings import Archive, BackupError, conf_lines, server_settings

log = logging.getLogger("bulkhead.db")
DEFAULT_ROOT = Path("/var/lib/bulkhead/fleet")
DEFAULT_BASE_PORT = 5500
# Small: a shared server holds many of them. 1 MiB WAL segments, not 16: a quiet database's archive_timeout
# ships a whole segment, and each keeps a few in pg_wal; at 16 MiB, 20 of them filled a 2 GiB volume.
INITDB_ARGS = ("--wal-segsize=1",)
SETTINGS = {"shared_buffers": "16MB", "max_connections": "20", "max_wal_senders": "2", "wal_keep_size": "0",
            "min_wal_size": "4MB", "max_wal_size": "32MB"}  # fmt: skip


@dataclass(frozen=True)
class Database:
    """One shared database as a plan names it; its port is fixed by its place in the plan."""

    name: str
    priority: int
    paying: bool
    port: int


def read_plan(path: Path, base_port: int = DEFAULT_BASE_PORT) -> list[Database]:
    """A plan file: a YAML list of {name, priority, paying}; a bad entry is refused naming it."""
    try:
        entries = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise BackupError(f"cannot read the plan {path}: {str(error).splitlines()[0]}") from None
    if not isinstance(entries, list) or not entries:
        raise BackupError(f"the plan {path} must be a YAML list of {{name, priority, paying}} entries")
    databases, seen = [], set()
    for index, entry in enumerate(entries):
        name = entry.get("name") if isinstance(entry, dict) else None
        priority = entry.get("priority", 100) if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name.replace("-", "").isalnum() or name in seen:
            raise BackupError(f"plan {path}, entry {index + 1}: name must be a unique word of letters, digits and -")
        if not isinstance(priority, int) or isinstance(priority, bool) or priority < 1:
            raise BackupError(f"plan {path}, entry {index + 1} ({name}): priority must be a whole number from 1")
        if not isinstance(entry.get("paying", False), bool):
            raise BackupError(f"plan {path}, entry {index + 1} ({name}): paying must be true or false")
        seen.add(name)
        databases.append(Database(name, priority, entry.get("paying", False), base_port + index))
    return databases


def write_plan(path: Path, databases: list[Database]) -> None:
    path.write_text(yaml.safe_dump([{"name": d.name, "priority": d.priority, "paying": d.paying} for d in databases],
                                   sort_keys=False))  # fmt: skip


def _archive(base: str, name: str, endpoint: str | None) -> Archive:
    return Archive(base.rstrip("/"), name, endpoint)


# --- creating them (the source region) ---


def create(databases: list[Database], root: Path, archive_base: str, endpoint: str | None, password: str,
           archive_timeout: int, environment: dict[str, str], listen: str = "*") -> list[dict]:  # fmt: skip
    """Make each database not yet running here: initdb, archiving, the app's table, a first base backup."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.chown(root, "postgres", "postgres")
    made = []
    for database in databases:
        server = PgServer(root / database.name, database.port)
        archive = _archive(archive_base, database.name, endpoint)
        if (server.data_dir / "PG_VERSION").exists() and _serving(server):
            made.append({"name": database.name, "port": database.port, "created": False})
            continue
        _initdb(server, archive, archive_timeout)
        server.start(listen=listen, environment=environment)
        server.wait_until_primary(timeout=60)
        with server.connect() as connection:
            connection.execute(f"ALTER USER postgres PASSWORD '{password.replace(chr(39), chr(39) * 2)}'")
            connection.execute("CREATE TABLE IF NOT EXISTS rows (n bigint PRIMARY KEY, at timestamptz DEFAULT now())")
        made.append({"name": database.name, "port": database.port, "created": True})
    # The first base backups: what a restore in the partner region starts from.
    for entry in made:
        database = next(d for d in databases if d.name == entry["name"])
        archive = _archive(archive_base, database.name, endpoint)
        if entry["created"]:
            entry["backup_id"] = base_backup.backup(archive, "127.0.0.1", database.port, "postgres", jobs=1).backup_id
    return made


def _initdb(server: PgServer, archive: Archive, archive_timeout: int) -> None:
    """initdb, tried a second time after a failure: one initdb of twenty failed once in a CI run, for a
    reason its lost message did not say; the first failure is logged with what initdb said."""
    for attempt in (1, 2):
        shutil.rmtree(server.data_dir, ignore_errors=True)
        try:
            server.init(archive, archive_timeout, settings=SETTINGS, remote_password_auth=True,
                        initdb_args=INITDB_ARGS)  # fmt: skip
            return
        except LocalPostgresError as error:
            if attempt == 2:
                raise
            log.warning("initdb failed; trying once more", extra={"data_dir": str(server.data_dir),
                                                                   "error": str(error)})  # fmt: skip
            time.sleep(2)


def _system_identifier(server: PgServer) -> str | None:
    """The identifier of the database system serving at the server's port (None: nothing answers)."""
    try:
        with server.connect() as connection:
            return str(connection.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0])
    except Exception:
        return None


def _serving(server: PgServer) -> bool:
    try:
        with server.connect() as connection:
            connection.execute("SELECT 1")
        return True
    except Exception:
        return False


# --- restoring them (the partner region) ---


@dataclass(frozen=True)
class FleetJob:
    """One database to restore here, from `source` (a barman archive base URL) into `data_dir`."""

    name: str
    priority: int
    paying: bool
    port: int
    data_dir: str
    source: str
    source_endpoint: str | None
    archive_to: str | None
    archive_to_endpoint: str | None
    archive_timeout: int
    listen: str = "*"
    target_time: str | None = None  # ISO 8601: recover to this moment (beside the live one), not to the end


_interface_lock = threading.Lock()


def restore_database(job: FleetJob) -> dict:
    """Restore and start one database (in a worker process); returns its figures. Raises BackupError."""
    from barman.clients import cloud_restore
    from barman.clients.cloud_restore import CloudBackupDownloaderObjectStore
    from barman.cloud import ALLOWED_COMPRESSIONS, CloudBackupCatalog
    from barman.cloud_providers import get_cloud_interface
    from barman.infofile import BackupInfo
    from barman.xlog import is_history_file, is_wal_file

    started = time.time()
    target = Path(job.data_dir)
    server = PgServer(target, job.port)
    staging = target.parent / f".{target.name}.restoring"
    shutil.rmtree(staging, ignore_errors=True)
    endpoint = ["--endpoint-url", job.source_endpoint] if job.source_endpoint else []
    config = cloud_restore.parse_arguments(["--cloud-provider", "aws-s3", *endpoint, job.source.rstrip("/"), job.name,
                                            "latest", str(staging)])  # fmt: skip
    with _interface_lock:  # creating boto3 sessions is not thread-safe
        interface = get_cloud_interface(config)
    try:
        catalog = CloudBackupCatalog(interface, job.name)
        done = [b for b in catalog.get_backup_list().values() if b.status == BackupInfo.DONE]
        if job.target_time:
            goal = clock.parse_utc(job.target_time)
            done = [b for b in done if b.end_time and b.end_time <= goal]
        if not done:
            when = f" that ended before {job.target_time}" if job.target_time else ""
            raise BackupError(f"{job.name}: no finished base backup{when} in {job.source}/{job.name}")
        backup = max(done, key=lambda b: b.end_time)
        serving = _system_identifier(server)
        if serving is not None:
            if serving == str(backup.systemid):
                return {"name": job.name, "started_at": started, "ready_at": time.time(), "restored": False}
            raise BackupError(f"{job.name}: another database serves on port {job.port} in {target}; stop it "
                              "(`bulkhead db stop-fleet`) and run again")  # fmt: skip
        staging.mkdir(parents=True)
        CloudBackupDownloaderObjectStore(interface, catalog).download_backup(backup, str(staging), {})
        wal_dir = staging / "pg_wal"
        wal_dir.mkdir(exist_ok=True)
        (wal_dir / "archive_status").mkdir(exist_ok=True)
        paths = catalog.get_wal_paths()
        segments = wal_to_replay([n for n in paths if is_wal_file(n)], backup.begin_wal, bool(job.target_time))
        histories = [] if job.target_time else [n for n in paths if is_history_file(n)]
        for name in [*histories, *segments]:
            compression = ALLOWED_COMPRESSIONS.get(os.path.splitext(paths[name])[1])
            interface.download_file(paths[name], str(wal_dir / name), compression)
            # Already archived (where it came from): never shipped again from here.
            (wal_dir / "archive_status" / f"{name}.done").touch()
        _configure(staging, job)
        for path in [staging, *staging.rglob("*")]:
            shutil.chown(path, "postgres", "postgres")
        staging.chmod(0o700)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        interface.close()
    server.start(listen=job.listen, environment=_credentials())
    server.wait_until_primary(timeout=300)
    return {"name": job.name, "started_at": started, "ready_at": time.time(), "restored": True,
            "backup_id": backup.backup_id, "wal_segments": len(segments)}  # fmt: skip


def wal_to_replay(segments: list[str], begin_wal: str, one_timeline: bool) -> list[str]:
    """The archived segments a restore from a backup starting at `begin_wal` replays, in order: from its
    position on, on its timeline (a copy at a point in time) or on it and every later one (a full restore,
    which follows the newest timeline as recovery_target_timeline 'latest' does)."""
    timeline, position = begin_wal[:8], begin_wal[8:]
    chosen = [name for name in segments if name[8:] >= position
              and (name[:8] == timeline if one_timeline else name[:8] >= timeline)]  # fmt: skip
    return sorted(chosen, key=lambda name: (name[8:], name[:8]))


def _configure(data_dir: Path, job: FleetJob) -> None:
    """Archive recovery over the WAL laid in pg_wal (restore_command has nothing more), then promotion onto a
    new timeline: its WAL can never be mistaken for what the lost copy archived after the last segment that
    reached here. A full restore then archives into this region's archive; a copy at a point in time stops
    at that moment and serves without archiving, beside the live database."""
    for leftover in ("postmaster.pid", "recovery.signal", "standby.signal"):
        (data_dir / leftover).unlink(missing_ok=True)
    recovery = {"restore_command": "/bin/false", "recovery_target_action": "promote"}
    if job.target_time:
        settings = {**recovery, "archive_mode": "off", "recovery_target_time": job.target_time,
                    "recovery_target_timeline": "current"}  # fmt: skip
    elif job.archive_to:
        archive = _archive(job.archive_to, job.name, job.archive_to_endpoint)
        settings = {**server_settings(archive, job.archive_timeout), **recovery, "recovery_target_timeline": "latest"}
    else:
        settings = {**recovery, "archive_mode": "off", "recovery_target_timeline": "latest"}
    (data_dir / "recovery.signal").touch()
    settings = {**settings, "port": str(job.port)}
    with (data_dir / "postgresql.auto.conf").open("a") as conf:
        conf.write("\n# Written by bulkhead db restore-fleet\n" + "\n".join(conf_lines(settings)) + "\n")


def _credentials() -> dict[str, str]:
    """What archive_command needs from this process's environment (the local cloud's keys; none on AWS)."""
    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
             "AWS_REQUEST_CHECKSUM_CALCULATION", "AWS_RESPONSE_CHECKSUM_VALIDATION")  # fmt: skip
    return {name: os.environ[name] for name in names if name in os.environ}


def _warm() -> None:
    """A worker imports barman and boto3 once, before its first job."""
    import barman.clients.cloud_restore
    import barman.cloud_providers.aws_s3

    del barman


def restore(jobs: list[FleetJob], concurrency: int, on_event: Callable[[str, dict], None] | None = None,
            backup_after: bool = True) -> list[dict]:  # fmt: skip
    """Restore every job, most important first, `concurrency` at a time in as many worker processes.

    Returns one entry per job, in the order they started: started_at is when it left the queue (the
    moment a worker was free for it), ready_at when it served. A failed job is its own entry with an
    error; the others carry on. With `backup_after`, each restored database then gets a base backup
    in its new archive, so that it is protected where it now lives.
    """
    context = multiprocessing.get_context("spawn")
    dispatched: dict[str, float] = {}
    with concurrent.futures.ProcessPoolExecutor(concurrency, mp_context=context, initializer=_warm) as pool:

        def one(job: FleetJob) -> dict:
            return pool.submit(restore_database, job).result()

        def started(job: FleetJob) -> None:
            dispatched[job.name] = time.time()
            if on_event:
                on_event("started", {"name": job.name, "priority": job.priority, "paying": job.paying})

        def finished(outcome) -> None:
            if on_event:
                figures = {"name": outcome.job.name, "seconds": round(outcome.seconds, 2), "error": outcome.error}
                on_event("done" if outcome.error is None else "failed", figures)

        outcomes = restore_fleet(jobs, concurrency, on_outcome=finished, on_start=started, restore_one=one)
    results = []
    for outcome in outcomes:
        entry = {**asdict(outcome.job), "started_at": dispatched.get(outcome.job.name), "error": outcome.error}
        if outcome.backup:
            entry.update({k: v for k, v in outcome.backup.items() if k != "started_at"})
        results.append(entry)
    if backup_after:
        # Protected where they now live: a base backup of each in its new archive, `concurrency` at a time.
        owed = [(entry, job) for entry, job in zip(results, [o.job for o in outcomes], strict=True)
                if entry["error"] is None and job.archive_to and entry.get("restored")]  # fmt: skip

        def protect(pair: tuple[dict, FleetJob]) -> None:
            entry, job = pair
            archive = _archive(job.archive_to, job.name, job.archive_to_endpoint)
            entry["new_backup_id"] = base_backup.backup(archive, "127.0.0.1", job.port, "postgres", jobs=1).backup_id
            if on_event:
                on_event("protected", {"name": job.name, "backup_id": entry["new_backup_id"]})

        with concurrent.futures.ThreadPoolExecutor(max(1, concurrency)) as backups:
            list(backups.map(protect, owed))
    return sorted(results, key=lambda e: e["started_at"] or float("inf"))


def stop_all(databases: list[Database], root: Path, drain: bool = True) -> list[str]:
    """Stop every database of the plan running here, each (with `drain`) once its last WAL is archived, so
    that a restore elsewhere has every committed row; then a fast shutdown. Returns those stopped."""
    stopped = []
    for database in databases:
        server = PgServer(root / database.name, database.port)
        if (server.data_dir / "postmaster.pid").exists():
            if drain and _serving(server):
                with contextlib.suppress(Exception):
                    server.switch_and_wait_archived(timeout=60)
            as_postgres(str(server.pg_ctl), "-D", str(server.data_dir), "-m", "fast", "-w", "stop", check=False)
            stopped.append(database.name)
    return stopped
