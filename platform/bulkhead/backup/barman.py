"""Running the barman-cloud tools: the right binary, environment and time limit; one line on failure."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence

from bulkhead.backup.settings import Archive, BackupError, barman_bin, tool_environment


def run(tool: str, archive: Archive, args: Sequence[str], timeout: float) -> str:
    """Run one barman-cloud tool against `archive`; return its stdout."""
    executable = barman_bin() / tool
    if not os.access(executable, os.X_OK):
        raise BackupError(f"{executable} is missing; run scripts/setup (or set BULKHEAD_BARMAN_BIN)")
    command = [str(executable), *archive.tool_args(), *args]
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **tool_environment(archive)},
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BackupError(f"{tool} did not finish within {timeout:.0f} s; see the PostgreSQL log") from None
    if result.returncode != 0:
        raise BackupError(f"{tool} failed: {last_error(result.stderr or result.stdout)}")
    return result.stdout


def last_error(output: str) -> str:
    """The line of a barman tool's output that says what went wrong."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if "ERROR" in line or "Error" in line or "error" in line]
    line = (errors or lines or ["no output"])[-1]
    return line.removeprefix("ERROR:").strip()
