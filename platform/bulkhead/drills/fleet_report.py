"""The region-loss drill's figures: pure functions over what the restore and the writer recorded, so that
the tests give them values written down by hand."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bulkhead.files import write_json


def importance(entry: dict) -> tuple[bool, int]:
    """The restore order's key: paying customers first, then priority (1 is first)."""
    return (not entry["paying"], entry["priority"])


def priority_inversions(entries: list[dict]) -> int:
    """Pairs where a database started while a more important one was still waiting to start."""
    started = [e for e in entries if e.get("started_at") is not None]
    return sum(1 for a in started for b in started
               if importance(b) < importance(a) and a["started_at"] < b["started_at"])  # fmt: skip


def recovery(entries: list[dict], fault_at: float) -> dict[str, float | None]:
    """RTO for the first paying database to serve, and for every database (None if one never served)."""
    ready = [e for e in entries if e.get("ready_at") is not None and not e.get("error")]
    paying = [e["ready_at"] for e in ready if e["paying"]]
    every = len(ready) == len(entries) and bool(entries)
    return {"first_paying": round(min(paying) - fault_at, 2) if paying else None,
            "all": round(max(e["ready_at"] for e in ready) - fault_at, 2) if every else None}  # fmt: skip


def losses(acknowledged: dict[str, dict[int, float]], present: dict[str, list[int] | None],
           fault_at: float) -> dict[str, dict]:  # fmt: skip
    """Per database: rows acknowledged, rows lost, and how far before the fault the oldest lost row was
    acknowledged (the window of writes the archive and its replication had not yet carried over)."""
    figures = {}
    for name, rows in acknowledged.items():
        have = set(present.get(name) or [])
        lost = {n: at for n, at in rows.items() if n not in have}
        figures[name] = {"acknowledged": len(rows), "lost": len(lost) if present.get(name) is not None else None,
                         "window_s": round(fault_at - min(lost.values()), 2) if lost else 0.0}  # fmt: skip
    return figures


@dataclass
class RegionLossReport:
    """What `bulkhead drill region-loss` prints and writes to .bulkhead/drills/region-loss-<time>.json."""

    region: str
    partner: str
    databases: int
    drill: str = "region-loss"
    rto_s: dict = field(default_factory=dict)
    rows_lost: dict = field(default_factory=dict)
    rows_acknowledged: dict = field(default_factory=dict)
    loss_window_s: dict = field(default_factory=dict)
    priority_inversions: int | None = None
    dns_before: str | None = None
    dns_after: str | None = None
    bound_s: float | None = None
    steps: list[dict] = field(default_factory=list)
    restored: list[dict] = field(default_factory=list)
    detail: dict = field(default_factory=dict)

    def step(self, name: str, seconds: float) -> None:
        self.steps.append({"name": name, "seconds": round(seconds, 2)})

    def as_json(self) -> dict:
        return asdict(self)

    def save(self, directory: Path) -> Path:
        path = directory / f"{self.drill}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
        write_json(path, self.as_json())
        return path
