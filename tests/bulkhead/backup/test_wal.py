"""WAL names and the continuity check, without S3 or PostgreSQL."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulkhead.backup import wal

pytestmark = pytest.mark.unit
MIB = 2**20


def test_following__rolls_over_to_the_next_log_after_segment_ff_with_16_mib_segments():
    assert wal.following("0000000100000003000000FE", 16 * MIB) == "0000000100000003000000FF"
    assert wal.following("0000000100000003000000FF", 16 * MIB) == "000000010000000400000000"


def test_following__with_64_mib_segments_a_log_holds_64_segments():
    assert wal.following("00000001000000030000003E", 64 * MIB) == "00000001000000030000003F"
    assert wal.following("00000001000000030000003F", 64 * MIB) == "000000010000000400000000"
    assert wal.position("000000010000000400000000", 64 * MIB) == 4 * 64


@given(
    st.integers(min_value=1, max_value=5),
    st.integers(min_value=0, max_value=2**20),
    st.integers(1, 300),
    st.sampled_from([1 * MIB, 16 * MIB, 64 * MIB, 1024 * MIB]),
)
def test_check__a_run_without_gaps_is_continuous_and_any_removed_middle_segment_is_found(
    timeline, start, length, segment_size
):
    per_log = 2**32 // segment_size
    first = f"{timeline:08X}{start // per_log:08X}{start % per_log:08X}"
    names = [first]
    for _ in range(length - 1):
        names.append(wal.following(names[-1], segment_size))
    assert wal.check(first, names, segment_size) == wal.Continuity(first, names[-1], None, 0)
    if length >= 3:
        gap = length // 2
        result = wal.check(first, names[:gap] + names[gap + 1 :], segment_size)
        assert (result.last_contiguous, result.missing, result.later_segments) == (
            names[gap - 1], names[gap], length - gap - 1,
        )  # fmt: skip


def test_check__other_timelines_and_non_segment_files_are_ignored():
    names = ["000000010000000000000002", "000000010000000000000003", "00000002.history",
             "000000020000000000000004", "000000010000000000000002.00000028.backup"]  # fmt: skip
    assert wal.check("000000010000000000000002", names, 16 * MIB).missing is None


def test_check__the_backup_start_itself_missing_means_no_restore():
    result = wal.check("000000010000000000000005", ["000000010000000000000006"], 16 * MIB)
    assert (result.last_contiguous, result.missing) == (None, "000000010000000000000005")
