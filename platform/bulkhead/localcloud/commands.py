"""The `bulkhead local` command group."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bulkhead import project, topology
from bulkhead.localcloud import cloud
from bulkhead.localcloud.state import Store

KEY_OUTPUTS = ("routerLbDnsName", "archiveBucket", "archiveReplicaBucket", "zoneId", "statusUrl")


def cmd_up(args: argparse.Namespace) -> int:
    project_dir = project.find(args.project)
    stacks = topology.select_stacks(project_dir, args.stacks)
    console = Console(stderr=True)
    store = Store.of_project(project_dir)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, disable=args.log_json or (not console.is_terminal and not args.progress),
    ) as progress:  # fmt: skip
        task = progress.add_task("validating stacks", total=None)

        def started(counts: dict[str, int]) -> None:
            progress.update(task, description="deploying", total=sum(counts.values()) or None, completed=0)

        def advanced(stack: str, urn: str, action: str) -> None:
            if action != "deleted":
                progress.update(task, description=f"stack {stack}", advance=1)

        info, reports = cloud.up(
            stacks,
            store,
            args.port,
            on_resource=advanced,
            on_start=started,
            project_dir=project_dir,
            ansible_ref=args.ansible_ref,
            config=dict(args.config or []),
            replication_lag=args.replication_lag,
        )
    table = Table(title=f"local cloud at {info.endpoint}")
    for column in ("stack", "created", "updated", "replaced", "deleted", "unchanged", "seconds"):
        table.add_column(column, justify="right" if column != "stack" else "left")
    for report in reports:
        counts = (report.created, report.updated, report.replaced, report.deleted, report.unchanged)
        table.add_row(report.stack, *map(str, counts), f"{report.seconds:.1f}")
    Console().print(table)
    if not any(report.changed for report in reports):
        print("no changes: every resource was already up to date")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    report = cloud.status(Store.of_project(project.find(args.project)))
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return 0 if report["running"] else 1
    if not report["running"]:
        print("the local cloud is not running (start it with `bulkhead local up`)")
        return 1
    console = Console()
    console.print(f"endpoint: {report['endpoint']}")
    table = Table()
    for column in ("stack", "resources", "key outputs"):
        table.add_column(column)
    for stack, entry in report["stacks"].items():
        keys = "\n".join(f"{k}: {entry['outputs'][k]}" for k in KEY_OUTPUTS if k in entry["outputs"])
        table.add_row(stack, str(entry["resources"]), keys)
    console.print(table)
    details = report.get("controller")
    if details:
        regions = ", ".join(f"{r} :{d['port']}" + ("" if d["reachable"] else " (off the air)")
                            for r, d in details["regions"].items())  # fmt: skip
        replication = details["replication"]
        console.print(f"controller: {details['endpoint']}; region fronts: {regions}", highlight=False)
        console.print(
            f"replication: lag {replication['lag_s']:g} s, {replication['copied']} copied, "
            f"{replication['pending']} pending, last lag {replication['last_lag_s']} s",
            highlight=False,
        )
        for check, state in details["health_checks"].items():
            console.print(
                f"health check {check} ({state['region']}): "
                f"{'healthy' if state['healthy'] else 'UNHEALTHY'}: {state['last']}",
                highlight=False,
            )
        alarms = details.get("alarms", {})
        console.print(f"alarms: {alarms.get('evaluations', 0)} evaluations, {alarms.get('changes', 0)} changes of "
                      f"state, {alarms.get('notifications', 0)} notifications", highlight=False)  # fmt: skip
        for distribution, served in details.get("distributions", {}).items():
            console.print(f"distribution {distribution} ({served['domain']}): {served['url']} "
                          f"from s3://{served['bucket']}", highlight=False)  # fmt: skip
    else:
        console.print("controller: not running (run `bulkhead local up` to start it)")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    cloud.down(Store.of_project(project.find(args.project)))
    print("local cloud stopped and its state cleared")
    return 0


def cmd_air(args: argparse.Namespace) -> int:
    store = Store.of_project(project.find(args.project))
    print(cloud.set_on_air(store, args.region, args.state == "on"))
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    print("\n".join(cloud.env_lines(Store.of_project(project.find(args.project)))))
    return 0


def _config_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE, e.g. bulkhead:baseBackupIntervalSeconds=60")
    return key, value


def register(commands: argparse._SubParsersAction) -> None:
    """Add `bulkhead local ...` to the command line."""
    local = commands.add_parser(
        "local",
        help="run the platform's AWS side on this machine (a moto server on 127.0.0.1)",
        description="The local cloud: the same Pulumi program as `pulumi up`, deployed into a moto server on "
        "127.0.0.1. State lives in .bulkhead/local/ (or $BULKHEAD_LOCAL_DIR).",
    )
    verbs = local.add_subparsers(dest="verb", required=True, metavar="VERB")
    up = verbs.add_parser(
        "up",
        help="start the server if needed and deploy stacks",
        description="Start a moto server on a free port of 127.0.0.1 (unless one runs), validate every stack, then "
        "deploy them in order (regions, then global). Re-running changes only what the program changed.",
    )
    up.add_argument("--stacks", help="comma-separated stacks (default: all, e.g. us-east-1,us-west-2,eu-west-1,global)")
    up.add_argument("--port", type=int, help="port for a new server (default: a free one)")
    up.add_argument("--progress", action="store_true", help="show the progress bar even when not on a terminal")
    up.add_argument(
        "--ansible-ref",
        metavar="REF",
        help="the commit, branch or tag hosts pull their roles from (default: this checkout's HEAD commit); the "
        "repository is this checkout as `hosts up --from-image` serves it, not the stack files' bulkhead:ansibleRepo",
    )
    up.add_argument(
        "--config",
        action="append",
        type=_config_pair,
        metavar="KEY=VALUE",
        help="set a key in every region stack for this deployment, e.g. bulkhead:baseBackupIntervalSeconds=60 "
        "(repeatable; validated as the stack files are)",
    )
    up.add_argument(
        "--replication-lag",
        type=float,
        metavar="SECONDS",
        help="how old a new object is before S3 replication copies it to the partner region's bucket (default: as "
        "the running controller has it, else 2)",
    )
    up.set_defaults(handler=cmd_up)
    status = verbs.add_parser(
        "status", help="show the endpoint, each deployed stack, and the controller (fronts, replication, health)"
    )
    status.add_argument("--json", action="store_true", help="print as JSON")
    status.set_defaults(handler=cmd_status)
    verbs.add_parser("down", help="stop the server and clear all local state").set_defaults(handler=cmd_down)
    air = verbs.add_parser(
        "air",
        help="take a region's endpoint off the air (refused connections, every connection cut) or back on",
        description="What a drill does to lose a region's AWS endpoints: its front stops answering. Replication "
        "from and to it stops too.",
    )
    air.add_argument("region", help="a region the controller fronts")
    air.add_argument("state", choices=("on", "off"))
    air.set_defaults(handler=cmd_air)
    verbs.add_parser(
        "env", help='print shell lines to point boto3/aws at the local cloud: eval "$(bulkhead local env)"'
    ).set_defaults(handler=cmd_env)
