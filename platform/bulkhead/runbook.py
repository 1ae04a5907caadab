"""The runbook engine: markdown that a person reads and `bulkhead runbook run` executes.

A runbook is a Book > Section > Step, as in braintree/runbook:

    # Title                                   the book
    One paragraph: the summary `runbook list` shows.
    ## Variables
    - `REGION`: the region ...                required
    - `TIMEOUT` = `60`: ...                   with a default
    ## A section
    ### step-id: what the step does           a step
    Prose for the person reading it.
    ```run changes                            the command (`changes` marks a step that changes something)
    bulkhead db status --region "$REGION"
    ```
    ```check timeout=60                       what must then hold, retried until it passes or times out
    ...
    ```

Commands run in bash (`-euo pipefail`) in the project directory with the variables in their
environment, so a value is never spliced into shell text; a dry run prints them filled in, quoted.
A runbook that uses an undeclared variable, lacks a required one, or is asked to start at an
unknown step is refused before anything runs.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from markdown_it import MarkdownIt

from bulkhead.errors import BulkheadError, UsageError

STEP_HEADING = re.compile(r"^(?P<id>[a-z0-9][a-z0-9-]*):\s*(?P<title>.+)$")
VARIABLE_ITEM = re.compile(r"^`(?P<name>[A-Z][A-Z0-9_]*)`(?:\s*=\s*`(?P<default>[^`]*)`)?\s*:\s*(?P<help>.+)$", re.S)
REFERENCE = re.compile(r"\$\{?([A-Z][A-Z0-9_]*)\}?")
# Set by the engine itself for every command: never declared by a runbook.
PROVIDED = frozenset({"RUNBOOK_RUN_ID", "RUNBOOK_STATE_DIR"})
DEFAULT_CHECK_TIMEOUT = 60.0


class RunbookError(BulkheadError):
    """A runbook cannot be read, or one of its steps failed; the message names the step."""


@dataclass(frozen=True)
class Variable:
    name: str
    default: str | None
    help: str


@dataclass(frozen=True)
class Step:
    """One command and the check that asserts its effect."""

    id: str
    title: str
    section: str
    command: str
    check: str
    timeout: float
    changes: bool


@dataclass(frozen=True)
class Book:
    name: str
    title: str
    summary: str
    path: Path
    variables: tuple[Variable, ...]
    steps: tuple[Step, ...]

    def step_ids(self) -> list[str]:
        return [step.id for step in self.steps]

    def index(self, step_id: str) -> int:
        """The position of `step_id`; an unknown one is refused naming the steps that exist."""
        if step_id not in self.step_ids():
            raise UsageError(f"runbook {self.name} has no step {step_id!r}; its steps are {', '.join(self.step_ids())}")
        return self.step_ids().index(step_id)

    def resolve(self, given: dict[str, str]) -> dict[str, str]:
        """The value of every variable: given, else default; unknown or missing ones refused in one line."""
        declared = {v.name: v for v in self.variables}
        unknown = sorted(set(given) - set(declared))
        if unknown:
            raise UsageError(
                f"runbook {self.name} has no variable {', '.join(unknown)}; it takes {', '.join(declared) or 'none'}"
            )
        values = {name: given.get(name, variable.default) for name, variable in declared.items()}
        missing = [name for name, value in values.items() if value is None]
        if missing:
            raise UsageError(
                f"runbook {self.name} needs {', '.join(missing)}: pass "
                + " ".join(f"--var {name}=..." for name in missing)
            )
        return {name: str(value) for name, value in values.items()}


QUOTED_REFERENCE = re.compile(r'"\$\{?([A-Z][A-Z0-9_]*)\}?"')


def fill(text: str, values: dict[str, str]) -> str:
    """A command as a dry run shows it: each variable replaced by its value, shell-quoted where it must be."""

    def quoted(match: re.Match) -> str:
        return shlex.quote(values[match.group(1)]) if match.group(1) in values else match.group(0)

    def bare(match: re.Match) -> str:
        value = values.get(match.group(1))
        # Inside a longer double-quoted word only a value that needs no quoting can be shown in place.
        return match.group(0) if value is None or shlex.quote(value) != value else value

    return REFERENCE.sub(bare, QUOTED_REFERENCE.sub(quoted, text))


@dataclass
class _Builder:
    name: str
    path: Path
    title: str = ""
    summary: str = ""
    section: str = ""
    variables: list[Variable] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)

    def fail(self, line: int | None, what: str) -> RunbookError:
        where = f"{self.path}:{line + 1}" if line is not None else str(self.path)
        return RunbookError(f"runbook {self.name} ({where}): {what}")


def parse(path: Path) -> Book:
    """Read one runbook file; a malformed one is refused with the line to fix."""
    name = path.stem
    build = _Builder(name, path)
    tokens = MarkdownIt("commonmark").parse(path.read_text())
    heading: int | None = None
    in_variables = False
    for position, token in enumerate(tokens):
        if token.type == "heading_open":
            heading = int(token.tag[1])
            continue
        if token.type == "inline" and heading is not None:
            text, line = token.content.strip(), token.map[0] if token.map else None
            if heading == 1:
                build.title = text
            elif heading == 2:
                in_variables = text.lower() == "variables"
                build.section = text
            elif heading == 3:
                match = STEP_HEADING.match(text)
                if not match:
                    raise build.fail(line, f"step heading {text!r} must read `### step-id: what it does`")
                if not build.section or in_variables:
                    raise build.fail(line, f"step {match['id']} must sit in a section (## heading)")
                build.steps.append({"id": match["id"], "title": match["title"], "section": build.section,
                                    "line": line})  # fmt: skip
            heading = None
            continue
        if token.type == "inline" and not build.summary and build.title and not build.section:
            build.summary = " ".join(token.content.split())
        elif token.type == "inline" and in_variables and tokens[position - 2].type == "list_item_open":
            match = VARIABLE_ITEM.match(token.content.strip())
            if not match:
                shape = "a variable reads - `NAME`: what it is, or - `NAME` = `default`: what it is"
                raise build.fail(token.map[0] if token.map else None, shape)
            build.variables.append(Variable(match["name"], match["default"], " ".join(match["help"].split())))
        elif token.type == "fence":
            _fence(build, token)
    return _finish(build)


def _fence(build: _Builder, token) -> None:
    words = token.info.split()
    kind = words[0] if words else ""
    line = token.map[0] if token.map else None
    if kind not in ("run", "check"):
        return  # an example for the reader, not a step
    if not build.steps:
        raise build.fail(line, f"a `{kind}` block must follow a step heading")
    step = build.steps[-1]
    if kind in step:
        raise build.fail(line, f"step {step['id']} has two `{kind}` blocks; split it into two steps")
    step[kind] = token.content.strip()
    options = dict(word.partition("=")[::2] for word in words[1:])
    if kind == "run":
        step["changes"] = "changes" in options
    else:
        try:
            step["timeout"] = float(options.get("timeout", DEFAULT_CHECK_TIMEOUT))
        except ValueError:
            what = f"step {step['id']}: timeout={options['timeout']} is not a number of seconds"
            raise build.fail(line, what) from None
        if step["timeout"] <= 0:
            raise build.fail(line, f"step {step['id']}: timeout must be above 0 seconds")


def _finish(build: _Builder) -> Book:
    if not build.title:
        raise build.fail(None, "no title: the first line must be a `# Title` heading")
    if not build.steps:
        raise build.fail(None, "no steps: a step is a `### step-id: title` heading with `run` and `check` blocks")
    seen: set[str] = set()
    declared = {v.name for v in build.variables} | PROVIDED
    steps = []
    for raw in build.steps:
        if raw["id"] in seen:
            raise build.fail(raw["line"], f"step {raw['id']} appears twice; step ids must be unique")
        seen.add(raw["id"])
        for kind in ("run", "check"):
            if kind not in raw:
                raise build.fail(raw["line"], f"step {raw['id']} has no `{kind}` block; every step has both")
        undeclared = sorted({m for m in REFERENCE.findall(raw["run"] + "\n" + raw["check"])} - declared)
        if undeclared:
            raise build.fail(raw["line"], f"step {raw['id']} uses {', '.join(undeclared)}, which the Variables "
                                          "section does not declare")  # fmt: skip
        steps.append(Step(raw["id"], raw["title"], raw["section"], raw["run"], raw["check"],
                          raw.get("timeout", DEFAULT_CHECK_TIMEOUT), raw.get("changes", False)))  # fmt: skip
    return Book(build.name, build.title, build.summary, build.path, tuple(build.variables), tuple(steps))


def directory(project_dir: Path) -> Path:
    return project_dir / "runbooks"


def available(project_dir: Path) -> list[Path]:
    return sorted(p for p in directory(project_dir).glob("*.md") if p.name.lower() != "readme.md")


def load(project_dir: Path, name: str) -> Book:
    """The runbook called `name`; an unknown one is refused naming those that exist."""
    path = directory(project_dir) / f"{name}.md"
    if not path.is_file():
        names = ", ".join(p.stem for p in available(project_dir)) or "none"
        raise UsageError(f"no runbook {name!r} in {directory(project_dir)}; the runbooks are {names}")
    return parse(path)
