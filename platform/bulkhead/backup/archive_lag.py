"""How far a server's WAL archive is behind, read from the server itself: any PostgreSQL 15, with or
without Patroni. What `bulkhead db archive-status` prints and the metrics agent publishes."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass

import psycopg

from bulkhead.backup.settings import BackupError

# Plain segments PostgreSQL has finished and not yet archived. History and .partial files are shipped too,
# but a segment is what holds the data at risk.
_PENDING = r"""
SELECT count(*), min(modification), now()
FROM pg_ls_archive_statusdir()
WHERE name ~ '^[0-9A-F]{24}\.ready$'
"""


@dataclass(frozen=True)
class ArchiveLag:
    """`lag_segments`: finished segments not yet in the archive. `lag_seconds`: how long the oldest of them
    has waited (0 when none does): the age of the oldest WAL that exists only on this server's disk, beyond
    the segment being written, which archive_timeout bounds."""

    role: str
    current_wal: str | None
    last_archived_wal: str | None
    last_archived_time: str | None
    lag_segments: int
    lag_seconds: float
    failed_count: int
    last_failed_wal: str | None

    def as_dict(self) -> dict:
        return asdict(self)


def archive_lag(conninfo: str) -> ArchiveLag:
    try:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as connection:
            replica = connection.execute("SELECT pg_is_in_recovery()").fetchone()[0]
            current = (
                None if replica else connection.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
            )
            archived, archived_at, failed, failed_wal = connection.execute(
                "SELECT last_archived_wal, last_archived_time, failed_count, last_failed_wal FROM pg_stat_archiver"
            ).fetchone()
            pending, oldest, now = connection.execute(_PENDING).fetchone()
    except psycopg.errors.InsufficientPrivilege:
        raise BackupError(
            "reading the archive status needs a superuser or a member of pg_monitor; pass --user"
        ) from None
    except psycopg.OperationalError as error:
        said = str(error).strip().splitlines()[-1] if str(error).strip() else "no answer"
        raise BackupError(f"cannot connect to PostgreSQL ({conninfo}): {said}") from None
    seconds = max(0.0, (now - oldest).total_seconds()) if pending else 0.0
    return ArchiveLag(
        role="replica" if replica else "primary",
        current_wal=current,
        last_archived_wal=archived,
        last_archived_time=archived_at.astimezone(dt.UTC).isoformat() if archived_at else None,
        lag_segments=int(pending),
        lag_seconds=round(seconds, 1),
        failed_count=int(failed),
        last_failed_wal=failed_wal,
    )
