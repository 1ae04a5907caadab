"""Benchmark: evaluating every stack under mocks, and how it grows with the number of dyno cells.

Run: .venv/bin/python benchmarks/evaluate.py
Baselines: the goal of all four stacks in under 5 s; growth in cells compared with a straight line
through the 1-cell and 4-cell points (a ratio of 1.00 at 16 cells means exactly linear).
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bulkhead import plan, project, topology

PROJECT_DIR = project.find(start=Path(__file__).parent)

GOAL_SECONDS = 5.0
SCALING_STACK = "us-east-1"
CELLS = (1, 4, 16)


def _custom(run) -> int:
    return sum(plan.summarize(run).values())


def main() -> None:
    console = Console()
    plan.evaluate_all(PROJECT_DIR, [SCALING_STACK])  # warm imports so the timings measure evaluation alone
    started = time.perf_counter()
    runs = plan.evaluate_all(PROJECT_DIR)
    total = time.perf_counter() - started
    table = Table(title="all stacks, one evaluation each")
    for column in ("stack", "resources", "seconds"):
        table.add_column(column, justify="right")
    for stack, run in runs.items():
        table.add_row(stack, str(_custom(run)), f"{run.seconds:.2f}")
    table.add_row("total", str(sum(_custom(r) for r in runs.values())), f"{total:.2f}")
    console.print(table)
    console.print(f"ratio to the {GOAL_SECONDS:.0f} s goal: {total / GOAL_SECONDS:.2f} (below 1.00 meets it)")

    config = topology.read_stack_config(PROJECT_DIR, SCALING_STACK)
    points = {}
    for cells in CELLS:
        timings = []
        for _ in range(3):
            run = plan.evaluate_all(
                PROJECT_DIR, [SCALING_STACK], configs={SCALING_STACK: {**config, "bulkhead:cells": cells}}
            )
            timings.append(run[SCALING_STACK].seconds)
        points[cells] = (_custom(run[SCALING_STACK]), min(timings))
    (c1, (n1, t1)), (c4, (n4, t4)) = (CELLS[0], points[CELLS[0]]), (CELLS[1], points[CELLS[1]])
    growth = Table(title=f"stack {SCALING_STACK} by dyno cells (best of 3)")
    for column in ("cells", "resources", "seconds", "resources vs line", "seconds vs line"):
        growth.add_column(column, justify="right")
    for cells, (count, seconds) in points.items():
        line_count = n1 + (n4 - n1) * (cells - c1) / (c4 - c1)
        line_seconds = t1 + (t4 - t1) * (cells - c1) / (c4 - c1)
        growth.add_row(
            str(cells), str(count), f"{seconds:.2f}", f"{count / line_count:.2f}", f"{seconds / line_seconds:.2f}"
        )
    console.print(growth)


if __name__ == "__main__":
    main()
