"""A drill's report: the figures from the writer's and the prober's logs, and the steps' times.

Pure functions over plain values: the tests give them logs written down by hand.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bulkhead.files import write_json


@dataclass(frozen=True)
class Attempt:
    """One write or one request: its number, when it finished (seconds since the epoch), and whether it worked."""

    number: int
    at: float
    ok: bool


def parse_attempts(text: str) -> list[Attempt]:
    """The workload's log: one `NUMBER EPOCH ok|fail` line per attempt (a torn last line is skipped)."""
    attempts = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] in ("ok", "fail"):
            try:
                attempts.append(Attempt(int(parts[0]), float(parts[1]), parts[2] == "ok"))
            except ValueError:
                continue
    return attempts


def recovery_seconds(writes: Iterable[Attempt], fault_at: float) -> float | None:
    """RTO: from the fault to the first acknowledged write that started after it; None if none did."""
    after = [w.at for w in writes if w.ok and w.at > fault_at]
    return round(min(after) - fault_at, 2) if after else None


def timeline(attempts: Iterable[Attempt], fault_at: float, limit: float = 60) -> list[dict]:
    """The attempts from the fault on (within `limit` s), run by run: each run of the same result with when it
    began and ended (seconds after the fault), how many, and its longest gap between two attempts (a stalled
    statement shows as a gap). Tells a writer that failed fast for 30 s from one that waited 30 s."""
    runs: list[dict] = []
    last = fault_at
    for attempt in sorted((a for a in attempts if fault_at < a.at <= fault_at + limit), key=lambda a: a.at):
        result = "ok" if attempt.ok else "fail"
        gap = round(attempt.at - last, 2)
        if runs and runs[-1]["result"] == result:
            run = runs[-1]
            run["to_s"], run["count"], run["longest_gap_s"] = round(attempt.at - fault_at, 2), run["count"] + 1, max(
                run["longest_gap_s"], gap)  # fmt: skip
        else:
            at = round(attempt.at - fault_at, 2)
            runs.append({"result": result, "from_s": at, "to_s": at, "count": 1, "longest_gap_s": gap})
        last = attempt.at
    return runs


def lost_writes(writes: Iterable[Attempt], fault_at: float, present: set[int]) -> list[Attempt]:
    """The writes acknowledged before the fault whose rows the cluster no longer has."""
    return [w for w in writes if w.ok and w.at <= fault_at and w.number not in present]


def ok_ratio(requests: Iterable[Attempt], start: float, end: float) -> float | None:
    """The share of requests between `start` and `end` that were answered well; None if none were sent."""
    window = [r for r in requests if start <= r.at <= end]
    return round(sum(r.ok for r in window) / len(window), 4) if window else None


@dataclass
class Report:
    """What `bulkhead drill` prints and writes to .bulkhead/drills/<drill>-<time>.json."""

    drill: str
    region: str
    az: str
    rto_s: float | None = None
    rows_acknowledged: int = 0
    rows_lost: int | None = None
    http_ok_ratio: float | None = None
    rejoined_s: float | None = None
    old_leader: str = ""
    new_leader: str = ""
    failed_over: bool = False
    # The first lost rows: their numbers and how long before the fault each was acknowledged.
    lost: list[dict] = field(default_factory=list)
    detail: dict = field(default_factory=dict)
    steps: list[dict] = field(default_factory=list)

    def step(self, name: str, seconds: float) -> None:
        self.steps.append({"name": name, "seconds": round(seconds, 2)})

    def record(self, writes: list[Attempt], requests: list[Attempt], present: set[int], fault_at: float,
               fault_ended: float) -> None:  # fmt: skip
        """The figures from the workload's attempts, the rows the cluster has, and the fault's window."""
        self.rto_s = recovery_seconds(writes, fault_at)
        self.rows_acknowledged = sum(a.ok for a in writes)
        lost = lost_writes(writes, fault_at, present)
        self.rows_lost = len(lost)
        self.lost = [{"number": w.number, "before_fault_s": round(fault_at - w.at, 3)} for w in lost[:20]]
        self.http_ok_ratio = ok_ratio(requests, fault_at, fault_ended)

    def as_json(self) -> dict:
        return asdict(self)

    def save(self, directory: Path) -> Path:
        path = directory / f"{self.drill}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
        write_json(path, self.as_json())
        return path
