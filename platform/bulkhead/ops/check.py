"""`bulkhead check`: the security rules and the production checklist, over the program or what is deployed.

By default the rules judge the Pulumi program of each stack under mocks (nothing is created, as in
`bulkhead plan` and the policy tests). With `--live` they judge what is deployed, read through the
AWS APIs: the local cloud's when one runs for this checkout, else the AWS account of the current
credentials (the status stack through its own role). One row per rule and resource; the exit code is
1 when any row fails. Waivers are read from `policy-waivers.toml` in the checkout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

from bulkhead import project, topology
from bulkhead.errors import BulkheadError
from bulkhead.ops import policy_live, policy_model, policy_rules

EXIT_FAILED = 1


class PolicyFailed(BulkheadError):
    """At least one rule failed."""


def declared_items(project_dir: Path, stacks: list[str]) -> list[policy_model.Item]:
    """The items of the program's stacks, evaluated under the plan mocks."""
    from bulkhead import plan

    runs = plan.evaluate_all(project_dir, stacks)
    files = topology.StackFiles(project_dir)
    records = []
    for stack, run in runs.items():
        region = str(files.config(stack).get("aws:region", stack))
        records += [policy_model.Declared(stack, region, r.type, r.id, r.inputs, r.state)
                    for r in run.resources if r.custom]  # fmt: skip
    return policy_model.declared(records)


def scopes(files: topology.StackFiles, stacks: list[str]) -> list[policy_live.Scope]:
    """Where each stack's resources live: its region (the status stack: its region and account)."""
    found = []
    for stack in stacks:
        config = files.config(stack)
        if stack == topology.GLOBAL_STACK:
            status_region = str(config.get("bulkhead:statusRegion"))
            role = config.get("bulkhead:statusRoleArn") or None
            # CloudFront's metrics, and so the status site's alarm, are in us-east-1.
            found.append(policy_live.Scope(stack, status_region, (status_region, "us-east-1"), role))
        else:
            region = str(config.get("aws:region", stack))
            found.append(policy_live.Scope(stack, region, (region,)))
    return found


def live_items(project_dir: Path, stacks: list[str]) -> tuple[list[policy_model.Item], str]:
    """What is deployed for these stacks, and where it was read from."""
    from bulkhead.localcloud import server
    from bulkhead.localcloud.aws import LocalAws
    from bulkhead.localcloud.state import Store

    files = topology.StackFiles(project_dir)
    store = Store.of_project(project_dir)
    info = server.running(store.directory)
    if info is not None:
        local = LocalAws(info.endpoint)
        declared = [d for stack in stacks
                    for d in policy_live.declared_from_state(stack, store.load(stack).resources.values())]  # fmt: skip
        reader = policy_live.Reader(local.client, declared)
        where = f"the local cloud at {info.endpoint}"
    else:
        reader = policy_live.Reader(_aws_clients(), [])
        where = "the AWS account of the current credentials"
    return reader.read(scopes(files, stacks)), where


def _aws_clients():
    import boto3

    sessions: dict[str | None, object] = {}

    def client(service: str, region: str, role_arn: str | None = None):
        if role_arn not in sessions:
            if role_arn is None:
                sessions[role_arn] = boto3.Session()
            else:
                credentials = boto3.client("sts").assume_role(RoleArn=role_arn, RoleSessionName="bulkhead-check")
                c = credentials["Credentials"]
                sessions[role_arn] = boto3.Session(aws_access_key_id=c["AccessKeyId"],
                                                   aws_secret_access_key=c["SecretAccessKey"],
                                                   aws_session_token=c["SessionToken"])  # fmt: skip
        return sessions[role_arn].client(service, region_name=region)

    return client


def cmd_check(args: argparse.Namespace) -> int:
    if args.rules:
        for rule in policy_rules.RULES.values():
            print(f"{rule.id:32} {rule.title}")
        return 0
    project_dir = project.find(args.project)
    stacks = topology.select_stacks(project_dir, args.stacks)
    started = time.monotonic()
    if args.live:
        items, where = live_items(project_dir, stacks)
    else:
        items, where = declared_items(project_dir, stacks), "the program under mocks"
    verdicts = policy_rules.evaluate(items, project_dir)
    counts = Counter(v.status for v in verdicts)
    seconds = round(time.monotonic() - started, 2)
    if args.json:
        print(json.dumps({"source": where, "seconds": seconds, "counts": dict(counts),
                          "verdicts": [v.__dict__ for v in verdicts]}, indent=2))  # fmt: skip
    else:
        _table(verdicts, where, counts, seconds, show_passes=not args.failures_only)
    return EXIT_FAILED if counts.get("fail") else 0


def _table(verdicts, where: str, counts: Counter, seconds: float, show_passes: bool) -> None:
    width = max((len(v.rule) for v in verdicts), default=10)
    resource_width = min(max((len(v.resource) for v in verdicts), default=10), 48)
    for verdict in verdicts:
        if verdict.status == "pass" and not show_passes:
            continue
        detail = verdict.fix if verdict.status == "fail" else verdict.note
        if verdict.status == "fail" and verdict.note:
            detail = f"{verdict.note} -> {verdict.fix}"
        print(f"{verdict.status.upper():6} {verdict.rule:{width}} {verdict.stack:10} "
              f"{verdict.resource[:48]:{resource_width}} {detail}".rstrip())  # fmt: skip
    summary = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("pass", "fail", "waived"))
    print(f"checked {where} in {seconds} s: {summary}", file=sys.stderr)


def register(commands: argparse._SubParsersAction) -> None:
    """Add `bulkhead check` to the command line."""
    check = commands.add_parser("check", help="run the security rules and the production checklist",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    check.add_argument("--stacks", help="comma-separated stacks (default: every Pulumi.<stack>.yaml)")
    check.add_argument("--live", action="store_true", help="judge what is deployed instead of the program")
    check.add_argument("--json", action="store_true", help="print every verdict as JSON")
    check.add_argument("--failures-only", action="store_true", help="print only the rows that fail or are waived")
    check.add_argument("--rules", action="store_true", help="list the rules and exit")
    check.set_defaults(handler=cmd_check)
