"""The `bulkhead hosts` command group."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

from rich.console import Console
from rich.table import Table

from bulkhead import project
from bulkhead.hosts import converge, fabric, image, inventory
from bulkhead.hosts.sandbox import BAKE_ROLE, HostSpec, SandboxError, Sandboxes
from bulkhead.localcloud import controller, images, server
from bulkhead.localcloud.state import Store


def cmd_up(args: argparse.Namespace) -> int:
    project_dir = project.find(args.project)
    sandboxes, store = Sandboxes.of_project(project_dir), Store.of_project(project_dir)
    specs = inventory.local_hosts(args.region, store, project_dir)
    if args.role:
        specs = [s for s in specs if s.role == args.role or s.tags.get("bulkhead:postgres") == args.role]
    if args.sample:
        specs = _sample(specs)
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {s.name for s in specs}
        if unknown:
            raise SandboxError(f"no running instance {', '.join(sorted(unknown))} in {args.region}; see `bulkhead "
                               "local status` or the EC2 API for the instance ids")  # fmt: skip
        specs = [s for s in specs if s.name in wanted]
    info = server.running(store.directory)
    if args.from_image:
        settings = image.default_settings()
        base = image.image_for(settings)
        problem = base.problem()
        if problem:
            raise SandboxError(f"{problem}; run `bulkhead image build`")
        # Each from its own AMI: an image the local cloud took (a bake's) stands on the base image's root.
        taken = images.images_dir()
        specs = [dataclasses.replace(s, image=images.lower_layers(taken, s.ami, str(base.root))) for s in specs]
    with Console(stderr=True).status(f"making {len(specs)} sandbox hosts"):
        if not args.from_image:
            made = sandboxes.up(
                specs, s3_port=info.port if info else None, fronts=controller.fronts_of(store.directory)
            )
        else:
            if info is None:
                raise SandboxError("the local cloud is not running; run `bulkhead local up`")
            services = fabric.ensure_services(sandboxes, project_dir, image.cache_dir(), settings.mirror_hosts)
            made = sandboxes.up(specs)
            fabric.ensure_daemon(sandboxes, services, info.port)
            for spec in made:
                sandboxes.boot(spec, args.metadata_timeout)
    inventory.write_inventory([s for s in sandboxes.recorded() if s.role != BAKE_ROLE], sandboxes, store)
    print(f"{len(made)} sandbox hosts made, {len(specs) - len(made)} already there")
    if args.from_image and made:
        print("first boots started: follow them with `bulkhead hosts wait`")
    return cmd_list(args)


def _sample(specs: list[HostSpec]) -> list[HostSpec]:
    """One host of each tier, the router and the dyno host in different AZs: the whole platform, fewest hosts."""
    router = next((s for s in specs if s.role == "router"), None)
    dyno = next((s for s in specs if s.role == "dyno_host" and (router is None or s.az != router.az)), None)
    databases = [s for s in specs if s.role == "postgres"]
    return [s for s in (router, dyno, *databases) if s is not None]


def cmd_wait(args: argparse.Namespace) -> int:
    """Wait for every first boot from the image, then show each host's boot time and result."""
    sandboxes = Sandboxes.of_project(project.find(args.project))
    specs = [s for s in sandboxes.recorded() if s.image and s.role != BAKE_ROLE]
    if not specs:
        raise SandboxError("no sandbox was booted from the image; run `bulkhead hosts up --from-image`")
    deadline = time.monotonic() + args.timeout
    results: dict[str, dict | None] = {}
    with Console(stderr=True).status("waiting for first boots") as status:
        while True:
            results = {s.name: sandboxes.boot_result(s) for s in specs}
            done = sum(r is not None for r in results.values())
            status.update(f"first boots: {done} of {len(specs)} finished")
            if done == len(specs) or time.monotonic() > deadline:
                break
            time.sleep(1)
    rows = []
    for spec in specs:
        result = results[spec.name]
        seconds = result["seconds"] if result else round(time.time() - sandboxes.boot_started(spec))
        rows.append({"name": spec.name, "role": _role(spec), "az": spec.az, "seconds": seconds,
                     "result": result["result"] if result else "timed out"})  # fmt: skip
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        table = Table(title="first boots from the image")
        for column in ("host", "role", "az", "seconds", "result"):
            table.add_column(column)
        for row in rows:
            table.add_row(row["name"], row["role"], row["az"], str(row["seconds"]), row["result"])
        Console().print(table)
    failed = [spec for spec, row in zip(specs, rows, strict=True) if row["result"] != "ok"]
    if failed:
        print("\n".join(_boot_failure(sandboxes, spec, results[spec.name]) for spec in failed), file=sys.stderr)
        raise SandboxError(
            f"{len(failed)} of {len(specs)} first boots did not finish well: "
            + ", ".join(f"{s.name} ({_role(s)})" for s in failed)
        )
    return 0


def _role(spec: HostSpec) -> str:
    return spec.tags.get("bulkhead:postgres") or spec.role


def _boot_failure(sandboxes: Sandboxes, spec: HostSpec, result: dict | None) -> str:
    log_path = sandboxes.boot_log(spec)
    try:
        tail = log_path.read_text(errors="replace").rstrip().splitlines()[-15:]
    except OSError:
        tail = ["(no boot log yet)"]
    what = f"failed (exit {result['exit']})" if result else "did not finish in time"
    lines = "\n".join(f"  | {line}" for line in tail)
    return f"host {spec.name} ({_role(spec)}, {spec.az}): first boot {what}; the end of {log_path}:\n{lines}"


def cmd_exec(args: argparse.Namespace) -> int:
    """Run a command inside one sandbox, in its namespace and on its root, with this terminal's stdio."""
    sandboxes = Sandboxes.of_project(project.find(args.project))
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise SandboxError("name the command to run: bulkhead hosts exec HOST -- CMD...")
    matches = [s for s in sandboxes.recorded() if args.host in (s.name, s.address)]
    if not matches:
        known = ", ".join(s.name for s in sandboxes.recorded()) or "none; run `bulkhead hosts up`"
        raise SandboxError(f"no sandbox host {args.host!r}; known hosts: {known}")
    # As a login would: the host's own environment, none of this machine's (its pip or proxy settings).
    environment = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
                   "LANG": "C.UTF-8", "TERM": os.environ.get("TERM", "dumb")}  # fmt: skip
    return subprocess.run([str(sandboxes.chroot_wrapper), str(sandboxes.root(matches[0])), *command],
                          env=environment, check=False).returncode  # fmt: skip


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
        report = converge.converge(sandboxes, path, extra, project_dir, args.playbook, args.limit, seen, args.force)
    table = Table(title=f"{args.playbook} in {time.perf_counter() - started:.0f} s")
    for column in ("host", "role", "ok", "changed", "converged"):
        table.add_column(column)
    for spec in specs:
        if spec.name in report.unchanged:
            outcome = "no: nothing changed"
        elif spec.name in report.processed:
            outcome = "yes"
        else:
            outcome = "not in this run"
        table.add_row(spec.name, spec.role, str(report.ok.get(spec.name, 0)), str(report.changed.get(spec.name, 0)),
                      outcome)  # fmt: skip
    Console().print(table)
    if report.unchanged:
        print(f"{len(report.unchanged)} hosts left as they were: their inputs (roles, variables, secrets) are those "
              "of their last converge; --force converges them anyway")  # fmt: skip
    if not report.succeeded:
        raise SandboxError("; ".join(report.failures))
    return 0


def cmd_smoke(args: argparse.Namespace) -> int:
    """Show the configured platform working: HTTP through a router, a row from the leader on a replica."""
    from bulkhead.ha import cluster
    from bulkhead.ha.reach import Reach

    sandboxes = Sandboxes.of_project(project.find(args.project))
    specs = [s for s in sandboxes.recorded() if not args.region or s.region == args.region]
    routers = [s for s in specs if s.role == "router"]
    if not routers or not any(s.role == "postgres" for s in specs):
        raise SandboxError("smoke needs a router and the database members; run `bulkhead hosts up` and `configure`")
    # Any router that answers: after an AZ is lost, the ones in the zones that are left.
    for router in routers:
        answer = sandboxes.run(router, "curl", "-sfk", "--max-time", "3", f"https://{router.address}/")
        if answer.returncode == 0:
            break
    else:
        raise SandboxError(f"no router answered on https://ADDRESS/ (tried {', '.join(r.name for r in routers)}); "
                           "run `bulkhead hosts configure`")  # fmt: skip
    print(f"GET https://{router.address}/ on router {router.name} ({router.az}) -> {answer.stdout.strip()}")
    found = Reach(sandboxes, router.region).cluster()
    leader = cluster.leader(found)
    replicas = [m for m in found if m.role == "replica" and m.state == "streaming"]
    if leader is None or not replicas:
        raise SandboxError(f"the database has no running leader with a streaming replica; see `bulkhead db status "
                           f"--region {router.region}`")  # fmt: skip
    on = {s.name: s for s in specs}
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    psql = ["runuser", "-u", "postgres", "--", "psql", "-h", "/var/run/postgresql", "-v", "ON_ERROR_STOP=1", "-tAc"]
    written = sandboxes.run(on[leader.host], *psql, "CREATE TABLE IF NOT EXISTS smoke (at text); "
                            f"INSERT INTO smoke VALUES ('{stamp}') RETURNING at")  # fmt: skip
    if written.returncode != 0:
        raise SandboxError(f"leader {leader.host} refused the write: {written.stderr.strip()}")
    # Any streaming replica that has it: right after an AZ is lost, Patroni may still list its member for a
    # few seconds (until the member's key expires).
    replica = None
    for _ in range(50):
        replica = next((r for r in replicas if sandboxes.run(on[r.host], *psql, f"SELECT at FROM smoke WHERE at = "
                                                             f"'{stamp}'").stdout.strip() == stamp), None)  # fmt: skip
        if replica is not None:
            break
        time.sleep(0.2)
    else:
        names = ", ".join(r.host for r in replicas)
        raise SandboxError(f"the row written on {leader.host} did not reach a replica ({names})")
    print(f"row {stamp!r} written on the leader {leader.host} ({leader.az}), read on replica {replica.host} "
          f"({replica.az})")  # fmt: skip
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    sandboxes = Sandboxes.of_project(project.find(args.project))
    specs = sandboxes.recorded()
    if getattr(args, "json", False):
        print(json.dumps([{"name": s.name, "role": s.role, "postgres": s.tags.get("bulkhead:postgres"),
                           "region": s.region, "az": s.az, "address": s.address, "netns": s.netns,
                           "root": "image" if s.image else "fast"} for s in specs], indent=2))  # fmt: skip
        return 0
    table = Table(title=f"sandbox hosts in {sandboxes.directory}")
    for column in ("host", "role", "region", "az", "address", "network namespace", "root"):
        table.add_column(column)
    for spec in specs:
        table.add_row(spec.name, _role(spec), spec.region, spec.az, spec.address, spec.netns,
                      "image" if spec.image else "fast")  # fmt: skip
    Console().print(table)
    return 0


def cmd_power(args: argparse.Namespace) -> int:
    """Power a region's hosts (or one role of them) off or on, as an outage and its end do to them."""
    sandboxes = Sandboxes.of_project(project.find(args.project))
    specs = [s for s in sandboxes.recorded() if s.region == args.region and (not args.role or s.role == args.role)]
    if not specs:
        raise SandboxError(f"no sandbox host of {args.region}" + (f" with role {args.role}" if args.role else "")
                           + f"; run `bulkhead hosts up --region {args.region}`")  # fmt: skip
    changed = [s for s in specs if sandboxes.powered(s) != (args.state == "on")]
    for spec in changed:
        if args.state == "off":
            sandboxes.power_off(spec)
        else:
            sandboxes.power_on(spec)
    print(f"{len(changed)} hosts of {args.region} powered {args.state}; {len(specs) - len(changed)} already were")
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
    up.add_argument(
        "--from-image",
        action="store_true",
        help="boot each sandbox from the base image through its own user data, as EC2 does (see `bulkhead image`); "
        "default: an overlay of this machine's root, configured by `hosts configure`",
    )
    up.add_argument("--role", help="only the instances of this role (router, dyno_host, postgres, primary, standby)")
    up.add_argument("--only", metavar="IDS", help="only these instances (comma-separated instance ids)")
    up.add_argument(
        "--sample",
        action="store_true",
        help="one host per tier: a router, a dyno host in another AZ, and the database hosts",
    )
    up.add_argument("--metadata-timeout", type=float, default=30, metavar="S",
                    help="seconds a first boot waits for the metadata service (default 30)")  # fmt: skip
    up.set_defaults(handler=cmd_up)
    wait = verbs.add_parser("wait", help="wait for every first boot from the image; show boot time and result")
    wait.add_argument("--timeout", type=float, default=600, metavar="S", help="give up after S seconds (default 600)")
    wait.add_argument("--json", action="store_true", help="print each host's name, role, seconds and result as JSON")
    wait.set_defaults(handler=cmd_wait)
    run = verbs.add_parser("exec", help="run a command inside a sandbox: bulkhead hosts exec HOST -- CMD...")
    run.add_argument("host", metavar="HOST", help="instance id or private address")
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD...")
    run.set_defaults(handler=cmd_exec)
    configure = verbs.add_parser(
        "configure",
        help="run the Ansible playbooks against the sandboxes whose inputs changed",
        description="Runs roles/PLAYBOOK through ansible-runner. A host that converged records a digest of its "
        "inputs (the roles, its variables, the secrets); a host whose inputs are unchanged is left out and shown "
        "as such, unless --force.",
    )
    configure.add_argument("--limit", help="an Ansible host pattern, e.g. role_router")
    configure.add_argument("--playbook", default="site.yml", help="playbook under roles/ (default site.yml)")
    configure.add_argument(
        "--force", action="store_true", help="converge every host, also those whose inputs are those of their last run"
    )
    configure.set_defaults(handler=cmd_configure)
    listing = verbs.add_parser("list", help="show the sandbox hosts")
    listing.add_argument("--json", action="store_true", help="name, role, region, AZ, address, namespace as JSON")
    listing.set_defaults(handler=cmd_list)
    smoke = verbs.add_parser(
        "smoke", help="an HTTP request through a router, and a row from the database leader read on a replica"
    )
    smoke.add_argument("--region", help="the region to check (default: the sandboxes' region)")
    smoke.set_defaults(handler=cmd_smoke)
    power = verbs.add_parser(
        "power",
        help="power a region's sandbox hosts off (every process killed, links down) or on (boot again)",
        description="What an outage and its end do to a region's hosts: off cuts each host's link and kills all "
        "of its processes at once; on brings the link back and starts its init (supervisord).",
    )
    power.add_argument("state", choices=("on", "off"))
    power.add_argument("--region", required=True, help="the region whose sandbox hosts to power")
    power.add_argument("--role", help="only the hosts of this role (router, dyno_host, postgres)")
    power.set_defaults(handler=cmd_power)
    verbs.add_parser("down", help="remove every sandbox, mount and namespace").set_defaults(handler=cmd_down)
