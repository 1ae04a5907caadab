"""The `bulkhead db` command group."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bulkhead import clock
from bulkhead.backup import archive_lag, base_backup, catalog, copy, fleet_commands, heal, restore, shipper
from bulkhead.backup.decisions import seconds_until_due
from bulkhead.backup.settings import (
    DEFAULT_ARCHIVE_TIMEOUT,
    DEFAULT_MAX_PARALLEL,
    WAL_COMPRESSION,
    Archive,
    BackupError,
    conf_lines,
    heal_command,
    replica_command,
    server_settings,
)
from bulkhead.ha import commands as ha_commands


def _archive(args: argparse.Namespace, url: str | None = None, endpoint: str | None = None) -> Archive:
    return Archive(url or args.archive, args.server, endpoint if url else args.endpoint_url)


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of 1 or more")
    return number


def _target_time(value: str) -> dt.datetime:
    try:
        return clock.parse_utc(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def cmd_archive_command(args: argparse.Namespace) -> int:
    archive = _archive(args)
    settings = server_settings(archive, args.archive_timeout, args.max_parallel)
    if args.json:
        # For Patroni: restore_command belongs in its recovery settings, not with the server's parameters.
        restore = settings.pop("restore_command")
        document = {"parameters": settings, "restore_command": restore, "replica_command": replica_command(archive),
                    "heal_command": heal_command(archive)}  # fmt: skip
        print(json.dumps(document, indent=2, sort_keys=True))
        return 0
    print("\n".join(conf_lines(settings)))
    return 0


def cmd_archive_wal(args: argparse.Namespace) -> int:
    """archive_command's Python path: exit 0 only once S3 has the file (PostgreSQL retries otherwise)."""
    shipper.archive_wal(args.wal_path, _archive(args), WAL_COMPRESSION, args.max_parallel, args.linger, args.timeout)
    return 0


def cmd_archive_heal(args: argparse.Namespace) -> int:
    """Around a promotion: archive the whole WAL files the lost leader never did; exit 1 if one failed."""
    conninfo = f"host={args.host} port={args.port} user={args.user} dbname=postgres"
    received = heal.received_lsn(conninfo) if args.host else None
    healed = heal.heal(Path(args.data_dir), _archive(args), WAL_COMPRESSION, received)
    print(json.dumps({"shipped": healed.shipped, "already_archived": len(healed.present), "failed": healed.failed}))
    return 1 if healed.failed else 0


def cmd_archive_status(args: argparse.Namespace) -> int:
    lag = archive_lag.archive_lag(f"host={args.host} port={args.port} user={args.user} dbname=postgres")
    if args.json:
        print(json.dumps(lag.as_dict(), indent=2))
        return 0
    if lag.role == "replica":
        print(f"{args.host}:{args.port} is a replica: its primary archives the WAL")
        return 0
    failed = f"; {lag.failed_count} failed attempts, last on {lag.last_failed_wal}" if lag.failed_count else ""
    print(f"writing {lag.current_wal}, last archived {lag.last_archived_wal or '(none yet)'}: "
          f"{lag.lag_segments} segments and {lag.lag_seconds:.1f} s behind{failed}")  # fmt: skip
    return 0


log = logging.getLogger("bulkhead.db")
# After a failed scheduled backup (archive down, server restarting), try again this soon, not a day later.
RETRY_SECONDS = 60
# How often a replica's backup program looks again whether it has become the leader.
REPLICA_CHECK_SECONDS = 10


def cmd_backup(args: argparse.Namespace) -> int:
    if args.every:
        return _backup_on_schedule(args)
    console = Console(stderr=True)
    with console.status("starting base backup") as status:

        def uploaded(size: int) -> None:
            status.update(f"uploading base backup: {size / 2**20:.1f} MiB so far")

        started = dt.datetime.now(dt.UTC)
        made = base_backup.backup(
            _archive(args), args.host, args.port, args.user, args.jobs, args.timeout, on_progress=uploaded
        )
    seconds = (dt.datetime.now(dt.UTC) - started).total_seconds()
    print(f"backup {made.backup_id} done in {seconds:.1f} s: WAL {made.begin_wal}..{made.end_wal}")
    return 0


def _backup_on_schedule(args: argparse.Namespace) -> int:
    """Run for ever under a supervisor: a base backup whenever the newest in the archive is `--every` old.

    Every database member runs this; only the one that is not in recovery (Patroni's leader) backs up.
    """
    archive = _archive(args)
    conninfo = f"host={args.host} port={args.port} user={args.user} dbname=postgres"
    while True:
        try:
            if base_backup.in_recovery(conninfo):
                time.sleep(REPLICA_CHECK_SECONDS)
                continue
            backups = catalog.list_backups(archive)
            newest = backups[-1].end_time if backups else None
            wait = seconds_until_due(newest, args.every, dt.datetime.now(dt.UTC))
            if wait > 0:
                log.info("next base backup due", extra={"in_seconds": round(wait)})
                time.sleep(wait)
                continue
            made = base_backup.backup(archive, args.host, args.port, args.user, args.jobs, args.timeout)
            log.info("scheduled base backup done", extra={"backup_id": made.backup_id, "end_wal": made.end_wal})
        except BackupError as error:
            log.error(
                "scheduled base backup failed; retrying", extra={"error": str(error), "in_seconds": RETRY_SECONDS}
            )
            time.sleep(RETRY_SECONDS)


def cmd_list(args: argparse.Namespace) -> int:
    backups = catalog.list_backups(_archive(args))
    if args.json:
        print(json.dumps([b.as_dict() for b in backups], indent=2))
        return 0
    table = Table(title=f"backups of {args.server}")
    for column in ("backup id", "status", "begin", "end", "begin WAL", "end WAL"):
        table.add_column(column)
    for b in backups:
        table.add_row(
            b.backup_id, b.status, *(str(t or "") for t in (b.begin_time, b.end_time)), b.begin_wal, b.end_wal
        )
    Console().print(table)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    with Console(stderr=True).status("reading the archive back"):
        result = catalog.verify(_archive(args))
    if not result.ok:
        raise BackupError(result.problem())
    print(
        f"ok: backup {result.backup.backup_id} and WAL {result.continuity.first}..{result.continuity.last_contiguous} "
        "are present and readable"
    )
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    with Console(stderr=True).status(f"restoring into {args.to}"):
        chosen = restore.restore(_archive(args), Path(args.to), args.target_time, args.force, args.owner)
    goal = f"to {args.target_time.isoformat()}" if args.target_time else "to the end of the archive"
    print(f"restored backup {chosen.backup_id} into {args.to}; starting PostgreSQL there recovers {goal}")
    return 0


def cmd_copy_archive(args: argparse.Namespace) -> int:
    report = copy.copy_archive(_archive(args), _archive(args, args.to, args.to_endpoint_url))
    print(f"copied {report.copied} objects ({report.bytes / 2**20:.1f} MiB), {report.skipped} already there, "
          f"in {report.seconds:.1f} s")  # fmt: skip
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add `bulkhead db ...` to the command line."""
    db = commands.add_parser(
        "db",
        help="the database: continuous backup and restore (barman-cloud), failover (Patroni)",
        description="Back up, list, verify, restore and copy a PostgreSQL server's archive in S3 (these verbs take "
        "--archive s3://BUCKET/PREFIX --server NAME [--endpoint-url URL]); see a region's cluster and move its "
        "leader (status, switchover, failover, url: these take --region).",
    )
    verbs = db.add_subparsers(dest="verb", required=True, metavar="VERB")
    ha_commands.register_verbs(verbs)
    fleet_commands.register_verbs(verbs)

    def verb(name: str, help_text: str, handler) -> argparse.ArgumentParser:
        parser = verbs.add_parser(name, help=help_text, description=help_text)
        parser.add_argument("--archive", required=True, help="where the archive lives: s3://BUCKET/PREFIX")
        parser.add_argument("--server", required=True, help="the server's name in the archive, e.g. pg-us-east-1")
        parser.add_argument("--endpoint-url", help="an S3 endpoint other than AWS's (e.g. the local cloud)")
        parser.set_defaults(handler=handler)
        return parser

    command = verb("archive-command", "print the postgresql.conf lines for continuous archiving", cmd_archive_command)
    command.add_argument(
        "--archive-timeout", type=int, default=DEFAULT_ARCHIVE_TIMEOUT, help="seconds; bounds data lost (default 60)"
    )
    command.add_argument(
        "--max-parallel",
        type=_positive,
        default=DEFAULT_MAX_PARALLEL,
        help=f"WAL segments shipped at once while the archive is behind (default {DEFAULT_MAX_PARALLEL})",
    )
    command.add_argument(
        "--json",
        action="store_true",
        help="print {parameters, restore_command, replica_command, heal_command} for Patroni (replica_command "
        "builds a member from the newest base backup: append the data directory; heal_command is for "
        "on_role_change: append --data-dir DIR)",
    )
    wal = verb(
        "archive-wal",
        "what archive_command runs when a segment's marker is not there yet: start the WAL shipper (it ships "
        "the ready segments, --max-parallel at a time) and exit 0 once S3 has WAL_PATH (run in the data directory)",
        cmd_archive_wal,
    )
    wal.add_argument("wal_path", help="the WAL file, relative to the data directory (archive_command's %%p)")
    wal.add_argument("--max-parallel", type=_positive, default=DEFAULT_MAX_PARALLEL, help="segments shipped at once")
    wal.add_argument("--linger", type=float, default=shipper.DEFAULT_LINGER,
                     help="seconds the shipper waits for more WAL before it exits (default %(default)s)")  # fmt: skip
    wal.add_argument("--timeout", type=float, default=300, help="seconds to wait for this segment (default 300)")
    healing = verb(
        "archive-heal",
        "before and after a promotion (Patroni's pre_promote and on_role_change): archive every whole WAL segment "
        "and history file this server holds and the archive lacks, the hole a leader lost before archiving them "
        "leaves; prints {shipped, already_archived, failed}",
        cmd_archive_heal,
    )
    healing.add_argument("--data-dir", required=True, help="the server's data directory")
    healing.add_argument("--host", help="on a standby about to be promoted (Patroni's pre_promote): its host or "
                         "socket directory; the whole segments of its own timeline it received go too")  # fmt: skip
    healing.add_argument("--port", type=int, default=5432)
    healing.add_argument("--user", default="postgres", help="a superuser or pg_monitor member (default postgres)")
    status = verbs.add_parser(
        "archive-status",
        help="how far a server's WAL archive is behind: segments finished but not archived, and for how long",
        description="Read the archive lag from the server itself (pg_stat_archiver and its archive_status "
        "directory): any PostgreSQL 15, with or without Patroni. Needs a superuser or pg_monitor.",
    )
    status.add_argument("--host", required=True, help="PostgreSQL host or socket directory")
    status.add_argument("--port", type=int, default=5432)
    status.add_argument("--user", default="postgres", help="a superuser or a member of pg_monitor (default postgres)")
    status.add_argument("--json", action="store_true",
                        help="print {current_wal, last_archived_wal, lag_segments, lag_seconds, ...}")  # fmt: skip
    status.set_defaults(handler=cmd_archive_status)
    backup_parser = verb("backup", "take a base backup (checks that WAL archiving works first)", cmd_backup)
    backup_parser.add_argument("--host", required=True, help="PostgreSQL host (the backup runs on the database host)")
    backup_parser.add_argument("--port", type=int, default=5432)
    backup_parser.add_argument("--user", default="postgres", help="a superuser or replication user (default postgres)")
    backup_parser.add_argument("--jobs", type=int, default=4, help="parallel upload processes (default 4)")
    backup_parser.add_argument(
        "--timeout", type=float, default=3600, help="give up after this many seconds (default 3600)"
    )
    backup_parser.add_argument(
        "--every",
        type=float,
        metavar="SECONDS",
        help="run until stopped, taking a backup whenever the newest in the archive is this old (for supervisord)",
    )
    listing = verb("list", "list backups with their WAL range and times", cmd_list)
    listing.add_argument("--json", action="store_true", help="print as JSON")
    verb("verify", "check the newest backup and every WAL segment after it are present and readable", cmd_verify)
    restore_parser = verb(
        "restore", "lay down a data directory that recovers to the latest or a given time", cmd_restore
    )
    restore_parser.add_argument("--to", required=True, help="the data directory to create")
    when = restore_parser.add_mutually_exclusive_group()
    when.add_argument("--target-time", type=_target_time, help="ISO 8601 time to recover to")
    when.add_argument("--latest", action="store_true", help="recover to the end of the archive (the default)")
    restore_parser.add_argument("--force", action="store_true", help="replace a non-empty --to directory")
    restore_parser.add_argument("--owner", default="postgres", help="the user PostgreSQL runs as (default postgres)")
    copy_parser = verb("copy-archive", "copy the archive to another bucket, incrementally", cmd_copy_archive)
    copy_parser.add_argument("--to", required=True, help="destination s3://BUCKET/PREFIX (same server name)")
    copy_parser.add_argument("--to-endpoint-url", help="the destination's S3 endpoint, if not AWS's")
