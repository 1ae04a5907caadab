"""`bulkhead db create-fleet|restore-fleet|stop-fleet`: shared databases, on the host that runs them or,
with --region, on a region's database hosts."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bulkhead import project
from bulkhead.backup import fleet
from bulkhead.backup.fleet_region import PASSWORD_VARIABLE, RegionFleet, copy_to_replica, fleet_state
from bulkhead.backup.settings import DEFAULT_ARCHIVE_TIMEOUT, BackupError
from bulkhead.errors import UsageError


def _selected(args: argparse.Namespace) -> list[fleet.Database]:
    databases = fleet.read_plan(Path(args.plan), args.base_port)
    if getattr(args, "only", None):
        wanted = set(args.only.split(","))
        unknown = wanted - {d.name for d in databases}
        if unknown:
            raise UsageError(f"--only names {', '.join(sorted(unknown))}, which the plan {args.plan} does not hold")
        databases = [d for d in databases if d.name in wanted]
    return databases


def _environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("AWS_")}


def cmd_create_fleet(args: argparse.Namespace) -> int:
    password = os.environ.get(PASSWORD_VARIABLE)
    if not password:
        raise UsageError(f"set {PASSWORD_VARIABLE}: the password clients of the shared databases use")
    databases = _selected(args)
    if args.region:
        if not args.prefix:
            raise UsageError("--region needs --prefix: where in the region's archive bucket the databases archive")
        made = RegionFleet(project.find(args.project), args.region).create(
            Path(args.plan), databases, args.prefix, password, args.archive_timeout, args.base_port
        )
    else:
        if not args.archive:
            raise UsageError("give --archive s3://BUCKET/PREFIX (on a host) or --region R --prefix P (from here)")
        made = fleet.create(databases, Path(args.root), args.archive, args.endpoint_url, password, args.archive_timeout,
                            _environment(), listen=args.listen)  # fmt: skip
    print(json.dumps(made, indent=2) if args.json else f"{sum(m['created'] for m in made)} databases made, "
          f"{sum(not m['created'] for m in made)} already serving")  # fmt: skip
    return 0


def cmd_restore_fleet(args: argparse.Namespace) -> int:
    databases = _selected(args)
    console = Console(stderr=True)
    if args.region:
        if not (args.source_region and args.prefix):
            raise UsageError("--region needs --source-region (whose replica to restore) and --prefix")
        extra = [*(["--only", args.only] if args.only else []),
                 *(["--target-time", args.target_time, "--beside-port", str(args.beside_port)] if args.target_time
                   else [])]  # fmt: skip
        with console.status(f"restoring {len(databases)} databases in {args.region}"):
            result = RegionFleet(project.find(args.project), args.region).restore(
                Path(args.plan), args.source_region, args.prefix, args.concurrency, args.base_port,
                not args.no_backup_after, extra, databases)  # fmt: skip
        entries = result["databases"]
    else:
        if not args.archive:
            raise UsageError("give --archive s3://BUCKET/PREFIX (on a host) or --region R --source-region S --prefix P")
        root = Path(args.root)
        root.mkdir(parents=True, exist_ok=True)
        os.chown(root, *_postgres_ids())
        if args.target_time and not args.beside_port:
            raise UsageError("--target-time needs --beside-port: a copy at a point in time serves beside the live one")
        if args.beside_port and len(databases) != 1:
            raise UsageError("--beside-port restores one database: name it with --only")
        stamp = args.target_time.replace(":", "").replace("-", "")[:15] if args.target_time else ""
        jobs = [fleet.FleetJob(d.name, d.priority, d.paying, args.beside_port or d.port,
                               str(root / (f"{d.name}-at-{stamp}" if args.beside_port else d.name)), args.archive,
                               args.endpoint_url, None if args.target_time else args.archive_to,
                               args.archive_to_endpoint_url or args.endpoint_url, args.archive_timeout, args.listen,
                               args.target_time) for d in databases]  # fmt: skip

        def progress(kind: str, what: dict) -> None:
            if not args.json:
                console.print(f"{kind} {what['name']}" + (f": {what['error']}" if what.get("error") else ""),
                              highlight=False, markup=False)  # fmt: skip

        entries = fleet.restore(jobs, args.concurrency, progress, backup_after=not args.no_backup_after)
        result = {"databases": entries}
    failed = [e for e in entries if e.get("error")]
    if args.json:
        print(json.dumps(result if args.region else entries, indent=2))
    else:
        table = Table(title=f"{len(entries) - len(failed)} of {len(entries)} databases restored")
        for column in ("database", "paying", "priority", "seconds", "error"):
            table.add_column(column)
        for entry in entries:
            seconds = (entry["ready_at"] - entry["started_at"]) if entry.get("ready_at") else None
            table.add_row(entry["name"], "yes" if entry["paying"] else "", str(entry["priority"]),
                          "-" if seconds is None else f"{seconds:.1f}", entry.get("error") or "")  # fmt: skip
        Console().print(table)
    if failed:
        raise BackupError(f"{len(failed)} of {len(entries)} databases were not restored (first: {failed[0]['name']}: "
                          f"{failed[0]['error']}); the others serve")  # fmt: skip
    return 0


def _postgres_ids() -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid


def cmd_stop_fleet(args: argparse.Namespace) -> int:
    databases = _selected(args)
    if args.region:
        stopped = RegionFleet(project.find(args.project), args.region).stop(Path(args.plan), args.base_port,
                                                                            drain=not args.no_drain)  # fmt: skip
    else:
        stopped = fleet.stop_all(databases, Path(args.root), drain=not args.no_drain)
    print(json.dumps(stopped) if args.json else f"stopped {len(stopped)} databases")
    return 0


def cmd_fleet_copy(args: argparse.Namespace) -> int:
    if not args.region:
        raise UsageError("fleet-copy needs --region: the region holding the replica")
    copied = copy_to_replica(project.find(args.project), args.region, args.source_region, args.prefix, _selected(args))
    if args.json:
        print(json.dumps(copied, indent=2))
    else:
        total = sum(entry["copied"] for entry in copied.values())
        print(f"copied {total} objects for {len(copied)} databases into {args.region}'s replica")
    return 0


def cmd_fleet_status(args: argparse.Namespace) -> int:
    if not args.region:
        raise UsageError("fleet-status needs --region: the region holding the replica")
    databases = _selected(args)
    state = fleet_state(project.find(args.project), args.region, args.source_region, args.prefix, databases)
    missing = [name for name, entry in state.items() if not entry["replica"]["backup"]]
    behind = [
        name
        for name, entry in state.items()
        if entry["source"] is not None and entry["source"]["newest_wal"] != entry["replica"]["newest_wal"]
    ]
    if args.json:
        print(json.dumps(state, indent=2))
    else:
        table = Table(title=f"replica in {args.region} of {args.source_region}'s archive ({args.prefix})")
        for column in ("database", "backup", "newest WAL", "in the source"):
            table.add_column(column)
        for name, entry in state.items():
            source = entry["source"]
            table.add_row(name, entry["replica"]["backup"] or "NONE", entry["replica"]["newest_wal"] or "-",
                          "(no answer)" if source is None else source["newest_wal"] or "-")  # fmt: skip
        Console().print(table)
    if missing:
        raise BackupError(f"{len(missing)} databases have no base backup in the replica (first: {missing[0]}); "
                          "while the source region answers, run the copy-archive runbook")  # fmt: skip
    if args.caught_up and behind:
        raise BackupError(f"the replica is behind the source for {len(behind)} databases (first: {behind[0]}); wait "
                          "for replication, or run the copy-archive runbook")  # fmt: skip
    return 0


def register_verbs(verbs: argparse._SubParsersAction) -> None:
    """Add the fleet verbs to `bulkhead db`."""

    def verb(name: str, help_text: str, handler) -> argparse.ArgumentParser:
        parser = verbs.add_parser(name, help=help_text, description=help_text + ". " + (fleet.__doc__ or "").split(
            "\n\n")[0].replace("\n", " "))  # fmt: skip
        parser.add_argument("--plan", required=True, help="YAML list of {name, priority, paying}; a database's port "
                            "is --base-port plus its place in the plan")  # fmt: skip
        parser.add_argument("--base-port", type=int, default=fleet.DEFAULT_BASE_PORT, help="default 5500")
        parser.add_argument("--root", default=str(fleet.DEFAULT_ROOT), help=f"default {fleet.DEFAULT_ROOT}")
        parser.add_argument("--region", help="run on this region's database hosts, from the operator's machine")
        parser.add_argument("--json", action="store_true", help="print the outcome as JSON")
        parser.set_defaults(handler=handler)
        return parser

    create = verb("create-fleet", "make the plan's shared databases, each archiving under its own name",
                  cmd_create_fleet)  # fmt: skip
    restore = verb("restore-fleet", "restore the plan's databases from an archive: paying first, then priority, "
                   "several at a time", cmd_restore_fleet)  # fmt: skip
    stop = verb("stop-fleet", "archive the plan's databases' last WAL, then stop them", cmd_stop_fleet)
    stop.add_argument("--no-drain", action="store_true", help="stop at once, without archiving the last WAL first")
    status = verb("fleet-status", "what the replica of a region's archive holds per database (and the source, "
                  "when it answers)", cmd_fleet_status)  # fmt: skip
    fleet_copy = verb("fleet-copy", "copy each database's archive into its replica in the partner region, what "
                      "replication has not delivered yet (the source region must answer)", cmd_fleet_copy)  # fmt: skip
    for parser in (status, fleet_copy):
        parser.add_argument("--source-region", required=True, help="the region whose archive is replicated")
        parser.add_argument("--prefix", required=True, help="the key prefix in the buckets, e.g. fleet")
    status.add_argument("--caught-up", action="store_true",
                        help="fail unless the replica holds the source's newest WAL for every database")  # fmt: skip
    for parser in (create, restore):
        parser.add_argument("--archive", help="(on a host) the archive's base s3://BUCKET/PREFIX; server = database")
        parser.add_argument("--endpoint-url", help="an S3 endpoint other than AWS's")
        parser.add_argument("--archive-timeout", type=int, default=DEFAULT_ARCHIVE_TIMEOUT, help="seconds (default 60)")
        parser.add_argument("--listen", default="*", help="listen_addresses (default *)")
        parser.add_argument("--prefix", help="(with --region) the key prefix in the region's buckets, e.g. fleet")
        parser.add_argument("--only", help="comma-separated names: just these of the plan")
    restore.add_argument("--archive-to", help="(on a host) where the restored databases archive from now on")
    restore.add_argument("--archive-to-endpoint-url", help="its endpoint, if not --endpoint-url")
    restore.add_argument("--source-region", help="(with --region) restore from the replica of this region's archive; "
                         "the region itself: from its own archive")  # fmt: skip
    restore.add_argument("--target-time", help="ISO 8601: recover to this moment instead of the end (with --only, "
                         "--beside-port); the copy does not archive")  # fmt: skip
    restore.add_argument("--beside-port", type=int, help="serve the copy on this port, beside the live database")
    restore.add_argument("--concurrency", type=int, default=os.cpu_count() or 2,
                         help="databases restored at once (default: this machine's cores)")  # fmt: skip
    restore.add_argument("--no-backup-after", action="store_true",
                         help="skip the base backup each restored database takes in its new archive")  # fmt: skip
