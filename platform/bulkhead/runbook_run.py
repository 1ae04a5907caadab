"""Running a runbook: each step's command, then its check until it passes or times out, with the run's
progress kept in `.bulkhead/runbooks/<run-id>.json` (read by `runbook status` from a second terminal)
and each step logged as one JSON line with its duration in `<run-id>.jsonl`.

A failed or interrupted run stops where it is, says so in one line naming the step, and resumes with
`--from STEP`: the same run (and its variables) carries on from that step.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bulkhead.files import write_json
from bulkhead.runbook import Book, RunbookError, Step, fill

log = logging.getLogger("bulkhead.runbook")
CHECK_INTERVAL = 2.0
TAIL_LINES = 20
PENDING, RUNNING, OK, FAILED, INTERRUPTED, SKIPPED, DECLINED = (
    "pending", "running", "ok", "failed", "interrupted", "skipped", "declined")  # fmt: skip
FINISHED = "done"


@dataclass
class Run:
    """A run's progress, as saved after every change."""

    run_id: str
    runbook: str
    variables: dict[str, str]
    status: str
    started_at: float
    steps: list[dict]
    ended_at: float | None = None
    error: str | None = None
    resumed: list[dict] = field(default_factory=list)

    def step(self, step_id: str) -> dict:
        return next(entry for entry in self.steps if entry["id"] == step_id)

    def save(self, directory: Path) -> Path:
        path = directory / f"{self.run_id}.json"
        write_json(path, asdict(self))
        return path


def runs_of(directory: Path, runbook: str | None = None) -> list[Run]:
    """Every saved run, oldest first (optionally of one runbook)."""
    found = []
    for path in sorted(directory.glob("*.json")):
        with contextlib.suppress(OSError, ValueError, TypeError):
            run = Run(**json.loads(path.read_text()))
            if runbook is None or run.runbook == runbook:
                found.append(run)
    return sorted(found, key=lambda r: r.started_at)


def find_run(directory: Path, run_id: str) -> Run:
    path = directory / f"{run_id}.json"
    if not path.is_file():
        raise RunbookError(f"no runbook run {run_id!r} in {directory}; `bulkhead runbook status` lists the runs")
    return Run(**json.loads(path.read_text()))


def new_run(book: Book, values: dict[str, str]) -> Run:
    run_id = f"{book.name}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"
    steps = [{"id": s.id, "title": s.title, "section": s.section, "changes": s.changes, "status": PENDING}
             for s in book.steps]  # fmt: skip
    return Run(run_id, book.name, values, RUNNING, time.time(), steps)


def dry_run(book: Book, values: dict[str, str], start: str | None = None, state_dir: Path | None = None) -> list[str]:
    """Every step from `start` with its variables filled in; runs nothing and writes nothing."""
    first = book.index(start) if start else 0
    values = {
        **values,
        "RUNBOOK_RUN_ID": f"{book.name}-RUN",
        "RUNBOOK_STATE_DIR": str(state_dir or ".bulkhead/runbooks"),
    }
    lines, section = [f"{book.title} (dry run: nothing is run)"], None
    for step in book.steps[first:]:
        if step.section != section:
            section = step.section
            lines.append(f"## {section}")
        lines.append(f"{step.id}: {step.title}" + (" [changes]" if step.changes else ""))
        lines += [f"  $ {line}" for line in fill(step.command, values).splitlines()]
        lines.append(f"  check (within {step.timeout:g} s):")
        lines += [f"  ? {line}" for line in fill(step.check, values).splitlines()]
    return lines


@dataclass
class Runner:
    """Runs one book's steps in order, saving progress to `state_dir`."""

    book: Book
    project_dir: Path
    state_dir: Path
    confirm: Callable[[Step], bool] | None = None  # None: unattended (--yes)
    out: Callable[[str], None] = print
    on_step: Callable[[dict], None] | None = None
    environment: dict[str, str] = field(default_factory=dict)  # more for every command (a drill's state dirs)

    def run(self, run: Run, start: str | None = None) -> Run:
        """Run `run` from `start` (default: its first step not yet done); raises RunbookError on a failure."""
        first = (
            self.book.index(start)
            if start
            else next((i for i, entry in enumerate(run.steps) if entry["status"] not in (OK, SKIPPED)), len(run.steps))
        )
        for entry in run.steps[:first]:
            if entry["status"] != OK:
                entry["status"] = SKIPPED
        if start:
            run.resumed.append({"from": start, "at": time.time()})
        run.status, run.error, run.ended_at = RUNNING, None, None
        run.save(self.state_dir)
        for step in self.book.steps[first:]:
            self._step(run, step)
        run.status, run.ended_at = FINISHED, time.time()
        run.save(self.state_dir)
        return run

    def _environment(self, run: Run) -> dict[str, str]:
        # The commands find this installation's `bulkhead` first, whatever PATH the operator has.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        return {**os.environ, **self.environment, **run.variables, "PATH": path, "RUNBOOK_RUN_ID": run.run_id,
                "RUNBOOK_STATE_DIR": str(self.state_dir)}  # fmt: skip

    def _step(self, run: Run, step: Step) -> None:
        entry = run.step(step.id)
        if step.changes and self.confirm is not None and not self.confirm(step):
            self._fail(run, entry, DECLINED, f"step {step.id} was declined at the prompt; nothing of it ran")
        entry.update(status=RUNNING, started_at=time.time(), output=[], check_attempts=0)
        run.save(self.state_dir)
        self.out(f"[{step.id}] {step.title}")
        started = time.monotonic()
        try:
            code, tail = self._shell(step.command, self._environment(run), None, echo=True)
            entry["command_s"] = round(time.monotonic() - started, 3)
            entry["output"] = tail
            if code != 0:
                last = tail[-1] if tail else "no output"
                self._fail(run, entry, FAILED, f"step {step.id}: its command exited {code} ({last})")
            checked = time.monotonic()
            passed, last = self._check(step, entry, self._environment(run))
            entry["check_s"] = round(time.monotonic() - checked, 3)
            if not passed:
                self._fail(run, entry, FAILED,
                           f"step {step.id}: its check did not pass within {step.timeout:g} s ({last})")  # fmt: skip
        except KeyboardInterrupt:
            entry["seconds"] = round(time.monotonic() - started, 3)
            self._record(run, entry, INTERRUPTED, "interrupted")
            raise
        entry["seconds"] = round(time.monotonic() - started, 3)
        self._record(run, entry, OK, None)

    def _check(self, step: Step, entry: dict, environment: dict[str, str]) -> tuple[bool, str]:
        deadline = time.monotonic() + step.timeout
        last = "never ran"
        while True:
            entry["check_attempts"] += 1
            remaining = max(0.1, deadline - time.monotonic())
            code, tail = self._shell(step.check, environment, remaining, echo=False)
            if code == 0:
                return True, ""
            last = tail[-1] if tail else (f"exit {code}" if code is not None else "timed out")
            if time.monotonic() + CHECK_INTERVAL > deadline:
                return False, last
            time.sleep(CHECK_INTERVAL)

    def _shell(self, script: str, environment: dict[str, str], timeout: float | None, echo: bool):
        """Run `script` in bash; returns (exit code or None on timeout, its last lines)."""
        process = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", script], cwd=self.project_dir, env=environment,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            errors="replace", start_new_session=True,
        )  # fmt: skip
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            assert process.stdout is not None
            if deadline is not None:
                return self._bounded(process, deadline, tail)
            for line in process.stdout:
                tail.append(line.rstrip("\n"))
                if echo:
                    self.out(f"  {line.rstrip()}")
            return process.wait(), list(tail)
        except BaseException:
            _kill(process)
            raise

    @staticmethod
    def _bounded(process: subprocess.Popen, deadline: float, tail: deque[str]):
        try:
            output, _ = process.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _kill(process)
            return None, list(tail)
        tail.extend(output.splitlines())
        return process.returncode, list(tail)

    def _fail(self, run: Run, entry: dict, status: str, what: str) -> None:
        message = (f"runbook {self.book.name}: {what}; fix it and resume with `bulkhead runbook run {self.book.name} "
                   f"--from {entry['id']}` (run {run.run_id})")  # fmt: skip
        if "started_at" in entry:
            entry["seconds"] = round(time.time() - entry["started_at"], 3)
        self._record(run, entry, status, message)
        raise RunbookError(message)

    def _record(self, run: Run, entry: dict, status: str, error: str | None) -> None:
        entry["status"] = status
        if status != OK:
            run.status, run.error, run.ended_at = status, error, time.time()
        run.save(self.state_dir)
        event = {"runbook": run.runbook, "run_id": run.run_id, "step": entry["id"], "status": status,
                 "seconds": entry.get("seconds"), "command_s": entry.get("command_s"),
                 "check_s": entry.get("check_s"), "check_attempts": entry.get("check_attempts"),
                 "changes": entry["changes"]}  # fmt: skip
        with (self.state_dir / f"{run.run_id}.jsonl").open("a") as lines:
            lines.write(json.dumps({"ts": time.time(), **event}) + "\n")
        log.info("runbook step %s", status, extra=event)
        if self.on_step:
            self.on_step(entry)


def _kill(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
