"""`bulkhead db status | switchover | failover | url`: the database cluster of one region, through Patroni."""

from __future__ import annotations

import argparse
import json
import time

from rich.console import Console
from rich.table import Table

from bulkhead import project
from bulkhead.ha import cluster
from bulkhead.ha.reach import Reach

# Seconds a switchover or failover may take before the command says it did not finish.
HANDOVER_TIMEOUT = 60
URL_FILE = "/etc/bulkhead/database.url"


def _reach(args: argparse.Namespace) -> Reach:
    return Reach.of_project(project.find(args.project), args.region)


def cmd_status(args: argparse.Namespace) -> int:
    found = _reach(args).cluster()
    if args.json:
        print(json.dumps({"members": [m.as_json() for m in found]}, indent=2))
        return 0
    table = Table(title=f"database members in {args.region}")
    for column in ("host", "az", "role", "state", "timeline", "lag (bytes)"):
        table.add_column(column)
    for member in found:
        role = member.role + (" (synchronous)" if member.synchronous else "")
        table.add_row(member.host, member.az, role, member.state, _text(member.timeline), _text(member.lag_bytes))
    Console().print(table)
    if cluster.leader(found) is None:
        print(f"no member leads: writes are refused until one does (see `bulkhead db failover --region {args.region}`)")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Exit 0 when the cluster is as expected, else 1 with one line saying what is not (for runbook checks)."""
    streaming = tuple(h for h in (args.streaming or "").split(",") if h)
    problem = cluster.expectation_problem(_reach(args).cluster(), args.leader_not, args.leader_outside_az, streaming)
    if problem:
        raise cluster.ClusterError(f"{args.region}: {problem}")
    print(f"{args.region}: as expected")
    return 0


def _text(value: int | None) -> str:
    return "-" if value is None else str(value)


def cmd_switchover(args: argparse.Namespace) -> int:
    reach = _reach(args)
    current, target = cluster.switchover_target(reach.cluster(), args.to)
    body = {"leader": current.host, **({"candidate": target.host} if target else {})}
    started = time.monotonic()
    answer = reach.patroni(current.address, "POST", "/switchover", body, timeout=HANDOVER_TIMEOUT)
    if not answer.ok:
        raise cluster.ClusterError(f"Patroni refused the switchover from {current.host}: {_said(answer.body)}")
    new = _wait_for_new_leader(reach, current.host, started)
    print(f"switched over from {current.host} ({current.az}) to {new.host} ({new.az}) in "
          f"{time.monotonic() - started:.1f} s")  # fmt: skip
    return 0


def cmd_failover(args: argparse.Namespace) -> int:
    reach = _reach(args)
    found = reach.cluster()
    maximum = int(reach.dynamic_config().get("maximum_lag_on_failover", 1048576))
    refusal = cluster.failover_refusal(found, args.to, maximum, args.force)
    if refusal:
        raise cluster.ClusterError(f"failover refused: {refusal}")
    target = next(m for m in found if args.to in (m.host, m.address))
    old = cluster.leader(found)
    started = time.monotonic()
    answer = reach.patroni(target.address, "POST", "/failover", {"candidate": target.host}, timeout=HANDOVER_TIMEOUT)
    if not answer.ok:
        raise cluster.ClusterError(f"Patroni refused the failover to {target.host}: {_said(answer.body)}")
    new = _wait_for_new_leader(reach, old.host if old else "", started)
    print(f"failed over to {new.host} ({new.az}) in {time.monotonic() - started:.1f} s")
    return 0


def _wait_for_new_leader(reach: Reach, old: str, started: float) -> cluster.Member:
    while time.monotonic() - started < HANDOVER_TIMEOUT:
        new = cluster.leader(reach.cluster())
        if new is not None and new.host != old:
            return new
        time.sleep(0.5)
    raise cluster.ClusterError(f"no new leader within {HANDOVER_TIMEOUT} s; see `bulkhead db status --region "
                               f"{reach.region}` and the members' patroni.log")  # fmt: skip


def _said(body: object) -> str:
    return (body if isinstance(body, str) else json.dumps(body)).strip().splitlines()[-1] if body else "no answer"


def cmd_url(args: argparse.Namespace) -> int:
    reach = _reach(args)
    dynos = reach.of_role("dyno_host")
    if not dynos:
        raise cluster.ClusterError(f"region {args.region} has no dyno host to ask; run `bulkhead hosts up`")
    print(reach.read_file(dynos[0], URL_FILE).strip())
    return 0


def register_verbs(verbs: argparse._SubParsersAction) -> None:
    """Add the cluster verbs to `bulkhead db`."""

    def verb(name: str, help_text: str, handler) -> argparse.ArgumentParser:
        parser = verbs.add_parser(name, help=help_text, description=help_text)
        parser.add_argument("--region", required=True, help="the region whose database cluster to use")
        parser.set_defaults(handler=handler)
        return parser

    status = verb("status", "each member's host, AZ, role, state, timeline and lag, as Patroni sees them", cmd_status)
    status.add_argument("--json", action="store_true", help='print {"members": [{host, az, role, state, timeline, '
                        'lag_bytes}]}')  # fmt: skip
    switchover = verb(
        "switchover", "hand the leader role to a replica, with the leader's help (planned; loses nothing)",
        cmd_switchover,
    )  # fmt: skip
    switchover.add_argument("--to", metavar="HOST", help="the replica to hand over to (default: Patroni picks)")
    failover = verb(
        "failover",
        "promote a replica without the leader's help; refused when it lags beyond bulkhead:maximumLagOnFailover",
        cmd_failover,
    )
    failover.add_argument("--to", metavar="HOST", required=True, help="the replica to promote")
    failover.add_argument("--force", action="store_true", help="promote even a lagging replica, losing its lag")
    check = verb("check", "exit 0 when the cluster is as expected, else 1 saying what is not (runbooks' checks)",
                 cmd_check)  # fmt: skip
    check.add_argument("--leader-not", metavar="HOST", help="a running leader other than HOST")
    check.add_argument("--leader-outside-az", metavar="AZ", help="a running leader outside AZ")
    check.add_argument("--streaming", metavar="HOSTS", help="these members (comma-separated) streaming as replicas")
    verb("url", "print the apps' connection URL, as a dyno host sees it (127.0.0.1:5432, the current primary)",
         cmd_url)  # fmt: skip
