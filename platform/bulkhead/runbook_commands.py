"""`bulkhead runbook list|run|status`: the runbooks in runbooks/, executed step by step."""

from __future__ import annotations

import argparse
import json
import sys
import time

from rich.console import Console
from rich.table import Table

from bulkhead import project, runbook, runbook_run
from bulkhead.errors import UsageError


def state_dir(args: argparse.Namespace):
    return project.state_dir(project.find(args.project), "runbooks")


def cmd_list(args: argparse.Namespace) -> int:
    project_dir = project.find(args.project)
    books = [runbook.parse(path) for path in runbook.available(project_dir)]
    if args.json:
        print(json.dumps([{"name": b.name, "title": b.title, "summary": b.summary, "steps": b.step_ids(),
                           "variables": [v.name for v in b.variables]} for b in books], indent=2))  # fmt: skip
        return 0
    table = Table(title=f"runbooks in {runbook.directory(project_dir)}")
    for column in ("name", "steps", "summary"):
        table.add_column(column)
    for book in books:
        table.add_row(book.name, str(len(book.steps)), book.summary)
    Console().print(table)
    return 0


def _variables(pairs: list[str] | None) -> dict[str, str]:
    values = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"--var {pair!r} is not NAME=VALUE, e.g. --var REGION=us-east-1")
        values[name] = value
    return values


def _confirm(step: runbook.Step) -> bool:
    answer = input(f"run step {step.id} ({step.title}), which changes something? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def cmd_run(args: argparse.Namespace) -> int:
    project_dir = project.find(args.project)
    book = runbook.load(project_dir, args.name)
    given = _variables(args.var)
    if args.from_step:
        book.index(args.from_step)
    directory = project.state_dir(project_dir, "runbooks")
    if args.dry_run:
        print("\n".join(runbook_run.dry_run(book, book.resolve(given), args.from_step, directory)))
        return 0
    if not args.yes and not sys.stdin.isatty():
        raise UsageError("confirming each changing step needs a terminal; pass --yes to run unattended, or --dry-run")
    previous = None
    if args.run:
        previous = runbook_run.find_run(directory, args.run)
        if previous.runbook != book.name:
            raise UsageError(f"run {args.run} is of runbook {previous.runbook}, not {book.name}")
    elif args.from_step:
        unfinished = [r for r in runbook_run.runs_of(directory, book.name) if r.status != runbook_run.FINISHED]
        previous = unfinished[-1] if unfinished else None
    values = book.resolve({**(previous.variables if previous else {}), **given})
    run = previous or runbook_run.new_run(book, values)
    run.variables = values
    console = Console(highlight=False)
    runner = runbook_run.Runner(book, project_dir, directory, confirm=None if args.yes else _confirm,
                                out=lambda line: console.print(line, markup=False))  # fmt: skip
    print(f"run {run.run_id}: progress in {directory / (run.run_id + '.json')}")
    runner.run(run, args.from_step)
    total = sum(entry.get("seconds") or 0 for entry in run.steps)
    print(f"runbook {book.name} done: {len(book.steps)} steps in {total:.1f} s (run {run.run_id})")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    directory = state_dir(args)
    if args.run_id:
        run = runbook_run.find_run(directory, args.run_id)
    else:
        runs = runbook_run.runs_of(directory)
        if not runs:
            raise UsageError(f"no runbook has run yet ({directory} is empty); start one with `bulkhead runbook run`")
        run = runs[-1]
    if args.json:
        print(json.dumps(run.__dict__, indent=2, default=str))
        return 0
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(run.started_at))
    table = Table(title=f"run {run.run_id} of {run.runbook}: {run.status} (started {started} UTC)")
    for column in ("step", "status", "seconds", "changes"):
        table.add_column(column)
    for entry in run.steps:
        seconds = entry.get("seconds")
        table.add_row(entry["id"], entry["status"], "-" if seconds is None else f"{seconds:.1f}",
                      "yes" if entry["changes"] else "")  # fmt: skip
    console = Console()
    console.print(table)
    if run.error:
        console.print(run.error, markup=False, highlight=False)
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add `bulkhead runbook ...` to the command line."""
    group = commands.add_parser(
        "runbook",
        help="list and run the executable runbooks in runbooks/",
        description="A runbook is markdown a person reads and Bulkhead runs: sections of steps, each a command "
        "followed by a check that must pass within a timeout. Progress is kept in .bulkhead/runbooks/<run-id>.json.",
    )
    verbs = group.add_subparsers(dest="verb", required=True, metavar="VERB")
    verbs.add_parser("list", help="each runbook with its summary").set_defaults(handler=cmd_list)
    verbs.choices["list"].add_argument("--json", action="store_true", help="print as JSON")
    run = verbs.add_parser(
        "run",
        help="run a runbook's steps in order",
        description="Run each step's command, then its check until it passes or its timeout ends. By default each "
        "step that changes something is confirmed at the terminal; --yes runs unattended; --dry-run prints every "
        "step with its variables filled in and runs nothing. A failure stops the run with one line naming the "
        "step; `--from STEP` resumes that run from the step.",
    )
    run.add_argument("name", help="the runbook (its file name in runbooks/ without .md)")
    run.add_argument("--var", action="append", metavar="NAME=VALUE", help="set a variable (repeatable)")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the steps filled in; run nothing")
    mode.add_argument("--yes", action="store_true", help="run unattended, without confirming changing steps")
    run.add_argument(
        "--from",
        dest="from_step",
        metavar="STEP",
        help="start at this step: resumes the newest unfinished run of this runbook (or --run)",
    )
    run.add_argument("--run", metavar="RUN_ID", help="the run to resume with --from (default: the newest unfinished)")
    run.set_defaults(handler=cmd_run)
    status = verbs.add_parser("status", help="where a run stands (default: the newest), from any terminal")
    status.add_argument("run_id", nargs="?", help="the run (default: the newest)")
    status.add_argument("--json", action="store_true", help="print the run's saved state")
    status.set_defaults(handler=cmd_status)
