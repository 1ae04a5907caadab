"""Where the Bulkhead project is: the directory with `Pulumi.yaml`, `infra/`, `roles/` and the stack files.

Commands that deploy or configure find it from the working directory (or the directories above it),
as `pulumi` and `git` do, or from `--project DIR`. The `db` verbs never ask: they run on database
hosts without a checkout, and `archive_command` runs with PGDATA as its working directory.
"""

from __future__ import annotations

from pathlib import Path

from bulkhead.errors import UsageError

MARKER = "Pulumi.yaml"


def find(explicit: str | Path | None = None, start: Path | None = None) -> Path:
    """The project named by `explicit`, else the nearest directory at or above `start` (default: cwd)."""
    if explicit is not None:
        directory = Path(explicit).resolve()
        if not (directory / MARKER).is_file():
            raise UsageError(f"--project {explicit} has no {MARKER}; point it at a Bulkhead checkout")
        return directory
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        if (directory / MARKER).is_file():
            return directory
    raise UsageError(f"no {MARKER} in {here} or above it; run bulkhead inside the project or pass --project DIR")


def state_dir(project_dir: Path, area: str) -> Path:
    """Where one area keeps its state on this machine: `.bulkhead/<area>` in the project."""
    return project_dir / ".bulkhead" / area
