"""WAL segment names and the continuity of an archive: pure decisions, no S3.

Names and their arithmetic are barman's (`barman.xlog`), the same code barman-cloud archives and
restores with. A segment's successor depends on the segment size (16 MiB unless the cluster was
initialised otherwise), which a backup records: every function here takes it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from barman import xlog

DEFAULT_SEGMENT_SIZE = xlog.DEFAULT_XLOG_SEG_SIZE


def is_segment(name: str) -> bool:
    """A WAL segment file name (not a .history, .backup or .partial file, nor a compressed name)."""
    return xlog.is_wal_file(name)


def timeline(name: str) -> int:
    return xlog.decode_segment_name(name)[0]


def following(name: str, segment_size: int) -> str:
    """The segment after `name` on the same timeline."""
    return xlog.next_segment_name(name, segment_size)


def position(name: str, segment_size: int) -> int:
    """A segment's place in the WAL stream, ignoring the timeline."""
    _, log, segment = xlog.decode_segment_name(name)
    return log * (xlog.xlog_segments_per_file(segment_size) + 1) + segment


@dataclass(frozen=True)
class Continuity:
    """Which archived segments follow a backup without a gap, and the first one missing if any."""

    first: str
    last_contiguous: str | None
    missing: str | None
    later_segments: int


def check(begin_wal: str, archived: Iterable[str], segment_size: int) -> Continuity:
    """Walk the archive from `begin_wal`; stop at the first segment missing before the newest one."""
    start = position(begin_wal, segment_size)
    line = timeline(begin_wal)
    on_timeline = {n for n in archived if is_segment(n) and timeline(n) == line and position(n, segment_size) >= start}
    if begin_wal not in on_timeline:
        return Continuity(begin_wal, None, begin_wal, len(on_timeline))
    newest = max(on_timeline, key=lambda n: position(n, segment_size))
    current = begin_wal
    while current != newest:
        nxt = following(current, segment_size)
        if nxt not in on_timeline:
            later = sum(1 for n in on_timeline if position(n, segment_size) > position(nxt, segment_size))
            return Continuity(begin_wal, current, nxt, later)
        current = nxt
    return Continuity(begin_wal, current, None, 0)
