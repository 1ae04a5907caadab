"""`bulkhead`: the operator's command line. Each subcommand's --help says what it does."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from bulkhead import logs, project, topology
from bulkhead.errors import EXIT_INTERRUPTED, BulkheadError, UsageError

log = logging.getLogger("bulkhead")
# Command groups, by the extra they need: a host installs `bulkhead[host]` alone and still gets `db`.
GROUPS = (
    ("local", "bulkhead.localcloud.commands", "controller"),
    ("db", "bulkhead.backup.commands", "host"),
    ("hosts", "bulkhead.hosts.commands", "controller"),
    ("image", "bulkhead.hosts.image_commands", "controller"),
    ("drill", "bulkhead.drills.commands", "controller"),
    ("runbook", "bulkhead.runbook_commands", "controller"),
    ("dns", "bulkhead.dns", "host"),
    ("status", "bulkhead.ops.status", "host"),
    ("alarms", "bulkhead.ops.alarms", "host"),
    ("check", "bulkhead.ops.check", "controller"),
    ("secrets", "bulkhead.ops.secrets", "host"),
    ("rods", "bulkhead.ops.rods", "host"),
    ("apps", "bulkhead.ops.apps", "controller"),
    ("agent", "bulkhead.agents.commands", "host"),
)


def cmd_plan(args: argparse.Namespace) -> int:
    """Evaluate stacks with invented ids and print what each would create."""
    from bulkhead import plan

    project_dir = project.find(args.project)
    runs = plan.evaluate_all(project_dir, topology.select_stacks(project_dir, args.stacks))
    if args.json:
        print(json.dumps({s: dict(sorted(plan.summarize(r).items())) for s, r in runs.items()}, indent=2))
        return 0
    console = Console()
    for stack, run in runs.items():
        counts = plan.summarize(run)
        table = Table(title=f"stack {stack}: {sum(counts.values())} resources ({run.seconds:.2f} s)")
        table.add_column("resource type")
        table.add_column("count", justify="right")
        for type_token, count in sorted(counts.items()):
            table.add_row(type_token, str(count))
        console.print(table)
    return 0


def command_word(argv: Sequence[str]) -> str | None:
    """The command a command line names (`db` in `bulkhead --project DIR db check`), or None."""
    tokens = iter(argv)
    for token in tokens:
        if token == "--project":
            next(tokens, None)
        elif not token.startswith("-"):
            return token
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or, when `only` names a command group, that group alone: each group's module
    imports what its commands use (Pulumi, boto3, hypothesis), and a `bulkhead db check` that a runbook runs
    every 2 s during a failover must not pay 2 s of CPU to import every other group's."""
    parser = argparse.ArgumentParser(
        prog="bulkhead",
        description="Deploy and rehearse the recovery of a multi-region Heroku-style platform.",
        epilog="Exit status: 0 done; 1 the operation failed (one line on stderr says why and what to do); 2 bad "
        "usage or bad config; 130 interrupted by Ctrl-C, with nothing half-changed.",
    )
    parser.add_argument("--log-json", action="store_true", help="write logs to stderr as one JSON object per line")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    parser.add_argument(
        "--project",
        metavar="DIR",
        help="the Bulkhead checkout (Pulumi.yaml, infra/, roles/) for plan, local and hosts; default: the "
        "working directory or the nearest one above it with a Pulumi.yaml. The db verbs need none.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    plan_parser = commands.add_parser(
        "plan",
        help="show what each stack would create",
        description="Evaluate the Pulumi program of each stack under mocks (nothing is created anywhere) and "
        "print the resources per type. Stacks run in deployment order: regions, then global.",
    )
    plan_parser.add_argument("--stacks", help="comma-separated stacks (default: every Pulumi.<stack>.yaml)")
    plan_parser.add_argument("--json", action="store_true", help="print the counts as JSON")
    plan_parser.set_defaults(handler=cmd_plan)
    groups = [g for g in GROUPS if g[0] == only] or GROUPS
    for name, module, extra in groups:
        try:
            importlib.import_module(module).register(commands)
        except ModuleNotFoundError as missing:
            if (missing.name or "").startswith("bulkhead"):
                raise
            _unavailable(commands, name, extra, missing.name or "a dependency")
    return parser


def _unavailable(commands: argparse._SubParsersAction, name: str, extra: str, module: str) -> None:
    """A command group whose dependencies this installation lacks: it says which extra to install."""

    def refuse(_: argparse.Namespace) -> int:
        raise UsageError(f"`bulkhead {name}` needs {module}, which this installation lacks; "
                         f"install bulkhead[{extra}]")  # fmt: skip

    group = commands.add_parser(name, help=f"(needs bulkhead[{extra}])", add_help=False)
    group.add_argument("rest", nargs=argparse.REMAINDER)
    group.set_defaults(handler=refuse)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(command_word(argv)).parse_args(argv)
    logs.configure(json_lines=args.log_json, verbose=args.verbose)
    try:
        return args.handler(args)
    except BulkheadError as error:
        log.debug("command failed", exc_info=True)
        print(f"bulkhead: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        # Every operation cleans up on the way out (staging directories, saved state), so this is safe.
        print("bulkhead: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
