"""Before and after a promotion: archive what the lost leader never did.

A leader archives each WAL segment shortly after finishing it. When it is lost in that moment (a lost
volume, a power cut), its last whole segments are on its standbys but nowhere in the archive: a standby
with `archive_mode = on` marks what it streams as done, and once promoted archives only its new timeline.
Every base backup taken before the failover then ends at that hole: a member rebuilt from the archive
stops there, and no restore crosses the failover.

So the standby Patroni is about to promote (its `pre_promote` hook) ships every whole segment it has
received of its timeline that the archive lacks, and once promoted (`on_role_change`) every whole segment
of an earlier timeline up to where that timeline ended (the newest `.history` file says where), which the
end-of-recovery checkpoint may otherwise remove first. History files go too. A segment counts as whole
only if it ends at or before the point the server says it has received, or the switch point; a recycled
or preallocated file (its header names another place in the WAL, or none) is never sent. Uploads go
through the shipper's `Uploader`: never overwriting, and a name already archived counts only if its
content is the same.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from barman import xlog

from bulkhead.backup.settings import Archive, BackupError
from bulkhead.backup.shipper import Uploader, segment_problem

log = logging.getLogger("bulkhead.db.heal")


@dataclass
class Healed:
    """What a heal found: files shipped now, files the archive already had, and files it could not ship."""

    shipped: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def switch_points(history: str) -> dict[int, int]:
    """Each earlier timeline and the LSN where it ended, from a `.history` file's text."""
    points = {}
    for line in history.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) < 2:
            continue
        try:
            points[int(words[0])] = xlog.parse_lsn(words[1])
        except ValueError:
            raise BackupError(f"a timeline history line is not `TLI LSN REASON`: {line!r}") from None
    return points


def whole_files(pg_wal: Path, received: int | None = None) -> list[Path]:
    """The history files, then every whole segment: of an earlier timeline, ending by its switch point; of
    the current one (the newest history file's timeline, or 1), ending by `received` when that is given."""
    histories = sorted((p for p in pg_wal.glob("*.history") if xlog.is_history_file(p.name)), key=lambda p: p.name)
    points = switch_points(histories[-1].read_text()) if histories else {}
    if received is not None:
        points[int(histories[-1].name.split(".")[0], 16) if histories else 1] = received
    segments = []
    for path in sorted(pg_wal.iterdir(), key=lambda p: p.name):
        if not xlog.is_wal_file(path.name):
            continue
        line, log_id, segment = xlog.decode_segment_name(path.name)
        if line not in points or segment_problem(path):
            continue
        try:
            size = path.stat().st_size
        except FileNotFoundError:  # removed by a checkpoint meanwhile
            continue
        start = (log_id * (2**32 // size) + segment) * size
        if start + size <= points[line]:
            segments.append(path)
    return [*histories, *segments]


def received_lsn(conninfo: str) -> int | None:
    """How far a standby has received WAL (or replayed it, if further); None on a primary, whose own archiver
    ships its current timeline."""
    import psycopg

    with psycopg.connect(conninfo, connect_timeout=5) as connection:
        standby, received, replayed = connection.execute(
            "SELECT pg_is_in_recovery(), pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text"
        ).fetchone()
    if not standby:
        return None
    return max((xlog.parse_lsn(lsn) for lsn in (received, replayed) if lsn), default=0)


def _archived(uploader: Uploader, keys: list[str]) -> set[str]:
    """Which of `keys` the archive holds: one listing per directory (256 segments each), not a request per
    file, so that a standby with a long pg_wal does not hold its promotion up."""
    client = uploader.cloud.s3.meta.client
    found: set[str] = set()
    for directory in sorted({key.rsplit("/", 1)[0] + "/" for key in keys}):
        # The delimiter keeps the listing of wals/ itself (history files) from walking every segment directory.
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=uploader.cloud.bucket_name, Prefix=directory,
                                                                 Delimiter="/")  # fmt: skip
        for page in pages:
            found.update(item["Key"] for item in page.get("Contents", []))
    return found & set(keys)


def heal(data_dir: Path, archive: Archive, compression: str, received: int | None = None) -> Healed:
    """Ship what `whole_files` finds and the archive lacks; report each file's fate."""
    uploader = Uploader(archive, compression)
    healed = Healed()
    files = {path: uploader.key(path) for path in whole_files(data_dir / "pg_wal", received)}
    archived = _archived(uploader, list(files.values()))
    for path, key in files.items():
        if key in archived:
            healed.present.append(path.name)
            continue
        try:
            uploader.ship(path)
        except (BackupError, OSError) as error:
            healed.failed[path.name] = str(error)
            log.error("could not archive a WAL file", extra={"wal": path.name, "error": str(error)})
            continue
        healed.shipped.append(path.name)
        log.warning("archived a file the lost leader never did", extra={"wal": path.name})
    return healed
