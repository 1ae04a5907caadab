"""Control rods: flags that switch parts of the platform off during an incident (seeds 001, 002).

Each rod is an SSM parameter per region, declared by the region stack at its normal value (a deploy
never resets it: the program ignores later changes of its value). `bulkhead rods set` flips one, and
writes who did and when into the parameter's description, so that SSM's own parameter history is the
audit trail (`bulkhead rods history`). The agent a rod names reads it every `POLL_SECONDS` and obeys
within `bound_s`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from bulkhead import project
from bulkhead.errors import BulkheadError, UsageError

log = logging.getLogger("bulkhead.rods")
# How often an agent reads its rods; with SSM's answer time, every rod is obeyed within BOUND_SECONDS.
POLL_SECONDS = 2.0
BOUND_SECONDS = 5.0
SWITCH = ("on", "off")


@dataclass(frozen=True)
class Rod:
    """One control rod: its name, its value when the platform runs normally, its purpose, and who obeys."""

    name: str
    default: str
    purpose: str
    obeyed_by: str
    # Allowed values: the switch's two, or an integer range (inclusive).
    minimum: int | None = None
    maximum: int | None = None

    def check(self, value: str) -> str:
        """`value` as the rod stores it, or UsageError in one line with what it takes."""
        if self.minimum is None:
            if value.lower() not in SWITCH:
                raise UsageError(f"rod {self.name} is on or off, not {value!r}: give on or off")
            return value.lower()
        try:
            number = int(value)
        except ValueError:
            raise UsageError(f"rod {self.name} is a whole number, not {value!r}: give "
                             f"{self.minimum}-{self.maximum}") from None  # fmt: skip
        if not self.minimum <= number <= (self.maximum or number):
            raise UsageError(f"rod {self.name} is {self.minimum}-{self.maximum}, not {number}")
        return str(number)


RODS: tuple[Rod, ...] = (
    Rod("api-maintenance", "off", "Refuse platform API writes; apps keep serving (the June 2012 control rod).",
        "bulkhead apps (every write verb)"),
    Rod("app-management-lockdown", "off", "Freeze deploys, restarts and scaling so working apps stay up (Feb 2012).",
        "bulkhead apps (scale, restart) and the dyno managers (no voluntary moves)"),
    Rod("dyno-launch-rate", "30", "Dyno launches per minute per cell; the flow control that breaks a boot storm.",
        "the dyno managers", minimum=0, maximum=600),
    Rod("router-read-only", "off", "Routers keep the last good route table and ignore the dyno stream.",
        "the router agents"),
)  # fmt: skip
BY_NAME = {rod.name: rod for rod in RODS}


def parameter_name(region: str, rod: Rod) -> str:
    """The SSM parameter that holds a rod in one region."""
    return f"/bulkhead/{region}/rods/{rod.name}"


def rod(name: str) -> Rod:
    """The rod called `name`, or UsageError naming the rods there are."""
    if name not in BY_NAME:
        raise UsageError(f"no rod is called {name!r}; the rods are {', '.join(BY_NAME)}")
    return BY_NAME[name]


class RodError(BulkheadError):
    """A rod could not be read or written; the message says where."""


class Reader:
    """An agent's view of its region's rods: read at most every POLL_SECONDS, and on a failed read the
    last values it had (or the defaults), so that an SSM outage never flips a rod by itself."""

    def __init__(self, ssm, region: str, poll_seconds: float = POLL_SECONDS) -> None:
        self.ssm, self.region, self.poll_seconds = ssm, region, poll_seconds
        self.values = {r.name: r.default for r in RODS}
        # Never read yet: the first question reads, however soon after boot (monotonic time starts near 0).
        self.read_at = float("-inf")
        self.failures = 0
        self._polling = False
        self._lock = threading.Lock()

    def value(self, name: str) -> str:
        """The rod's value: as the background poll last read it, or (without one) read now when stale."""
        with self._lock:
            if not self._polling and time.monotonic() - self.read_at >= self.poll_seconds:
                self._read()
            return self.values[name]

    def poll_in_background(self) -> Reader:
        """Read the rods every poll on a thread of their own, so that a slow SSM never holds up the agent."""
        self._polling = True

        def poll() -> None:
            while True:
                self._read()
                time.sleep(self.poll_seconds)

        threading.Thread(target=poll, name="rods", daemon=True).start()
        return self

    def on(self, name: str) -> bool:
        return self.value(name) == "on"

    def _read(self) -> None:
        self.read_at = time.monotonic()
        names = [parameter_name(self.region, r) for r in RODS]
        try:
            found = self.ssm.get_parameters(Names=names)["Parameters"]
        except Exception as error:  # any SDK or network failure: keep the values we had
            self.failures += 1
            if self.failures == 1 or self.failures % 30 == 0:  # once, then about every minute
                log.warning("rods could not be read; keeping the last values",
                            extra={"error": str(error)[:200], "failures": self.failures})  # fmt: skip
            return
        for parameter in found:
            name = parameter["Name"].rsplit("/", 1)[1]
            if name in BY_NAME:
                try:
                    self.values[name] = BY_NAME[name].check(parameter["Value"])
                except UsageError:
                    log.warning("rod has a value it cannot take; keeping the last", extra={"rod": name})


def who(sts=None) -> str:
    """Who is making a change: the local user and host, and the cloud identity when it can be read."""
    person = f"{getpass.getuser()}@{socket.gethostname()}"
    if sts is None:
        return person
    try:
        return f"{person} ({sts.get_caller_identity()['Arn']})"
    except Exception:  # an identity we cannot read does not stop an incident's change
        return person


def current(ssm, region: str) -> list[dict]:
    """Every rod's value in `region`, with when and by whom it was last set."""
    found = {}
    names = [parameter_name(region, r) for r in RODS]
    try:
        for parameter in ssm.get_parameters(Names=names)["Parameters"]:
            found[parameter["Name"]] = parameter
        described = {p["Name"]: p for p in ssm.describe_parameters(
            ParameterFilters=[{"Key": "Name", "Values": names}])["Parameters"]}  # fmt: skip
    except Exception as error:
        raise RodError(f"the rods of {region} could not be read from SSM: {str(error)[:200]}; "
                       f"is the region's stack deployed (`bulkhead local up` here)?") from None  # fmt: skip
    rows = []
    for r in RODS:
        name = parameter_name(region, r)
        parameter = found.get(name)
        if parameter is None:
            raise RodError(f"rod {r.name} is not in SSM at {name}: deploy the region stack of {region}")
        rows.append({"rod": r.name, "value": parameter["Value"], "default": r.default,
                     "version": parameter["Version"], "changed": str(parameter.get("LastModifiedDate", "")),
                     "note": described.get(name, {}).get("Description", ""), "obeyed_by": r.obeyed_by})  # fmt: skip
    return rows


def set_rod(ssm, region: str, name: str, value: str, by: str, reason: str = "",
            now: dt.datetime | None = None) -> dict:  # fmt: skip
    """Set a rod, recording who and when in the parameter's description (kept by SSM's history)."""
    chosen = rod(name)
    stored = chosen.check(value)
    before = next(row for row in current(ssm, region) if row["rod"] == name)
    at = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    note = f"set to {stored} by {by} at {at}" + (f": {reason}" if reason else "")
    ssm.put_parameter(Name=parameter_name(region, chosen), Value=stored, Type="String", Overwrite=True,
                      Description=note[:1024])  # fmt: skip
    change = {"rod": name, "region": region, "from": before["value"], "to": stored, "by": by, "at": at,
              "reason": reason}  # fmt: skip
    log.info("rod set", extra=change)
    return change


def history(ssm, region: str, name: str) -> list[dict]:
    """Every value a rod has had, oldest first, with the note its setter left."""
    chosen = rod(name)
    rows = []
    for page in ssm.get_paginator("get_parameter_history").paginate(Name=parameter_name(region, chosen)):
        for version in page["Parameters"]:
            rows.append({"version": version["Version"], "value": version["Value"],
                         "changed": str(version.get("LastModifiedDate", "")),
                         "note": version.get("Description", "")})  # fmt: skip
    return rows


def _clients(args: argparse.Namespace):
    from bulkhead.ops.secrets import region_client

    project_dir = project.find(args.project)
    return region_client(project_dir, "ssm", args.region), region_client(project_dir, "sts", args.region)


def _print(rows: list[dict], columns: tuple[str, ...], title: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row[c]) for c in columns))
    Console().print(table)


def cmd_list(args: argparse.Namespace) -> int:
    ssm, _ = _clients(args)
    _print(current(ssm, args.region), ("rod", "value", "default", "changed", "note", "obeyed_by"),
           f"control rods of {args.region}", args.json)  # fmt: skip
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    rod(args.name)
    ssm, _ = _clients(args)
    row = next(r for r in current(ssm, args.region) if r["rod"] == args.name)
    print(json.dumps(row, indent=2) if args.json else row["value"])
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    rod(args.name).check(args.value)  # refused before anything is read or written
    ssm, sts = _clients(args)
    change = set_rod(ssm, args.region, args.name, args.value, who(sts), args.reason or "")
    if args.json:
        print(json.dumps(change, indent=2))
    else:
        print(f"{change['rod']} in {args.region}: {change['from']} -> {change['to']} (by {change['by']} at "
              f"{change['at']}); obeyed by {rod(args.name).obeyed_by} within {BOUND_SECONDS:.0f} s")  # fmt: skip
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    ssm, _ = _clients(args)
    _print(history(ssm, args.region, args.name), ("version", "value", "changed", "note"),
           f"rod {args.name} in {args.region}", args.json)  # fmt: skip
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add `bulkhead rods ...` to the command line."""
    rods_list = "; ".join(f"{r.name} ({r.default}): {r.purpose}" for r in RODS)
    group = commands.add_parser(
        "rods", help="read and flip the control rods that switch parts of the platform off",
        description=f"Control rods are SSM parameters per region that the platform's agents obey within "
        f"{BOUND_SECONDS:.0f} s. The rods: {rods_list}",
    )  # fmt: skip
    verbs = group.add_subparsers(dest="verb", required=True, metavar="VERB")
    listed = verbs.add_parser("list", help="every rod's value, who set it and when")
    listed.set_defaults(handler=cmd_list)
    got = verbs.add_parser("get", help="one rod's value")
    got.add_argument("name", metavar="NAME", help=f"one of {', '.join(BY_NAME)}")
    got.set_defaults(handler=cmd_get)
    put = verbs.add_parser("set", help="flip a rod (refused in one line for an unknown rod or a bad value)")
    put.add_argument("name", metavar="NAME", help=f"one of {', '.join(BY_NAME)}")
    put.add_argument("value", metavar="VALUE", help="on or off; dyno-launch-rate: launches per minute per cell")
    put.add_argument("--reason", help="why, kept in the rod's history with who and when")
    put.set_defaults(handler=cmd_set)
    hist = verbs.add_parser("history", help="every value a rod has had, with who set it and when")
    hist.add_argument("name", metavar="NAME", help=f"one of {', '.join(BY_NAME)}")
    hist.set_defaults(handler=cmd_history)
    for parser in (listed, got, put, hist):
        parser.add_argument("--region", required=True, help="the region whose rods these are")
        parser.add_argument("--json", action="store_true", help="print JSON")
