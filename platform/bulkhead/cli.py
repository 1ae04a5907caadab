"""`bulkhead`: the operator's command line. Each subcommand's --help says what it does."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from bulkhead import logs, plan, topology
from bulkhead.backup import commands as db_commands
from bulkhead.backup.settings import BackupError
from bulkhead.hosts import commands as hosts_commands
from bulkhead.hosts.sandbox import SandboxError
from bulkhead.localcloud import commands as local_commands
from bulkhead.localcloud.aws import LocalCloudError
from bulkhead.stack_runner import PROJECT_DIR, StackError

log = logging.getLogger("bulkhead")


def cmd_plan(args: argparse.Namespace) -> int:
    """Evaluate stacks with invented ids and print what each would create."""
    runs = plan.evaluate_all(stacks=topology.select_stacks(PROJECT_DIR, args.stacks))
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bulkhead",
        description="Deploy and rehearse the recovery of a multi-region Heroku-style platform.",
    )
    parser.add_argument("--log-json", action="store_true", help="write logs to stderr as one JSON object per line")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
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
    local_commands.register(commands)
    db_commands.register(commands)
    hosts_commands.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(json_lines=args.log_json, verbose=args.verbose)
    try:
        return args.handler(args)
    except (topology.ConfigError, StackError, LocalCloudError, BackupError, SandboxError) as error:
        log.debug("command failed", exc_info=True)
        print(f"bulkhead: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bulkhead: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
