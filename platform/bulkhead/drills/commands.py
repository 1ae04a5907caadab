"""`bulkhead drill`: real faults on one region's sandbox hosts, with a report of what they cost."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from bulkhead import project
from bulkhead.drills import (
    archive_stall,
    az_loss,
    bad_route_record,
    boot_storm,
    ebs_loss,
    partition_singleton,
    region_loss,
    region_silent,
    rod_flips,
    slow_registry,
)
from bulkhead.drills.report import Report
from bulkhead.errors import UsageError
from bulkhead.ha.reach import Reach

# The agents' drills: each reports its figures and goals, and exits 0 only when it met every goal.
AGENT_DRILLS = (
    ("bad-route-record", bad_route_record, "10,000 fuzzed route records into the registry while HTTP flows"),
    ("rods", rod_flips, "flip each control rod and show its agents obey within the bound"),
    ("partition-singleton", partition_singleton, "cut off the clock's host; fencing tokens prove one copy ran"),
    ("slow-registry", slow_registry, "slow the routers' links to the registry while routes churn at 100/s"),
    ("boot-storm", boot_storm, "slow one cell's disks while the app scales up: rate cap, breaker, drain"),
    ("archive-stall", archive_stall, "cut the primary's route to S3 while it writes: the archive-lag alarm pages"),
    ("region-silent", region_silent, "take a region off the air: the status region's heartbeat alarm pages"),
)


def _finish(args: argparse.Namespace, report: Report) -> int:
    project_dir = project.find(args.project)
    path = report.save(project.state_dir(project_dir, "drills"))
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
        return 0
    table = Table(title=f"drill {report.drill} in {report.region} ({report.az}): {path}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name in ("rto_s", "rows_acknowledged", "rows_lost", "http_ok_ratio", "rejoined_s", "old_leader",
                 "new_leader", "failed_over"):  # fmt: skip
        value = getattr(report, name)
        table.add_row(name, "-" if value is None else str(value))
    _print(table, report.steps)
    return 0


def _print(figures: Table, steps: list[dict]) -> None:
    """A drill's figures, then each step with its seconds."""
    table = Table(title="steps")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    for entry in steps:
        table.add_row(entry["name"], f"{entry['seconds']:.1f}")
    console = Console()
    console.print(figures)
    console.print(table)


def _progress(args: argparse.Namespace):
    """Each step on stderr as it ends, so that stdout holds only the report."""
    console = Console(stderr=True)
    return lambda name: console.print(f"[drill {args.verb}] {name}", highlight=False, markup=False)


def cmd_az_loss(args: argparse.Namespace) -> int:
    project_dir = project.find(args.project)
    reach = Reach.of_project(project_dir, args.region)
    scratch = project.state_dir(project_dir, "drills") / "logs"
    return _finish(args, az_loss.run(reach, args.az, scratch, _progress(args), project_dir))


def cmd_ebs_loss(args: argparse.Namespace) -> int:
    project_dir = project.find(args.project)
    reach = Reach.of_project(project_dir, args.region)
    scratch = project.state_dir(project_dir, "drills") / "logs"
    return _finish(args, ebs_loss.run(reach, scratch, _progress(args), project_dir))


def cmd_region_loss(args: argparse.Namespace) -> int:
    project_dir = project.find(args.project)
    if args.databases < 1:
        raise UsageError(f"--databases {args.databases}: give at least 1")
    scratch = project.state_dir(project_dir, "drills") / "logs"
    report = region_loss.run(project_dir, args.region, args.databases, scratch, _progress(args), args.concurrency)
    path = report.save(project.state_dir(project_dir, "drills"))
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
        return 0
    lost = [n for n in report.rows_lost.values() if n]
    table = Table(title=f"drill region-loss: {report.region} lost, {report.partner} took over ({path})")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [("databases", report.databases), ("rto_s first paying", report.rto_s.get("first_paying")),
            ("rto_s all", report.rto_s.get("all")), ("rows acknowledged", sum(report.rows_acknowledged.values())),
            ("rows lost", sum(n or 0 for n in report.rows_lost.values())), ("databases that lost rows", len(lost)),
            ("longest loss window s", max(report.loss_window_s.values(), default=0)), ("bound s", report.bound_s),
            ("priority_inversions", report.priority_inversions), ("dns_before", report.dns_before),
            ("dns_after", report.dns_after)]  # fmt: skip
    for name, value in rows:
        table.add_row(name, "-" if value is None else str(value))
    _print(table, report.steps)
    return 0


def finish_agent_drill(args: argparse.Namespace, report) -> int:
    """Print an agent drill's report (figures, goals, steps); exit 0 only when every goal is met."""
    project_dir = project.find(args.project)
    path = report.save(project.state_dir(project_dir, "drills"))
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        verdict = "goals met" if report.passed else "GOALS MISSED"
        table = Table(title=f"drill {report.drill} in {report.region}: {verdict} ({path})")
        table.add_column("figure")
        table.add_column("value", justify="right")
        table.add_column("goal")
        for name, value in report.figures.items():
            goal = report.goals.get(name)
            table.add_row(name, "-" if value is None else str(value),
                          "" if goal is None else f"{goal['goal']} ({'met' if goal['met'] else 'MISSED'})")  # fmt: skip
        for name, goal in report.goals.items():
            if name not in report.figures:
                table.add_row(name, str(goal["value"]), f"{goal['goal']} ({'met' if goal['met'] else 'MISSED'})")
        _print(table, report.steps)
    return 0 if report.passed else 1


def _agent_drill(module):
    def handler(args: argparse.Namespace) -> int:
        project_dir = project.find(args.project)
        reach = Reach.of_project(project_dir, args.region)
        scratch = project.state_dir(project_dir, "drills") / "logs"
        extra = {"records": args.records} if getattr(args, "records", None) else {}
        return finish_agent_drill(args, module.run(reach, scratch, _progress(args), project_dir=project_dir, **extra))

    return handler


def register(commands: argparse._SubParsersAction) -> None:
    """Add `bulkhead drill ...` to the command line."""
    drill = commands.add_parser(
        "drill",
        help="real faults on a region's sandbox hosts (AZ power loss, a lost volume), with RTO and rows lost",
        description="Each drill checks the region is healthy (or changes nothing), starts a writer on a dyno host "
        "(numbered rows through 127.0.0.1:5432) and an HTTP prober through the routers, does its fault to real "
        "processes, links and files, waits for recovery, and reports rto_s, rows_acknowledged, rows_lost, "
        "http_ok_ratio, rejoined_s and each step's seconds. The report is also written to .bulkhead/drills/.",
    )
    verbs = drill.add_subparsers(dest="verb", required=True, metavar="DRILL")
    az = verbs.add_parser("az-loss", help="power off every host of one AZ, then power it on again",
                          description=az_loss.__doc__)  # fmt: skip
    az.add_argument("--az", help="the AZ to power off (default: the one holding the database leader)")
    az.set_defaults(handler=cmd_az_loss)
    ebs = verbs.add_parser("ebs-loss", help="lose the leader's data volume (server killed, PGDATA gone)",
                           description=ebs_loss.__doc__)  # fmt: skip
    ebs.set_defaults(handler=cmd_ebs_loss)
    region = verbs.add_parser("region-loss", help="lose a whole region; its partner restores every shared database",
                              description=region_loss.__doc__)  # fmt: skip
    region.add_argument("--databases", type=int, default=region_loss.DEFAULT_DATABASES,
                        help="shared databases to make, write to and restore (default 50)")  # fmt: skip
    region.add_argument("--concurrency", type=int, help="databases restored at once (default: this machine's cores)")
    region.set_defaults(handler=cmd_region_loss)
    agent_drills = []
    for name, module, summary in AGENT_DRILLS:
        parser = verbs.add_parser(name, help=summary, description=module.__doc__)
        parser.set_defaults(handler=_agent_drill(module))
        agent_drills.append(parser)
        if module is bad_route_record:
            parser.add_argument("--records", type=int, default=bad_route_record.RECORDS,
                                help=f"fuzzed records to write (default {bad_route_record.RECORDS:,})")  # fmt: skip
    for parser in (az, ebs, region, *agent_drills):
        parser.add_argument("--region", required=True, help="the region whose sandbox hosts to drill")
        parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
