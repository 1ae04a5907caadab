"""Benchmark: how long writes stop in a planned switchover, an AZ loss and an EBS loss, 3 runs each.

Run: .venv/bin/python benchmarks/failover.py [--runs N]
A fresh local cloud with every eu-west-1 host as a sandbox (a router, a dyno host and a database member
with etcd in each AZ), configured once. A writer on a dyno host commits numbered rows through
127.0.0.1:5432 throughout.
- switchover: `bulkhead db switchover`; RTO is the longest gap between acknowledged writes around it.
- az-loss: the leader's AZ is powered off (bulkhead drill az-loss); RTO from the fault to the first
  acknowledged write after it.
- ebs-loss: the leader's PGDATA is wiped (bulkhead drill ebs-loss); RTO as above.
Goals (the ratio column): switchover < 5 s; a crash of the leader (AZ or EBS loss) <= 22 s median with
0 rows lost in synchronous mode. Patroni's leader key lives ttl = 20 s (its minimum) and a dead leader
cannot release it, so an AZ loss cannot beat the ttl; an EBS loss leaves Patroni alive, and it releases
the key itself. Anchors: RDS Multi-AZ instances 60-120 s; RDS Multi-AZ clusters under 35 s;
CloudNativePG's e2e budget 20-30 s.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bulkhead import project
from bulkhead.drills import az_loss, ebs_loss, workload
from bulkhead.drills.common import URL_FILE, healthy_problem, wait_until
from bulkhead.ha import cluster
from bulkhead.ha.reach import Reach
from bulkhead.hosts.site import region_site

PROJECT_DIR = project.find(start=Path(__file__).parent)
REGION = "eu-west-1"
GOALS = {"switchover": 5.0, "az-loss": 22.0, "ebs-loss": 22.0}


def switchover(reach: Reach, run: str) -> tuple[float, int]:
    """One planned switchover under the writer: (the longest gap between acknowledged writes, rows lost)."""
    dyno = reach.of_role("dyno_host")[0]
    url = reach.read_file(dyno, URL_FILE).strip()
    writes = workload.writer(reach.sandboxes, dyno, url, run)
    try:
        writes.wait_for(20, timeout=60)
        found = reach.cluster()
        current, _ = cluster.switchover_target(found, None)
        asked = time.time()
        answer = reach.patroni(current.address, "POST", "/switchover", {"leader": current.host}, timeout=60)
        if not answer.ok:
            raise SystemExit(f"switchover refused: {answer.body}")
        writes.wait_for(20, after=time.time(), timeout=60)
    finally:
        attempts = writes.stop()
    acknowledged = sorted(a.at for a in attempts if a.ok)
    gaps = [b - a for a, b in itertools.pairwise(acknowledged) if b >= asked]
    present = workload.rows_present(reach.sandboxes, dyno, url, run)
    lost = sum(1 for a in attempts if a.ok and a.number not in present)
    return round(max(gaps), 2), lost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    base = Path(tempfile.mkdtemp(prefix="bulkhead-bench-failover-"))
    console = Console(stderr=True)
    results: dict[str, list[tuple[float, int]]] = {name: [] for name in GOALS}
    console.print(f"a local cloud of {REGION}, every host a sandbox, configured once")
    with region_site(PROJECT_DIR, base, REGION, stacks=[REGION]) as made:
        if not made.first_run.succeeded:
            raise SystemExit("; ".join(made.first_run.failures))
        reach = Reach(made.sandboxes, REGION)
        for index in range(runs):
            for name in GOALS:
                wait_until(
                    lambda: healthy_problem(reach.cluster(), synchronous=True) is None, 300, "a healthy cluster", 1
                )
                console.print(f"run {index + 1}/{runs}: {name}")
                if name == "switchover":
                    results[name].append(switchover(reach, f"bench{index}"))
                else:
                    drill = az_loss.run(reach, None, base / "drills") if name == "az-loss" else ebs_loss.run(
                        reach, base / "drills")  # fmt: skip
                    results[name].append((drill.rto_s, drill.rows_lost))
    table = Table(title=f"failover, {runs} runs each (Patroni ttl 20 s, loop_wait 1 s, retry_timeout 3 s)")
    for column in ("case", "RTO median (s)", "RTO max (s)", "rows lost", "goal (s)", "median / goal"):
        table.add_column(column, justify="right" if column != "case" else "left")
    for name, goal in GOALS.items():
        seconds = [r[0] for r in results[name] if r[0] is not None]
        median = statistics.median(seconds) if seconds else float("nan")
        table.add_row(name, f"{median:.1f}", f"{max(seconds, default=float('nan')):.1f}",
                      str(sum(r[1] or 0 for r in results[name])), f"{goal:.0f}", f"{median / goal:.2f}")  # fmt: skip
    Console().print(table)


if __name__ == "__main__":
    main()
