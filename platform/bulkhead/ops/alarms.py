"""`bulkhead alarms`: every alarm Bulkhead declares and its state now, each read where it lives.

Each region's own alarms through that region's endpoint; the heartbeat alarms (one per region, the dead
man's switch) in the status region as the status account. A region that does not answer is shown as
such: that is what a lost region looks like, and its heartbeat alarm says the rest.
"""

from __future__ import annotations

import argparse
import json

import botocore.exceptions
from rich.console import Console
from rich.table import Table

from bulkhead import project, topology
from bulkhead.localcloud.aws import is_unreachable
from bulkhead.ops import status
from bulkhead.ops.secrets import region_client


def _rows(cloudwatch, where: str, prefix: str) -> list[dict]:
    try:
        alarms = cloudwatch.describe_alarms(AlarmNamePrefix=prefix)["MetricAlarms"]
    except botocore.exceptions.BotoCoreError as error:
        if not is_unreachable(error):
            raise
        return [{"alarm": f"{prefix}*", "where": where, "state": "UNREACHABLE", "since": "", "reason": str(error)}]
    return [{"alarm": a["AlarmName"], "where": where, "state": a["StateValue"],
             "since": a["StateUpdatedTimestamp"].strftime("%Y-%m-%dT%H:%M:%SZ") if a.get("StateUpdatedTimestamp")
             else "", "reason": a.get("StateReason", "")} for a in alarms]  # fmt: skip


def current(project_dir) -> list[dict]:
    """One row per alarm: every region stack's, then the status region's heartbeat alarms."""
    rows = []
    for region in (s for s in topology.stack_names(project_dir) if s != topology.GLOBAL_STACK):
        rows += _rows(region_client(project_dir, "cloudwatch", region), region, f"bulkhead-{region}-")
    client, _, spec = status.status_account(project_dir)
    rows += [r for r in _rows(client("cloudwatch"), f"{spec.status_region} (status)", "bulkhead-")
             if r["alarm"].endswith("-silent") or r["state"] == "UNREACHABLE"]  # fmt: skip
    return rows


def cmd_alarms(args: argparse.Namespace) -> int:
    rows = current(project.find(args.project))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title="alarms (--json adds each one's reason)")
    for column in ("alarm", "where", "state", "since"):
        table.add_column(column, overflow="fold")
    for row in rows:
        style = "red" if row["state"] in ("ALARM", "UNREACHABLE") else None
        table.add_row(row["alarm"], row["where"], row["state"], row["since"], style=style)
    Console().print(table)
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add `bulkhead alarms` to the command line."""
    alarms = commands.add_parser("alarms", help="every alarm and its state now (regions, and the status region's "
                                 "heartbeat alarms)", description=__doc__)  # fmt: skip
    alarms.add_argument("--json", action="store_true", help="print one JSON object per alarm")
    alarms.set_defaults(handler=cmd_alarms)
