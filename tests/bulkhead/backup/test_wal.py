"""WAL names and the continuity check, without S3 or PostgreSQL."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulkhead.backup import wal

pytestmark = pytest.mark.unit


def test_following__rolls_over_to_the_next_log_after_segment_ff():
    assert wal.following("0000000100000003000000FE") == "0000000100000003000000FF"
    assert wal.following("0000000100000003000000FF") == "000000010000000400000000"


@given(st.integers(min_value=1, max_value=5), st.integers(min_value=0, max_value=2**20), st.integers(1, 300))
def test_check__a_run_without_gaps_is_continuous_and_any_removed_middle_segment_is_found(timeline, start, length):
    first = f"{timeline:08X}{start // 256:08X}{start % 256:08X}"
    names = [first]
    for _ in range(length - 1):
        names.append(wal.following(names[-1]))
    assert wal.check(first, names) == wal.Continuity(first, names[-1], None, 0)
    if length >= 3:
        gap = length // 2
        result = wal.check(first, names[:gap] + names[gap + 1 :])
        assert (result.last_contiguous, result.missing, result.later_segments) == (
            names[gap - 1], names[gap], length - gap - 1,
        )  # fmt: skip


def test_check__other_timelines_and_non_segment_files_are_ignored():
    names = ["000000010000000000000002", "000000010000000000000003", "00000002.history",
             "000000020000000000000004", "000000010000000000000002.00000028.backup"]  # fmt: skip
    assert wal.check("000000010000000000000002", names).missing is None


def test_check__the_backup_start_itself_missing_means_no_restore():
    result = wal.check("000000010000000000000005", ["000000010000000000000006"])
    assert (result.last_contiguous, result.missing) == (None, "000000010000000000000005")
