"""Benchmark: a first `bulkhead local up` of all four stacks, then a second one with no change.

Run: .venv/bin/python benchmarks/local_up.py
Each `up` runs as its own process (as an operator runs it) against a fresh local cloud in a temporary
directory; peak memory is that process's maximum RSS, and the moto server's is reported beside it.
Baselines: the issue's goals on this 2-core machine, 30 s for the first `up` and 5 s for the second.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bulkhead.localcloud import server

GOALS = {"first up": 30.0, "second up": 5.0}


def _run(args: list[str], directory: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS (MiB) of one bulkhead command."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "bulkhead.cli", *args],
        cwd=Path(__file__).resolve().parents[1],  # the project checkout the CLI finds from its working directory
        env={**os.environ, "BULKHEAD_LOCAL_DIR": str(directory)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bulkhead {' '.join(args)} failed: {process.stderr.read().decode().strip()}")
    return seconds, usage.ru_maxrss // 1024


def _server_peak_mib(directory: Path) -> int:
    info = server.recorded(directory)
    for line in Path(f"/proc/{info.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    return 0


def main() -> None:
    directory = Path(tempfile.mkdtemp(prefix="bulkhead-bench-")) / "local"
    rows = []
    try:
        for label in GOALS:
            seconds, peak = _run(["local", "up"], directory)
            rows.append((label, seconds, peak, _server_peak_mib(directory)))
    finally:
        _run(["local", "down"], directory)
    table = Table(title="bulkhead local up, all four stacks")
    for column in ("run", "seconds", "goal (s)", "ratio to goal", "peak RSS bulkhead (MiB)", "peak RSS moto (MiB)"):
        table.add_column(column, justify="right")
    for label, seconds, peak, moto in rows:
        goal = GOALS[label]
        table.add_row(label, f"{seconds:.1f}", f"{goal:.0f}", f"{seconds / goal:.2f}", str(peak), str(moto))
    Console().print(table)


if __name__ == "__main__":
    main()
