"""`bulkhead plan`: evaluate every stack with invented ids and say what each would create.

`PlanMocks` answers the program as the engine would on a first `pulumi up`: each resource gets a
deterministic id and the computed attributes the program reads (ARNs, DNS names, zone ids); nothing
is created anywhere. Policy tests use the same mocks.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pulumi

from bulkhead import stack_runner, topology
from bulkhead.stack_runner import StackRun

ACCOUNT = "123456789012"


def _token(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:17]


class PlanMocks(pulumi.runtime.Mocks):
    """Invented but stable ids and attributes for every resource of one stack."""

    def __init__(self, region: str) -> None:
        self.region = region

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        if not args.custom:
            return "", {}
        service = args.typ.split(":")[1].split("/")[0] if args.typ.startswith("aws:") else "pulumi"
        unique = _token(args.typ, args.name)
        name = args.inputs.get("name") or args.inputs.get("bucket") or f"{args.name}-{unique[:7]}"
        state = dict(args.inputs)
        state.setdefault("name", name)
        state["arn"] = f"arn:aws:{service}:{self.region}:{ACCOUNT}:{args.name}"
        if args.typ == "aws:s3/bucket:Bucket":
            state.update(
                bucket=name, arn=f"arn:aws:s3:::{name}", bucket_regional_domain_name=f"{name}.s3.amazonaws.com"
            )
        elif args.typ == "aws:lb/loadBalancer:LoadBalancer":
            state.update(dns_name=f"{name}-{unique[:8]}.elb.{self.region}.amazonaws.com", zone_id="Z26RNL4JYFTOTI")
        elif args.typ == "aws:route53/zone:Zone":
            state.update(zone_id=f"Z{unique.upper()}", name_servers=[f"ns-{i}.awsdns.example" for i in range(4)])
        elif args.typ == "aws:cloudfront/distribution:Distribution":
            state.update(domain_name=f"d{unique[:13]}.cloudfront.net")
        elif args.typ == "aws:iam/role:Role":
            state.update(arn=f"arn:aws:iam::{ACCOUNT}:role/{name}")
        elif args.typ == "aws:ec2/vpc:Vpc":
            state.update(default_network_acl_id=f"acl-{unique}", default_security_group_id=f"sg-{unique}")
        elif args.typ == "aws:ec2/instance:Instance":
            state.update(private_ip=f"10.0.{int(unique[:2], 16)}.{int(unique[2:4], 16) % 250 + 4}")
        return f"{args.name}-{unique[:8]}", state

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        if args.token == "aws:ec2/getAmi:getAmi":
            return {"id": "ami-0plan0000000000", "architecture": "x86_64", "name": "debian-12-amd64-plan"}
        if args.token == "aws:ec2/getAmiIds:getAmiIds":
            return {"id": "plan", "ids": ["ami-0planbaked00000"]}
        if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {"id": ACCOUNT, "accountId": ACCOUNT, "arn": f"arn:aws:iam::{ACCOUNT}:user/plan", "userId": "PLAN"}
        raise NotImplementedError(f"the plan mocks do not answer {args.token}; add it to PlanMocks.call")


def evaluate_all(
    project_dir: Path,
    stacks: Iterable[str] | None = None,
    configs: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, StackRun]:
    """Evaluate stacks in order (regions, then global), each region's outputs feeding the global stack.

    `configs` replaces the config of the stacks it names (tests use it to try other configs).
    """
    files = topology.StackFiles(project_dir, configs)
    names = list(stacks) if stacks is not None else files.names()
    if topology.GLOBAL_STACK in names:
        # The global stack reads region stacks' outputs, as `pulumi up` would find them deployed.
        names = [s for s in files.names() if s != topology.GLOBAL_STACK] + [topology.GLOBAL_STACK]
    runs: dict[str, StackRun] = {}

    def reference(name: str) -> Mapping[str, Any]:
        stack = stack_runner.reference_stack_name(name)
        if stack not in runs:
            raise stack_runner.StackError(f"stack reference {name}: stack {stack} has no outputs")
        return runs[stack].outputs

    for stack in names:
        config = files.config(stack)
        mocks = PlanMocks(str(config.get("aws:region", stack)))
        runs[stack] = stack_runner.evaluate_stack(stack, mocks, reference, project_dir, config=config)
    wanted = set(stacks) if stacks is not None else set(runs)
    return {stack: run for stack, run in runs.items() if stack in wanted}


def summarize(run: StackRun) -> Counter[str]:
    """How many resources of each type a stack declares (custom resources only)."""
    return Counter(r.type for r in run.resources if r.custom)
