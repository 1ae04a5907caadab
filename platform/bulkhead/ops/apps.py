"""`bulkhead apps`: the platform's API for apps: scale, restart and ps.

Writes change an app's desired state in the registry (`/bulkhead/<region>/apps/<app>`), with a
compare-and-set so that two operators never lose each other's change; the dyno managers do the rest.
Two rods stop writes during an incident, and reads keep working under both:
- `api-maintenance` refuses every write verb (the June 2012 rod: the API off, the apps up);
- `app-management-lockdown` refuses scale and restart (February 2012: freeze what works).
"""

from __future__ import annotations

import argparse
import json
import re

from rich.console import Console
from rich.table import Table

from bulkhead import project
from bulkhead.agents import dynos, routes
from bulkhead.errors import BulkheadError, UsageError

WRITE_VERBS = ("scale", "restart")
# The rods each write verb obeys, in the order they are checked.
REFUSED_BY = {verb: ("api-maintenance", "app-management-lockdown") for verb in WRITE_VERBS}
SCALE = re.compile(r"(?P<app>[a-z][a-z0-9-]{0,29})(:(?P<type>[a-z]+))?=(?P<count>[0-9]+)")


class Refused(BulkheadError):
    """A rod forbids this verb now; the message names the rod and how to lift it."""


def refusal(verb: str, rods: dict[str, str], region: str) -> str | None:
    """Why `verb` may not run with these rod values, or None."""
    for rod in REFUSED_BY.get(verb, ()):
        if rods.get(rod) == "on":
            why = "the platform API is in maintenance" if rod == "api-maintenance" else "app management is locked down"
            return (f"apps {verb} refused: {why} (rod {rod} is on in {region}); apps keep serving. Lift it with "
                    f"`bulkhead rods set {rod} off --region {region}`")  # fmt: skip
    return None


def parse_scale(text: str) -> tuple[str, str, int]:
    """`APP=N` (web processes) or `APP:TYPE=N`, or UsageError in one line."""
    match = SCALE.fullmatch(text)
    if not match:
        raise UsageError(f"scale {text!r}: give APP=N or APP:TYPE=N, e.g. sample=3 or sample:clock=1")
    kind = match["type"] or "web"
    if kind not in dynos.PROCESS_TYPES:
        raise UsageError(f"scale {text!r}: no process type {kind!r}; the types are {', '.join(dynos.PROCESS_TYPES)}")
    return match["app"], kind, int(match["count"])


def scaled(current: dynos.Desired, kind: str, count: int) -> dynos.Desired:
    """The desired state with `kind` at `count` (checked as the managers check it)."""
    formation = {**current.formation, kind: count}
    return dynos.parse_desired(current.app, json.dumps({"formation": formation, "restarts": current.restarts}))


def restarted(current: dynos.Desired) -> dynos.Desired:
    return dynos.Desired(current.app, current.formation, current.restarts + 1)


def _rods(args: argparse.Namespace) -> dict[str, str]:
    from bulkhead.ops.rods import RodError, current
    from bulkhead.ops.secrets import ssm_client

    try:
        return {
            row["rod"]: row["value"]
            for row in current(ssm_client(project.find(args.project), args.region), args.region)
        }
    except RodError as error:
        raise Refused(f"apps {args.verb} refused: the rods cannot be read, so a write is not safe ({error})") from None


def _reach(args: argparse.Namespace):
    from bulkhead.ha.reach import Reach

    return Reach.of_project(project.find(args.project), args.region)


def _change(args: argparse.Namespace, app: str, change) -> dynos.Desired:
    """Apply `change` to an app's desired state with a compare-and-set, refusing if a rod forbids the verb."""
    problem = refusal(args.verb, _rods(args), args.region)
    if problem:
        raise Refused(problem)
    with _reach(args).registry() as registry:
        key = routes.apps_prefix(args.region) + app
        for _ in range(5):
            value, revision = registry.get_with_revision(key)
            if value is None:
                raise UsageError(
                    f"no app {app!r} in {args.region}; the apps are {', '.join(_apps(registry, args.region))}"
                )
            new = change(dynos.parse_desired(app, value))
            if registry.replace_at(key, new.value(), revision):
                return new
        raise BulkheadError(f"{app}'s desired state kept changing under this command; try again")


def _apps(registry, region: str) -> list[str]:
    found, _ = registry.get_prefix(routes.apps_prefix(region))
    return sorted(k[len(routes.apps_prefix(region)) :] for k in found) or ["none"]


def cmd_scale(args: argparse.Namespace) -> int:
    app, kind, count = parse_scale(args.formation)
    try:
        new = _change(args, app, lambda current: scaled(current, kind, count))
    except dynos.BadDesiredState as error:
        raise UsageError(str(error)) from None
    print(f"{app}: {', '.join(f'{k}={n}' for k, n in sorted(new.formation.items()))} in {args.region}")
    return 0


def cmd_restart(args: argparse.Namespace) -> int:
    new = _change(args, args.app, restarted)
    print(f"{args.app}: restart {new.restarts} asked in {args.region}; each process is replaced by its manager")
    return 0


def processes(reach, region: str) -> list[dict]:
    """Every dyno process of the region as its host's manager last reported it, with the app's routes."""
    rows = []
    for host in reach.of_role("dyno_host"):
        try:
            state = json.loads(reach.read_file(host, "/var/lib/bulkhead/dyno-manager/state.json"))
        except (BulkheadError, ValueError):
            rows.append({"app": "?", "process": "?", "host": host.name, "az": host.az, "state": "manager unreachable"})
            continue
        for name, status in sorted(state.get("processes", {}).items()):
            app, _, process = name.partition(" ")
            rows.append({"app": app, "process": process, "host": host.name, "az": host.az, "state": status})
    return rows


def cmd_ps(args: argparse.Namespace) -> int:
    rows = processes(_reach(args), args.region)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(f"{row['app']} {row['process']} {row['state']} on {row['host']} ({row['az']})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with _reach(args).registry() as registry:
        found, _ = registry.get_prefix(routes.apps_prefix(args.region))
    rows = []
    for key, value in sorted(found.items()):
        app = key[len(routes.apps_prefix(args.region)) :]
        try:
            desired = dynos.parse_desired(app, value)
            rows.append({"app": app, "formation": desired.formation, "restarts": desired.restarts})
        except dynos.BadDesiredState as error:
            rows.append({"app": app, "formation": {}, "restarts": 0, "error": str(error)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title=f"apps in {args.region}")
    for column in ("app", "formation", "restarts"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["app"], " ".join(f"{k}={n}" for k, n in sorted(row["formation"].items())), str(row["restarts"])
        )
    Console().print(table)
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add `bulkhead apps ...` to the command line."""
    group = commands.add_parser(
        "apps", help="the platform API for apps: scale, restart, ps",
        description="Writes change an app's desired state in the region's registry; the dyno managers launch and "
        "stop processes to match. With the api-maintenance rod on, every write is refused; with "
        "app-management-lockdown on, scale and restart are refused. ps and list always work.",
    )  # fmt: skip
    verbs = group.add_subparsers(dest="verb", required=True, metavar="VERB")
    scale = verbs.add_parser("scale", help="set how many processes of a type an app runs: APP=N or APP:TYPE=N")
    scale.add_argument("formation", metavar="APP=N", help="e.g. sample=6 (web) or sample:clock=1")
    scale.set_defaults(handler=cmd_scale)
    restart = verbs.add_parser("restart", help="replace every process of an app (its managers do, one round each)")
    restart.add_argument("app", metavar="APP")
    restart.set_defaults(handler=cmd_restart)
    ps = verbs.add_parser("ps", help="every process, one line each: app, process, state, host and AZ")
    ps.set_defaults(handler=cmd_ps)
    listed = verbs.add_parser("list", help="every app and its formation")
    listed.set_defaults(handler=cmd_list)
    for parser in (scale, restart, ps, listed):
        parser.add_argument("--region", required=True, help="the app's region")
    for parser in (ps, listed):
        parser.add_argument("--json", action="store_true", help="print JSON")
