"""The region-loss drill's figures, from restore outcomes and writer acknowledgements written down by hand."""

from __future__ import annotations

import pytest

from bulkhead.drills import fleet_report

pytestmark = pytest.mark.unit


def _entry(name: str, paying: bool, priority: int, started: float, ready: float | None, error=None) -> dict:
    return {"name": name, "paying": paying, "priority": priority, "started_at": started, "ready_at": ready,
            "error": error}  # fmt: skip


def test_priority_inversions__counts_each_start_ahead_of_a_more_important_waiting_database():
    ordered = [_entry("p1", True, 3, 10, 11), _entry("f1", False, 1, 10.5, 12), _entry("f2", False, 2, 11, 13)]
    assert fleet_report.priority_inversions(ordered) == 0
    # f2 (free, priority 2) started before p1 (paying) and before f1 (priority 1): two inversions.
    inverted = [_entry("f2", False, 2, 9, 11), _entry("p1", True, 3, 10, 11), _entry("f1", False, 1, 10.5, 12)]
    assert fleet_report.priority_inversions(inverted) == 2
    # Equals are not inversions, whichever starts first.
    assert fleet_report.priority_inversions([_entry("a", False, 4, 2, 3), _entry("b", False, 4, 1, 3)]) == 0


def test_recovery__first_paying_and_all_from_the_fault():
    entries = [_entry("p1", True, 1, 101, 104.5), _entry("p2", True, 2, 101, 103.25), _entry("f", False, 1, 104, 109)]
    assert fleet_report.recovery(entries, fault_at=100) == {"first_paying": 3.25, "all": 9.0}
    failed = [*entries[:2], _entry("f", False, 1, 104, None, "no finished base backup")]
    assert fleet_report.recovery(failed, fault_at=100) == {"first_paying": 3.25, "all": None}


def test_losses__rows_missing_and_how_long_before_the_fault_the_oldest_was_acknowledged():
    acknowledged = {"a": {1: 90.0, 2: 95.0, 3: 98.5, 4: 99.5}, "b": {1: 97.0}, "c": {1: 96.0}}
    present = {"a": [1, 2], "b": [1], "c": None}
    assert fleet_report.losses(acknowledged, present, fault_at=100.0) == {
        "a": {"acknowledged": 4, "lost": 2, "window_s": 1.5},
        "b": {"acknowledged": 1, "lost": 0, "window_s": 0.0},
        "c": {"acknowledged": 1, "lost": None, "window_s": 4.0},
    }
