"""The `bulkhead hosts` command group."""

from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.table import Table

from bulkhead import project
from bulkhead.hosts import converge, inventory
from bulkhead.hosts.sandbox import SandboxError, Sandboxes
from bulkhead.localcloud import server
from bulkhead.localcloud.state import Store


def cmd_up(args: argparse.Namespace) -> int:
    project_dir = project.find(args.project)
    sandboxes, store = Sandboxes.of_project(project_dir), Store.of_project(project_dir)
    specs = inventory.local_hosts(args.region, store, project_dir)
    info = server.running(store.directory)
    with Console(stderr=True).status(f"making {len(specs)} sandbox hosts"):
        made = sandboxes.up(specs, s3_port=info.port if info else None)
    inventory.write_inventory(sandboxes.recorded(), sandboxes, store)
    print(f"{len(made)} sandbox hosts made, {len(specs) - len(made)} already there")
    return cmd_list(args)


def cmd_configure(args: argparse.Namespace) -> int:
    project_dir = project.find(args.project)
    sandboxes, store = Sandboxes.of_project(project_dir), Store.of_project(project_dir)
    specs = sandboxes.recorded()
    if not specs:
        raise SandboxError("there are no sandbox hosts; make them with `bulkhead hosts up`")
    path = inventory.write_inventory(specs, sandboxes, store)
    console = Console(stderr=True)
    counts: dict[str, int] = {}
    started = time.perf_counter()
    with console.status("configuring") as status:

        def seen(host: str, task: str, outcome: str) -> None:
            counts[outcome] = counts.get(outcome, 0) + 1
            status.update(f"{task} ({sum(counts.values())} task results)")

        extra = converge.extra_vars(specs, sandboxes, store, project_dir)
        report = converge.converge(sandboxes, path, extra, project_dir, args.playbook, args.limit, seen)
    table = Table(title=f"{args.playbook} in {time.perf_counter() - started:.0f} s")
    for column in ("host", "role", "ok", "changed"):
        table.add_column(column)
    for spec in specs:
        table.add_row(spec.name, spec.role, str(report.ok.get(spec.name, 0)), str(report.changed.get(spec.name, 0)))
    Console().print(table)
    if not report.succeeded:
        raise SandboxError("; ".join(report.failures))
    return 0


def cmd_smoke(args: argparse.Namespace) -> int:
    """Show the configured platform working: HTTP through a router, a row through replication."""
    sandboxes = Sandboxes.of_project(project.find(args.project))
    specs = sandboxes.recorded()
    routers = [s for s in specs if s.role == "router"]
    primaries = [s for s in specs if s.tags.get("bulkhead:postgres") == "primary"]
    standbys = [s for s in specs if s.tags.get("bulkhead:postgres") == "standby"]
    if not routers or not primaries or not standbys:
        raise SandboxError("smoke needs a router, a primary and a standby; run `bulkhead hosts up` and `configure`")
    router = routers[0]
    answer = sandboxes.run(router, "curl", "-sfk", f"https://{router.address}/")
    if answer.returncode != 0:
        raise SandboxError(
            f"router {router.name} did not answer on https://{router.address}/; run `bulkhead hosts configure`"
        )
    print(f"GET https://{router.address}/ on router {router.name} ({router.az}) -> {answer.stdout.strip()}")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    psql = ["runuser", "-u", "postgres", "--", "psql", "-h", "/var/run/postgresql", "-v", "ON_ERROR_STOP=1", "-tAc"]
    written = sandboxes.run(primaries[0], *psql, "CREATE TABLE IF NOT EXISTS smoke (at text); "
                            f"INSERT INTO smoke VALUES ('{stamp}') RETURNING at")  # fmt: skip
    if written.returncode != 0:
        raise SandboxError(f"primary {primaries[0].name} refused the write: {written.stderr.strip()}")
    for _ in range(50):
        read = sandboxes.run(standbys[0], *psql, f"SELECT at FROM smoke WHERE at = '{stamp}'")
        if read.stdout.strip() == stamp:
            break
        time.sleep(0.2)
    else:
        raise SandboxError(f"the row written on {primaries[0].name} did not reach standby {standbys[0].name}")
    print(f"row {stamp!r} written on primary {primaries[0].name} ({primaries[0].az}), "
          f"read on standby {standbys[0].name} ({standbys[0].az})")  # fmt: skip
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    sandboxes = Sandboxes.of_project(project.find(args.project))
    specs = sandboxes.recorded()
    table = Table(title=f"sandbox hosts in {sandboxes.directory}")
    for column in ("host", "role", "region", "az", "address", "network namespace"):
        table.add_column(column)
    for spec in specs:
        table.add_row(spec.name, spec.role, spec.region, spec.az, spec.address, spec.netns)
    Console().print(table)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    removed = Sandboxes.of_project(project.find(args.project)).down()
    if not removed:
        raise SandboxError("there are no sandbox hosts to remove")
    print(f"{removed} sandbox hosts removed: their processes, mounts and namespaces are gone")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add `bulkhead hosts ...` to the command line."""
    hosts = commands.add_parser(
        "hosts",
        help="real hosts for the local cloud's instances (network namespaces + root overlays), configured by Ansible",
        description="Each local-cloud instance with a role becomes a sandbox host: its own network namespace with "
        "the instance's private address, and its own overlay of the root filesystem. State: .bulkhead/hosts/.",
    )
    verbs = hosts.add_subparsers(dest="verb", required=True, metavar="VERB")
    up = verbs.add_parser("up", help="make a sandbox for each instance of a region in the local cloud")
    up.add_argument("--region", default="eu-west-1", help="region stack whose instances get sandboxes")
    up.set_defaults(handler=cmd_up)
    configure = verbs.add_parser("configure", help="run the Ansible playbooks against the sandboxes")
    configure.add_argument("--limit", help="an Ansible host pattern, e.g. role_router")
    configure.add_argument("--playbook", default="site.yml", help="playbook under roles/ (default site.yml)")
    configure.set_defaults(handler=cmd_configure)
    verbs.add_parser("list", help="show the sandbox hosts").set_defaults(handler=cmd_list)
    verbs.add_parser(
        "smoke", help="an HTTP request through a router, and a row from the primary read on the standby"
    ).set_defaults(handler=cmd_smoke)
    verbs.add_parser("down", help="remove every sandbox, mount and namespace").set_defaults(handler=cmd_down)
