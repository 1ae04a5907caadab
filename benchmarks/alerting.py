"""Benchmark: how soon a page arrives, and how soon a status post is served.

Run: .venv/bin/python benchmarks/alerting.py [--runs N]
A fresh local cloud of every stack with every eu-west-1 host as a sandbox, configured once (each host's
metrics agent publishing every 10 s). Then, N times each:
- archive-stall: the primary's route to S3 cut while it writes (bulkhead drill archive-stall); seconds
  from the cut to the wal-archive-lag ALARM message in the region's alert queue;
- region-silent: eu-west-1 off the air (bulkhead drill region-silent); seconds from the fault to the
  heartbeat alarm's ALARM message in the status queue;
- status post: `status post` until the local CloudFront serves the new page.
Goals (the ratio column): each alarm < 120 s (median), the status page < 5 s. Anchor: CloudWatch
evaluates a 60 s alarm once a minute, so an alarm over 60 s of lag cannot page before about 70 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bulkhead import project
from bulkhead.drills import archive_stall, region_silent
from bulkhead.ha.reach import Reach
from bulkhead.hosts.site import region_site
from bulkhead.localcloud import cloud
from bulkhead.localcloud.state import Store
from bulkhead.ops import status

PROJECT_DIR = project.find(start=Path(__file__).parent)
REGION = "eu-west-1"
GOALS = {"archive-stall alarm": 120.0, "region-silent alarm": 120.0, "status post served": 5.0}


def post_served(store: Store, index: int) -> float:
    """Seconds from `status post` to the local CloudFront serving the new message."""
    (served,) = cloud.status(store)["controller"]["distributions"].values()
    site = status.status_site(PROJECT_DIR, store)
    message = f"benchmark post {index} at {time.time():.0f}"
    started = time.monotonic()
    status.post(site, "api", "degraded" if index % 2 else "operational", message)
    while time.monotonic() - started < 30:
        with urllib.request.urlopen(served["url"], timeout=5) as answer:
            if message in answer.read().decode():
                return round(time.monotonic() - started, 2)
        time.sleep(0.1)
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    base = Path(tempfile.mkdtemp(prefix="bulkhead-bench-alerting-"))
    os.environ["BULKHEAD_LOCAL_DIR"] = str(base / "local")
    console = Console(stderr=True)
    results: dict[str, list[float]] = {name: [] for name in GOALS}
    console.print("a local cloud of every stack, every eu-west-1 host a sandbox, configured once")
    with region_site(PROJECT_DIR, base, REGION) as made:
        if not made.first_run.succeeded:
            raise SystemExit("; ".join(made.first_run.failures))
        reach = Reach(made.sandboxes, REGION)
        for index in range(runs):
            console.print(f"run {index + 1}/{runs}: archive-stall")
            stall = archive_stall.run(reach, base / "drills", project_dir=PROJECT_DIR)
            results["archive-stall alarm"].append(stall.figures["alarm_s"] or float("nan"))
            console.print(f"run {index + 1}/{runs}: region-silent")
            silent = region_silent.run(reach, base / "drills", project_dir=PROJECT_DIR)
            results["region-silent alarm"].append(silent.figures["alarm_s"] or float("nan"))
            results["status post served"].append(post_served(made.store, index))
    table = Table(title=f"alerting, {runs} runs each (metrics every 10 s; alarms evaluated once a 60 s period)")
    for column in ("case", "median (s)", "max (s)", "runs (s)", "goal (s)", "median / goal"):
        table.add_column(column, justify="right" if column != "case" else "left")
    for name, goal in GOALS.items():
        seconds = results[name]
        median = statistics.median(seconds) if seconds else float("nan")
        table.add_row(name, f"{median:.1f}", f"{max(seconds, default=float('nan')):.1f}",
                      ", ".join(f"{s:.1f}" for s in seconds), f"{goal:.0f}", f"{median / goal:.2f}")  # fmt: skip
    Console().print(table)


if __name__ == "__main__":
    main()
