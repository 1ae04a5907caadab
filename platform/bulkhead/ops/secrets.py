"""`bulkhead secrets list|rotate|scan`: the platform's credentials, where each is used, its age, rotation, and a scan.

Credentials live only in SSM Parameter Store as SecureStrings, under `bulkhead.parameters.database_path`:
the initial primary generates them at first boot and the hosts read them there. They are never in user
data, stack outputs, logs or state files (`bulkhead check` and the secret-scanning test watch for that).

Rotation of the apps' login is blue/green, with no downtime. The apps' database role (`app`, which owns
their objects) logs in through one of two login roles, `app_blue` and `app_green`, each a member of it
that sets its role to it, so either sees and owns the same objects. A rotation:
1. gives the idle colour a new password and LOGIN, and proves it can log in;
2. publishes it as the `app-login` SecureString ({"user", "password"}: one value, so no reader ever sees
   a user with the other's password);
3. waits `--grace` seconds while consumers re-read `app-login` (each new connection should);
4. then takes LOGIN away from the colour before. Sessions already open keep working.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import logging
import secrets as random_secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from bulkhead import parameters, project, topology
from bulkhead.errors import BulkheadError, UsageError

log = logging.getLogger("bulkhead.secrets")
APP_OWNER = "app"
COLOURS = ("app_blue", "app_green")
LOGIN_PARAMETER = "app-login"


@dataclass(frozen=True)
class Credential:
    """One credential: its parameter under the database path, who uses it, and whether it rotates here."""

    name: str
    parameter: str
    used_by: str
    rotation: str  # "blue/green", or why it does not rotate here


CREDENTIALS = (
    Credential("app", LOGIN_PARAMETER, "the apps on every dyno host (postgres_endpoint's URL), through the "
               "local HAProxy to the primary", "blue/green"),
    Credential("replication", "replication-password", "Patroni's streaming replication between the members",
               "not here yet: every member's Patroni must take a new password together (patroni.yml)"),
    Credential("superuser", "superuser-password", "Patroni, pg_rewind and base backups on the members",
               "not here yet: every member's Patroni must take a new password together (patroni.yml)"),
)  # fmt: skip


class RotationError(BulkheadError):
    """A rotation step failed; what was done before it is said."""


def next_colour(current_user: str) -> str:
    """The login role a rotation moves to: the other colour (the first rotation leaves `app` itself)."""
    return COLOURS[1] if current_user in (APP_OWNER, COLOURS[0]) else COLOURS[0]


def ssm_client(project_dir: Path, region: str):
    """SSM of a region: the local cloud's when one runs for this checkout, else AWS's."""
    return region_client(project_dir, "ssm", region)


def region_client(project_dir: Path, service: str, region: str, direct: bool = False):
    """A boto3 client of `service` in `region`: the local cloud's when one runs for this checkout (through the
    region's front, or with `direct` the moto server itself), else AWS's."""
    from bulkhead.localcloud import controller, server
    from bulkhead.localcloud.aws import LocalAws
    from bulkhead.localcloud.state import Store

    directory = Store.of_project(project_dir).directory
    if direct:
        info = server.running(directory)
        endpoint = info.endpoint if info else None
    else:
        endpoint = controller.front_endpoint(directory, region)
    if endpoint:
        return LocalAws(endpoint).client(service, region)
    import boto3

    return boto3.client(service, region_name=region)


def database_path(project_dir: Path, region: str) -> str:
    files = topology.StackFiles(project_dir)
    stacks = [s for s in files.names() if s != topology.GLOBAL_STACK]
    for stack in stacks:
        spec = files.spec(stack)
        if isinstance(spec, topology.RegionSpec) and spec.region == region:
            return parameters.database_path(region, spec.database_server)
    raise UsageError(
        f"no region stack is in {region}; the regions are {', '.join(files.spec(s).region for s in stacks)}"
    )


def listing(ssm, path: str, now: dt.datetime | None = None) -> list[dict]:
    """Each credential with its parameter's type, version and age; never its value."""
    now = now or dt.datetime.now(dt.UTC)
    found = {}
    for page in ssm.get_paginator("describe_parameters").paginate(
        ParameterFilters=[{"Key": "Path", "Option": "OneLevel", "Values": [path]}]
    ):
        for parameter in page["Parameters"]:
            found[parameter["Name"].rsplit("/", 1)[1]] = parameter
    rows = []
    for credential in CREDENTIALS:
        parameter = found.get(credential.parameter)
        if credential.name == "app" and parameter is None:
            parameter = found.get("app-password")  # before the first rotation
        rows.append({
            "credential": credential.name,
            "parameter": parameter["Name"] if parameter else f"{path}/{credential.parameter}",
            "type": parameter["Type"] if parameter else "missing",
            "version": parameter.get("Version") if parameter else None,
            "age_days": round((now - parameter["LastModifiedDate"]).total_seconds() / 86400, 2) if parameter else None,
            "used_by": credential.used_by,
            "rotation": credential.rotation,
        })  # fmt: skip
    return rows


def current_login(ssm, path: str) -> dict:
    """The apps' login as consumers read it: `app-login`, or before any rotation `app` with `app-password`."""
    try:
        value = ssm.get_parameter(Name=f"{path}/{LOGIN_PARAMETER}", WithDecryption=True)["Parameter"]["Value"]
        return json.loads(value)
    except ssm.exceptions.ParameterNotFound:
        password = ssm.get_parameter(Name=f"{path}/app-password", WithDecryption=True)["Parameter"]["Value"]
        return {"user": APP_OWNER, "password": password}


def rotate_app(
    ssm, path: str, host: str, port: int, grace: float, say: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
) -> dict:  # fmt: skip
    """Rotate the apps' login blue/green (see the module's docstring); returns what changed, no secret."""
    superuser = ssm.get_parameter(Name=f"{path}/superuser-password", WithDecryption=True)["Parameter"]["Value"]
    old = current_login(ssm, path)["user"]
    new = next_colour(old)
    password = random_secrets.token_urlsafe(24)
    admin = f"host={host} port={port} user=postgres dbname=postgres sslmode=prefer connect_timeout=5"
    with psycopg.connect(admin, password=superuser, autocommit=True) as connection:
        exists = connection.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (new,)).fetchone()
        role = sql.Identifier(new)
        if exists:
            connection.execute(sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(role, sql.Literal(password)))
        else:
            connection.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
                role, sql.Literal(password), sql.Identifier(APP_OWNER)))  # fmt: skip
        # Sessions act as the owner role: objects stay the owner's whichever colour made them.
        connection.execute(sql.SQL("ALTER ROLE {} SET role = {}").format(role, sql.Literal(APP_OWNER)))
    say(f"1/4 {new} may log in with a new password")
    with psycopg.connect(f"host={host} port={port} user={new} dbname=postgres sslmode=prefer connect_timeout=5",
                         password=password) as probe:  # fmt: skip
        acting = probe.execute("SELECT current_user").fetchone()[0]
    if acting != APP_OWNER:
        raise RotationError(
            f"{new} logs in but acts as {acting}, not {APP_OWNER}; {old} still logs in, nothing else changed"
        )
    ssm.put_parameter(Name=f"{path}/{LOGIN_PARAMETER}", Type="SecureString", Overwrite=True,
                      Value=json.dumps({"user": new, "password": password}))  # fmt: skip
    say(f"2/4 published {path}/{LOGIN_PARAMETER} for {new}")
    say(f"3/4 waiting {grace:.0f} s for the consumers to re-read it")
    sleep(grace)
    with psycopg.connect(admin, password=superuser, autocommit=True) as connection:
        connection.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(old)))
    say(f"4/4 {old} may no longer log in (its open sessions go on)")
    change = {"credential": "app", "from": old, "to": new, "parameter": f"{path}/{LOGIN_PARAMETER}",
              "by": getpass.getuser(), "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}  # fmt: skip
    log.info("credential rotated", extra=change)
    return change


def cmd_list(args: argparse.Namespace) -> int:
    project_dir = project.find(args.project)
    path = database_path(project_dir, args.region)
    rows = listing(ssm_client(project_dir, args.region), path)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        age = "-" if row["age_days"] is None else f"{row['age_days']:.1f} d"
        print(f"{row['credential']:12} {row['type']:13} {age:>8}  {row['parameter']}")
        print(f"{'':12} used by {row['used_by']}; rotation: {row['rotation']}")
    return 0


def cmd_rotate(args: argparse.Namespace) -> int:
    credential = next((c for c in CREDENTIALS if c.name == args.name), None)
    if credential is None:
        raise UsageError(
            f"unknown credential {args.name!r}; the credentials are {', '.join(c.name for c in CREDENTIALS)}"
        )
    if credential.rotation != "blue/green":
        raise UsageError(f"{credential.name} does not rotate with this command ({credential.rotation}); rotate app")
    project_dir = project.find(args.project)
    path = database_path(project_dir, args.region)
    change = rotate_app(ssm_client(project_dir, args.region), path, args.host, args.port, args.grace,
                        say=lambda line: print(line, file=sys.stderr))  # fmt: skip
    print(json.dumps(change))
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    from bulkhead.ops import secret_scan

    project_dir = project.find(args.project)
    files = topology.StackFiles(project_dir)
    regions = sorted({files.spec(s).region for s in files.names() if s != topology.GLOBAL_STACK})

    def client(service: str):
        # The moto server itself, not the regions' fronts: a region a drill took off the air is still scanned.
        return lambda region: region_client(project_dir, service, region, direct=True)

    from bulkhead.hosts.sandbox import Sandboxes

    scanner = secret_scan.scan([project_dir / ".bulkhead"], Sandboxes.of_project(project_dir), regions,
                               client("ssm"), client("ec2"))  # fmt: skip
    for finding in scanner.findings:
        print(f"FOUND  {finding.secret}  in {finding.place}")
    found = len(scanner.findings)
    if not scanner.secrets:
        print(f"scanned {scanner.places} places, but there is no secret to look for yet (no SecureString under "
              "/bulkhead/, no site passwords)", file=sys.stderr)  # fmt: skip
    else:
        print(f"scanned {scanner.places} places for {len(scanner.secrets)} secrets: {found or 'no'} finding(s)",
              file=sys.stderr)  # fmt: skip
    if scanner.findings:
        raise RotationError(f"{len(scanner.findings)} secret value(s) found where none may be; rotate them and "
                            "remove what holds them")  # fmt: skip
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add `bulkhead secrets ...` to the command line."""
    group = commands.add_parser("secrets", help="list the platform's credentials and rotate them",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    verbs = group.add_subparsers(dest="verb", required=True, metavar="VERB")
    listed = verbs.add_parser("list", help="each credential, where it is used and its age (never its value)")
    listed.add_argument("--region", required=True, help="the region stack's region")
    listed.add_argument("--json", action="store_true", help="print the rows as JSON")
    listed.set_defaults(handler=cmd_list)
    rotate = verbs.add_parser("rotate", help="rotate one credential with no downtime")
    rotate.add_argument("name", help=", ".join(c.name for c in CREDENTIALS))
    rotate.add_argument("--region", required=True, help="the region stack's region")
    rotate.add_argument("--host", required=True, help="the primary's address (`bulkhead db status` shows it)")
    rotate.add_argument("--port", type=int, default=5432, help="the primary's port (default 5432)")
    rotate.add_argument(
        "--grace",
        type=float,
        default=300.0,
        help="seconds the consumers get to re-read the new login before the old one stops (300)",
    )
    rotate.set_defaults(handler=cmd_rotate)
    scan = verbs.add_parser("scan", help="look for secret values in user data, outputs, .bulkhead/ and the logs")
    scan.set_defaults(handler=cmd_scan)
