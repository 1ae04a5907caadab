"""ControlRods: one SSM parameter per rod, so an incident can switch parts of the platform off.

Parameters, not a database row: SSM stays readable when the platform's own API is down, and the
hosts' roles may read only their region's rods.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from bulkhead.ops.rods import RODS, parameter_name


@dataclass
class ControlRodsArgs:
    """The region whose rods these are."""

    region: str
    tags: dict[str, str] = field(default_factory=dict)


class ControlRods(pulumi.ComponentResource):
    """The control rods of one region, each at its normal-running value."""

    parameter_names: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, args: ControlRodsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("bulkhead:ops:ControlRods", name, None, opts)
        self.parameter_names = {}
        for rod in RODS:
            parameter = aws.ssm.Parameter(
                f"{name}-{rod.name}",
                name=parameter_name(args.region, rod),
                type="String",
                value=rod.default,
                description=rod.purpose,
                tags=args.tags,
                # Operators flip rods during incidents (`bulkhead rods set`, which notes who and when in the
                # description); a later `pulumi up` must not silently undo either.
                opts=pulumi.ResourceOptions(parent=self, ignore_changes=["value", "description"]),
            )
            self.parameter_names[rod.name] = parameter.name
        self.register_outputs({"parameterNames": self.parameter_names})
