"""The `bulkhead image` command group: the base image that sandboxes boot from, and the tiers' baked AMIs."""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import threading
import time
from pathlib import Path

from bulkhead import bake, install_inputs, project, topology
from bulkhead.hosts import image


def _settings(args: argparse.Namespace) -> image.SiteSettings:
    return image.default_settings(Path(args.ca_bundle) if args.ca_bundle else None, args.aws_endpoint_url)


def cmd_build(args: argparse.Namespace) -> int:
    started = time.monotonic()
    built, fresh = image.build(_settings(args), rebuild=args.rebuild, on_step=lambda step: print(f"image: {step}"))
    what = "built" if fresh else "already built (cached)"
    print(f"image {built.digest} {what} in {time.monotonic() - started:.1f} s: {built.root}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    found = image.image_for(_settings(args))
    problem = found.problem()
    report = {"path": str(found.path), "digest": found.digest, "usable": problem is None, "problem": problem}
    if problem is None:
        recorded = json.loads(found.record.read_text())
        report |= {"built_at": recorded["built_at"], "seconds": recorded["seconds"]}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key}: {value}")
    return 0 if problem is None else 1


TIERS = tuple(install_inputs.PLAYBOOKS)


def _pull_source(project_dir: Path, region: str, ref: str | None) -> tuple[str, str]:
    """The repository and ref the region's hosts pull: the local cloud's served checkout when one runs for this
    checkout (as `local up` deploys it), else the stack's bulkhead:ansibleRepo and bulkhead:ansibleRef."""
    from bulkhead.localcloud import cloud, server
    from bulkhead.localcloud.state import Store

    if server.running(Store.of_project(project_dir).directory):
        source = cloud.pull_source(project_dir, ref)
        return source["bulkhead:ansibleRepo"], source.get("bulkhead:ansibleRef", ref or "HEAD")
    spec = topology.StackFiles(project_dir).spec(region)
    return spec.ansible_repo, ref or spec.ansible_ref


def cmd_bake(args: argparse.Namespace) -> int:
    from bulkhead.ops.secrets import region_client

    project_dir = project.find(args.project)
    spec = topology.StackFiles(project_dir).spec(args.region)
    repo, ref = _pull_source(project_dir, args.region, args.ref)
    commit = bake.commit_of(project_dir, ref)
    tiers = list(dict.fromkeys(args.tier or TIERS))
    digests = bake.digests_at(project_dir, commit, tiers)
    types = {"router": spec.router_instance_type, "dyno_host": spec.dyno_instance_type,
             "postgres": spec.postgres_instance_type}  # fmt: skip

    printing = threading.Lock()

    def say(line: str) -> None:
        with printing:  # one line at a time: the tiers bake in threads
            print(line, flush=True)

    def one(tier: str) -> bake.Baked:
        # Clients of its own: each tier bakes on its own instance, all at once, as separate builds would.
        ec2, iam = region_client(project_dir, "ec2", args.region), region_client(project_dir, "iam", args.region)
        plan = bake.Plan(args.region, tier, repo, commit, digests[tier], spec.image_owner,
                         spec.image_name_pattern, types[tier])  # fmt: skip
        baked = bake.bake(ec2, iam, plan, on_step=lambda step: say(f"bake {tier}: {step}"), timeout=args.timeout)
        what = "baked" if baked.fresh else "already baked (nothing to do)"
        say(f"{tier}: {baked.name} {baked.image_id} {what} in {baked.seconds:.1f} s")
        return baked

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(tiers)) as pool:
        results = [future.result() for future in [pool.submit(one, tier) for tier in tiers]]
    if args.json:
        print(json.dumps([r.__dict__ for r in results], indent=2))
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add `bulkhead image ...` to the command line."""
    group = commands.add_parser(
        "image",
        help="the base image (pristine Debian 12) that `hosts up --from-image` boots",
        description="A Debian 12 root built with mmdebstrap from this machine's Debian mirror: the local stand-in "
        "for the AMI the program picks. Only the site settings go in: CA certificates this machine trusts beyond "
        "Debian's, its apt settings, pip pointed at the region's package cache, and the cloud's endpoint. Cached "
        "in $BULKHEAD_CACHE (default /var/cache/bulkhead) under a digest of all of that.",
    )
    verbs = group.add_subparsers(dest="verb", required=True, metavar="VERB")
    baking = verbs.add_parser(
        "bake",
        help="make each tier's AMI from its install part (Packer's way): nothing if the AMI of its digest exists",
        description="Launch an instance of the tier from the base AMI with user data that runs only the install part "
        "of the tier's playbook (packages, venvs, the host install of bulkhead), stop it, and register it with "
        "CreateImage as bulkhead-<tier>-<digest of the install inputs>, encrypted and tagged. A bake whose AMI "
        "exists does nothing. The region's hosts boot the newest such AMI (bulkhead:imageSource baked).",
    )
    baking.add_argument("--region", required=True, help="the region to bake in (its stack's image settings)")
    baking.add_argument("--tier", action="append", choices=TIERS, help="a tier to bake (repeatable; default: all)")
    baking.add_argument("--ref", help="the commit or branch to bake (default: the one the region's hosts pull)")
    baking.add_argument("--timeout", type=float, default=bake.BAKE_TIMEOUT, help="seconds a bake may take")
    baking.add_argument("--json", action="store_true", help="also print the AMIs as JSON")
    baking.set_defaults(handler=cmd_bake)
    for name, handler, text in (
        ("build", cmd_build, "build the image unless it is built and whole (a corrupt one is rebuilt)"),
        ("show", cmd_show, "say where the image is and whether it is usable (exit 1 if not)"),
    ):
        verb = verbs.add_parser(name, help=text, description=text)
        verb.add_argument("--ca-bundle", metavar="FILE", help="CA bundle whose non-Debian certificates the image "
                          "trusts (default: $SSL_CERT_FILE or /etc/ssl/certs/ca-certificates.crt)")  # fmt: skip
        verb.add_argument("--aws-endpoint-url", metavar="URL", help="the AWS endpoint hosts use (default: the "
                          f"local cloud through the relay, {image.DEFAULT_AWS_ENDPOINT_URL})")  # fmt: skip
        verb.set_defaults(handler=handler)
        if name == "build":
            verb.add_argument("--rebuild", action="store_true", help="build anew even if a usable image exists")
        else:
            verb.add_argument("--json", action="store_true", help="print as JSON")
