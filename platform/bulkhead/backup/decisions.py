"""The decisions of backup and restore, apart from S3, PostgreSQL and processes: each is unit-tested.

Which backup a restore starts from, whether the archive can take it where it was asked to go, what
to say when it cannot, in what order many databases come back, and how much of a backup is uploaded.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bulkhead.backup import wal
from bulkhead.backup.settings import BackupError

if TYPE_CHECKING:
    from bulkhead.backup.catalog import Backup
    from bulkhead.backup.restore import RestoreJob
    from bulkhead.backup.store import StoredObject


def choose_backup(backups: Sequence[Backup], target_time: dt.datetime | None) -> Backup:
    """The newest finished backup, or the newest that ended at or before `target_time`.

    `backups` are oldest first, as `list_backups` gives them.
    """
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
    """What a restore from a backup can reach: its WAL continuity and any segment that cannot be read."""

    backup: Backup
    continuity: wal.Continuity
    unreadable: list[str]

    @property
    def ok(self) -> bool:
        return self.continuity.missing is None and not self.unreadable

    def missing_inside_backup(self) -> bool:
        """A segment the backup itself needs is gone: no restore from it can work."""
        gap = self.continuity.missing
        size = self.backup.segment_size
        return gap is not None and wal.position(gap, size) <= wal.position(self.backup.end_wal, size)

    def problem(self) -> str | None:
        """One line on what is wrong and how far a restore can still go, or None."""
        gap = self.continuity
        if self.ok:
            return None
        if gap.missing is not None and gap.last_contiguous is None:
            return f"WAL {gap.missing}, where backup {self.backup.backup_id} begins, is missing: it cannot be restored"
        if self.missing_inside_backup():
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


def restore_blocker(verification: Verification, target_time: dt.datetime | None) -> str | None:
    """Why a restore must not start, or None: the reachability check, before anything is written.

    A gap in the WAL after the backup stops a restore to the latest point, which would silently end
    early. A point-in-time restore may go ahead: recovery stops at the target time or at the gap, and
    PostgreSQL refuses to open a database short of its target. A gap the backup itself needs stops all.
    """
    if verification.continuity.missing is None:
        return None
    # A missing start of the backup counts as missing inside it: no point in time can be reached then.
    if target_time is not None and not verification.missing_inside_backup():
        return None
    return verification.problem()


def restore_order(jobs: Iterable[RestoreJob]) -> list[RestoreJob]:
    """Paying customers first, then lowest `priority` first; among equals, the order given."""
    return sorted(jobs, key=lambda job: (not getattr(job, "paying", False), job.priority))


def uploaded_bytes(before: set[str], objects: Iterable[StoredObject]) -> int:
    """Bytes of a backup in progress: objects that were not in the archive when it started."""
    return sum(o.size for o in objects if o.key not in before)


def seconds_until_due(newest_end: dt.datetime | None, every: float, now: dt.datetime) -> float:
    """How long a scheduler waits before the next base backup: none yet, or the newest as old as `every`: 0."""
    if newest_end is None:
        return 0.0
    return max(0.0, every - (now - newest_end).total_seconds())
