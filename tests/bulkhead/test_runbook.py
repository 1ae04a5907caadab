"""The runbook engine, end to end through `bulkhead runbook`, on small runbooks in a scratch project.

Their steps touch files in the scratch directory, so every assertion is about what really ran."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bulkhead import cli, runbook
from bulkhead.errors import EXIT_FAILED, EXIT_USAGE

pytestmark = pytest.mark.unit

COUNTER = textwrap.dedent("""\
    # Count to three

    Appends one line per step to a file, slowly, so that a run can be interrupted mid-step.

    ## Variables

    - `FILE`: the file the steps append to
    - `PAUSE` = `0`: seconds each step waits before it appends

    ## Counting

    ### one: append 1
    ```run changes
    sleep "$PAUSE"; echo 1 >> "$FILE"
    ```
    ```check timeout=5
    grep -qx 1 "$FILE"
    ```

    ### two: append 2 once
    Idempotent, as every step that may be resumed must be.
    ```run changes
    sleep "$PAUSE"; grep -qx 2 "$FILE" || echo 2 >> "$FILE"
    ```
    ```check timeout=5
    grep -qx 2 "$FILE"
    ```

    ## Checking

    ### three: append 3 and look
    ```run
    grep -qx 3 "$FILE" || echo 3 >> "$FILE"; cat "$FILE"
    ```
    ```check timeout=5
    test "$(wc -l < "$FILE")" -eq 3
    ```
    """)


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    (tmp_path / "Pulumi.yaml").write_text("name: scratch\nruntime: python\n")
    (tmp_path / "runbooks").mkdir()
    (tmp_path / "runbooks" / "count.md").write_text(COUNTER)
    return tmp_path


def _bulkhead(scratch: Path, *argv: str, capsys) -> tuple[int, str, str]:
    code = cli.main(["--project", str(scratch), *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _runs(scratch: Path) -> list[dict]:
    directory = scratch / ".bulkhead" / "runbooks"
    return [json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))] if directory.exists() else []


def test_parse__book_sections_steps_and_variables(scratch):
    book = runbook.load(scratch, "count")
    assert book.title == "Count to three"
    assert book.summary.startswith("Appends one line per step")
    assert [(s.id, s.section, s.changes, s.timeout) for s in book.steps] == [
        ("one", "Counting", True, 5.0),
        ("two", "Counting", True, 5.0),
        ("three", "Checking", False, 5.0),
    ]
    assert [(v.name, v.default) for v in book.variables] == [("FILE", None), ("PAUSE", "0")]


def test_list__shows_each_runbook_with_its_summary(scratch, capsys):
    code, out, _ = _bulkhead(scratch, "runbook", "list", "--json", capsys=capsys)
    assert code == 0
    listed = json.loads(out)
    assert [(b["name"], b["steps"]) for b in listed] == [("count", ["one", "two", "three"])]
    assert "slowly" in listed[0]["summary"]


def test_run__dry_run_fills_variables_and_changes_nothing(scratch, capsys):
    target = scratch / "it's here.txt"
    code, out, _ = _bulkhead(scratch, "runbook", "run", "count", "--var", f"FILE={target}", "--dry-run",
                             capsys=capsys)  # fmt: skip
    assert code == 0
    assert f"""$ sleep 0; echo 1 >> '{scratch}/it'"'"'s here.txt'""" in out
    assert "two: append 2 once [changes]" in out
    assert "three: append 3 and look\n" in out
    assert not target.exists()
    assert _runs(scratch) == []


def test_run__unattended_runs_every_step_and_keeps_its_progress(scratch, capsys):
    target = scratch / "count.txt"
    code, out, _ = _bulkhead(scratch, "runbook", "run", "count", "--var", f"FILE={target}", "--yes", capsys=capsys)
    assert code == 0, out
    assert target.read_text() == "1\n2\n3\n"
    [run] = _runs(scratch)
    assert run["status"] == "done"
    assert [s["status"] for s in run["steps"]] == ["ok", "ok", "ok"]
    assert run["variables"] == {"FILE": str(target), "PAUSE": "0"}
    logged = [json.loads(line) for line in (scratch / ".bulkhead" / "runbooks" / f"{run['run_id']}.jsonl").open()]
    assert [(e["step"], e["status"]) for e in logged] == [("one", "ok"), ("two", "ok"), ("three", "ok")]
    assert all(e["seconds"] >= 0 for e in logged)
    code, out, _ = _bulkhead(scratch, "runbook", "status", "--json", capsys=capsys)
    assert json.loads(out)["run_id"] == run["run_id"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run", "nothing", "--yes"], "no runbook 'nothing' in"),
        (["run", "count", "--yes"], "runbook count needs FILE: pass --var FILE=..."),
        (["run", "count", "--yes", "--var", "FILE=x", "--var", "COLOUR=red"], "runbook count has no variable COLOUR"),
        (["run", "count", "--yes", "--var", "FILE=x", "--from", "four"], "runbook count has no step 'four'"),
        (["run", "count", "--var", "FILE=x"], "confirming each changing step needs a terminal"),
    ],
)
def test_run__bad_input_is_refused_in_one_line_before_anything_runs(scratch, capsys, argv, expected):
    code, _, err = _bulkhead(scratch, "runbook", *argv, capsys=capsys)
    assert code == EXIT_USAGE
    assert err.count("\n") == 1 and expected in err, err
    assert not (scratch / "x").exists()
    assert _runs(scratch) == []


def test_parse__undeclared_variable_is_refused_naming_the_step(scratch, capsys):
    (scratch / "runbooks" / "count.md").write_text(COUNTER.replace('cat "$FILE"', 'cat "$OTHER"'))
    code, _, err = _bulkhead(scratch, "runbook", "run", "count", "--yes", "--var", "FILE=x", capsys=capsys)
    assert code == EXIT_FAILED
    assert "step three uses OTHER, which the Variables section does not declare" in err
    assert _runs(scratch) == []


def test_run__check_that_times_out_names_the_step_and_resumes_with_from(scratch, capsys):
    target = scratch / "count.txt"
    (scratch / "runbooks" / "count.md").write_text(COUNTER.replace('grep -qx 2 "$FILE"\n```', "false\n```"))
    started = time.monotonic()
    code, _, err = _bulkhead(scratch, "runbook", "run", "count", "--var", f"FILE={target}", "--yes", capsys=capsys)
    assert code == EXIT_FAILED
    assert time.monotonic() - started >= 4  # the check was retried for its whole timeout
    assert err.count("\n") == 1
    assert "step two: its check did not pass within 5 s" in err and "--from two" in err
    [failed] = _runs(scratch)
    assert [s["status"] for s in failed["steps"]] == ["ok", "failed", "pending"]
    # The operator fixes the runbook and resumes: the same run carries on, with its variables.
    (scratch / "runbooks" / "count.md").write_text(COUNTER)
    code, _, err = _bulkhead(scratch, "runbook", "run", "count", "--yes", "--from", "two", capsys=capsys)
    assert code == 0, err
    [resumed] = _runs(scratch)
    assert resumed["run_id"] == failed["run_id"] and resumed["status"] == "done"
    assert [s["status"] for s in resumed["steps"]] == ["ok", "ok", "ok"]
    assert target.read_text() == "1\n2\n3\n"


def test_run__interrupted_mid_step_resumes_to_the_same_end_state(scratch, tmp_path_factory):
    whole = tmp_path_factory.mktemp("whole") / "count.txt"
    interrupted = scratch / "count.txt"
    argv = [sys.executable, "-m", "bulkhead.cli", "--project", str(scratch), "runbook", "run", "count", "--yes",
            "--var", "PAUSE=1"]  # fmt: skip
    subprocess.run([*argv, "--var", f"FILE={whole}"], check=True, capture_output=True, timeout=60)
    process = subprocess.Popen([*argv, "--var", f"FILE={interrupted}"], stdout=subprocess.PIPE, text=True)
    # Interrupt as Ctrl-C would, while step two sleeps.
    for line in process.stdout:
        if line.startswith("[two]"):
            break
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 130
    runs = [r for r in _runs(scratch) if r["variables"]["FILE"] == str(interrupted)]
    assert [s["status"] for s in runs[0]["steps"]] == ["ok", "interrupted", "pending"]
    assert interrupted.read_text() == "1\n"
    subprocess.run([*argv, "--from", "two"], check=True, capture_output=True, timeout=60)
    assert interrupted.read_text() == whole.read_text() == "1\n2\n3\n"
    assert [s["status"] for s in _runs(scratch)[-1]["steps"]] == ["ok", "ok", "ok"]
    assert os.path.exists(scratch / ".bulkhead" / "runbooks" / f"{runs[0]['run_id']}.jsonl")


def test_runbooks__every_runbook_in_the_project_parses(project_dir):
    books = [runbook.parse(path) for path in runbook.available(project_dir)]
    assert {b.name for b in books} >= {"ebs-loss", "az-loss", "region-loss", "region-failback",
                                       "point-in-time-restore", "copy-archive"}  # fmt: skip
    for book in books:
        assert book.summary, book.name
        assert all(step.check for step in book.steps), book.name


def test_runbooks__each_dry_runs_every_step_and_changes_nothing(project_dir, capsys):
    state = project_dir / ".bulkhead" / "runbooks"
    before = sorted(p.name for p in state.glob("*")) if state.exists() else []
    for path in runbook.available(project_dir):
        book = runbook.parse(path)
        values = [f"--var={v.name}=example-{v.name.lower()}" for v in book.variables if v.default is None]
        code, out, err = _bulkhead(project_dir, "runbook", "run", book.name, "--dry-run", *values, capsys=capsys)
        assert code == 0, err
        assert all(f"{step.id}: {step.title}" in out for step in book.steps), book.name
        assert "example-" in out, book.name  # the variables were filled in
    assert (sorted(p.name for p in state.glob("*")) if state.exists() else []) == before
