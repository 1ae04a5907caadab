"""The one root of every error Bulkhead reports to an operator, and the exit codes they map to.

Each area raises its own subclass (a config error, a backup that cannot be made, a sandbox that cannot
be removed), and the CLI catches `BulkheadError` alone: a new module's error can never turn into a
traceback. The message is always one line that says what is wrong and how to fix it.
"""

from __future__ import annotations

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class BulkheadError(Exception):
    """Something Bulkhead was asked to do cannot be done; the message is one line with the fix."""

    exit_code = EXIT_FAILED


class UsageError(BulkheadError):
    """The command line or the config asks for something impossible: exit 2, as argparse does."""

    exit_code = EXIT_USAGE
