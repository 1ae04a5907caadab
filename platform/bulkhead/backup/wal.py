"""WAL segment names and the continuity of an archive: pure decisions, no S3.

A segment name is timeline, log and segment number, eight hex digits each; with 16 MiB segments the
segment number runs 00000000..000000FF within a log.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

SEGMENT = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
SEGMENTS_PER_LOG = 0x100  # 4 GiB per log / 16 MiB per segment


def is_segment(name: str) -> bool:
    """A WAL segment file name (not a .history, .backup or .partial file)."""
    return SEGMENT.match(name) is not None


def parse(name: str) -> tuple[int, int, int]:
    match = SEGMENT.match(name)
    if not match:
        raise ValueError(f"{name!r} is not a WAL segment name")
    timeline, log, segment = (int(part, 16) for part in match.groups())
    return timeline, log, segment


def following(name: str) -> str:
    """The segment after `name` on the same timeline."""
    timeline, log, segment = parse(name)
    segment += 1
    if segment == SEGMENTS_PER_LOG:
        log, segment = log + 1, 0
    return f"{timeline:08X}{log:08X}{segment:08X}"


def position(name: str) -> int:
    """A segment's place in the WAL stream, ignoring the timeline."""
    _, log, segment = parse(name)
    return log * SEGMENTS_PER_LOG + segment


@dataclass(frozen=True)
class Continuity:
    """Which archived segments follow a backup without a gap, and the first one missing if any."""

    first: str
    last_contiguous: str | None
    missing: str | None
    later_segments: int


def check(begin_wal: str, archived: Iterable[str]) -> Continuity:
    """Walk the archive from `begin_wal`; stop at the first segment missing before the newest one."""
    timeline = parse(begin_wal)[0]
    names = sorted(
        {n for n in archived if is_segment(n) and parse(n)[0] == timeline and position(n) >= position(begin_wal)},
        key=position,
    )
    present = set(names)
    if begin_wal not in present:
        return Continuity(begin_wal, None, begin_wal, len(names))
    newest = names[-1]
    current = begin_wal
    while current != newest:
        nxt = following(current)
        if nxt not in present:
            later = sum(1 for n in names if position(n) > position(nxt))
            return Continuity(begin_wal, current, nxt, later)
        current = nxt
    return Continuity(begin_wal, current, None, 0)
