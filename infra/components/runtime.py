"""DynoCell: one independent cell of dyno hosts, an Auto Scaling group per AZ.

A cell shares no security group, role or launch template with another cell, so a bad deploy, a boot
storm or a phantom dyno stays inside the cell whose apps caused it (Feb 2012: one feedback loop
took the whole manifold down).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from bulkhead import bootstrap, parameters

from .host_helpers import agent_policy, host_tags, instance_profile, launch_template, per_az_group

DYNO_PORTS = (5000, 5999)


@dataclass
class DynoCellArgs:
    """Which cell this is, where it runs and how many hosts per AZ."""

    region: str
    cell: int
    vpc_id: pulumi.Input[str]
    private_subnet_ids: dict[str, pulumi.Input[str]]
    router_security_group_id: pulumi.Input[str]
    image_id: pulumi.Input[str]
    instance_type: str
    hosts_per_az: int
    # The database members' addresses (the local HAProxy follows their Patroni) and the server's name.
    database_members: list[str]
    database_server: str
    ansible_repo: str
    ansible_ref: str
    tags: dict[str, str] = field(default_factory=dict)


class DynoCell(pulumi.ComponentResource):
    """The dyno hosts of one cell."""

    security_group_id: pulumi.Output[str]

    def __init__(self, name: str, args: DynoCellArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("bulkhead:runtime:DynoCell", name, None, opts)
        cell = str(args.cell)
        group = aws.ec2.SecurityGroup(
            name,
            vpc_id=args.vpc_id,
            description=f"Bulkhead dyno cell {cell}: app ports from the routers only",
            ingress=[
                aws.ec2.SecurityGroupIngressArgs(
                    protocol="tcp",
                    from_port=DYNO_PORTS[0],
                    to_port=DYNO_PORTS[1],
                    security_groups=[args.router_security_group_id],
                )
            ],
            egress=[aws.ec2.SecurityGroupEgressArgs(protocol="-1", from_port=0, to_port=0, cidr_blocks=["0.0.0.0/0"])],
            tags=args.tags,
            opts=pulumi.ResourceOptions(parent=self),
        )
        profile = instance_profile(
            name,
            agent_policy(
                args.region,
                "Bulkhead/Runtime",
                # Routes go to the registry (etcd), not SSM.
                [
                    # The apps' database password, and nothing else of the database's.
                    {
                        "Effect": "Allow",
                        "Action": "ssm:GetParameter",
                        "Resource": [
                            f"arn:aws:ssm:{args.region}:*:parameter"
                            f"{parameters.app_password(args.region, args.database_server)}"
                        ],
                    },
                ],
            ),
            self,
            args.tags,
        )
        template = launch_template(
            name,
            image_id=args.image_id,
            instance_type=args.instance_type,
            profile=profile,
            security_group_ids=[group.id],
            user_data_base64=bootstrap.user_data_base64(
                "dyno_host",
                {
                    "bulkhead_region": args.region,
                    "bulkhead_cell": args.cell,
                    "postgres_members": args.database_members,
                    "postgres_server_name": args.database_server,
                },
                args.ansible_repo,
                args.ansible_ref,
            ),
            tags={**args.tags, **host_tags("dyno_host", args.region, cell=cell)},
            parent=self,
        )
        for az, subnet_id in args.private_subnet_ids.items():
            per_az_group(
                f"{name}-{az}",
                subnet_id=subnet_id,
                template=template,
                size=args.hosts_per_az,
                max_size=args.hosts_per_az * 4,
                tags={**args.tags, **host_tags("dyno_host", args.region, az, cell=cell)},
                parent=self,
            )
        self.security_group_id = group.id
        self.register_outputs({"securityGroupId": group.id})
