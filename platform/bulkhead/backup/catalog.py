"""What an archive holds: its base backups (from the `backup.info` barman writes) and its WAL.

`backup_from_info` is pure; `list_backups` and `verify` read the archive through `ArchiveStore`.
"""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass

import barman.output  # noqa: F401  (barman.infofile and barman.output import each other: output must load first)
from barman.infofile import BackupInfo

from bulkhead.backup import wal
from bulkhead.backup.decisions import Verification, choose_backup
from bulkhead.backup.settings import Archive
from bulkhead.backup.store import ArchiveStore


@dataclass(frozen=True)
class Backup:
    """One base backup in the archive."""

    backup_id: str
    status: str
    begin_time: dt.datetime | None
    end_time: dt.datetime | None
    begin_wal: str
    end_wal: str
    segment_size: int = wal.DEFAULT_SEGMENT_SIZE

    def as_dict(self) -> dict:
        return {
            "backup_id": self.backup_id,
            "status": self.status,
            "begin_time": self.begin_time.isoformat() if self.begin_time else None,
            "end_time": self.end_time.isoformat() if self.end_time else None,
            "begin_wal": self.begin_wal,
            "end_wal": self.end_wal,
            "segment_size": self.segment_size,
        }


def backup_from_info(backup_id: str, text: bytes) -> Backup:
    """A backup from its `backup.info`, read with barman's own parser (the format is barman's to change).

    barman writes its times with their zone; one without is read as local time, which is UTC on hosts.
    """
    info = BackupInfo(backup_id)
    info.load(file_object=io.BytesIO(text))
    return Backup(
        backup_id=info.backup_id,
        status=info.status or "",
        begin_time=info.begin_time,
        end_time=info.end_time,
        begin_wal=info.begin_wal or "",
        end_wal=info.end_wal or "",
        segment_size=info.xlog_segment_size or wal.DEFAULT_SEGMENT_SIZE,
    )


def list_backups(archive: Archive) -> list[Backup]:
    """Every backup in the archive, oldest first."""
    store = ArchiveStore(archive)
    store.check_access()
    backups = [
        backup_from_info(item.key.split("/")[-2], store.read(item.key))
        for item in store.objects("base/")
        if item.key.endswith("/backup.info")
    ]
    return sorted(backups, key=lambda b: b.end_time or dt.datetime.min.replace(tzinfo=dt.UTC))


def verify(archive: Archive, backup: Backup | None = None, read_all: bool = True) -> Verification:
    """Check that a backup (default: the newest) and every WAL segment after it are present and readable."""
    store = ArchiveStore(archive)
    chosen = backup or choose_backup(list_backups(archive), None)
    segments = store.wal_segments()
    continuity = wal.check(chosen.begin_wal, segments, chosen.segment_size)
    unreadable = []
    if read_all and continuity.last_contiguous:
        name = chosen.begin_wal
        while True:
            if not store.readable_segment(segments[name], chosen.segment_size):
                unreadable.append(name)
            if name == continuity.last_contiguous:
                break
            name = wal.following(name, chosen.segment_size)
    return Verification(chosen, continuity, unreadable)
