"""RegionNetwork: one VPC over three AZs, a public and a private subnet per AZ, a NAT gateway per AZ.

Its boundaries, beside the security groups: subnet network ACLs that admit from anywhere only what
their tier serves (80/443 on the public subnets, and the ephemeral ports that return traffic needs,
never 22 or 3389); a default ACL and a default security group that admit nothing; flow logs of all
traffic; and an S3 gateway endpoint whose policy admits only the platform's own buckets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from bulkhead.topology import Subnets

from .host_helpers import policy_document

HTTP_PORTS = (80, 443)
EPHEMERAL_PORTS = (1024, 65535)
# Administration ports an ACL must never admit from anywhere, denied before the ephemeral range is allowed.
REMOTE_ADMIN_PORTS = (22, 3389)
ANYWHERE = "0.0.0.0/0"


@dataclass
class RegionNetworkArgs:
    """The VPC block, its per-AZ subnets and the tags every child carries."""

    region: str
    cidr: str
    subnets: list[Subnets]
    # The buckets the hosts may reach through the S3 endpoint (the region's WAL archive).
    platform_buckets: list[str]
    account_id: pulumi.Input[str]
    flow_log_retention_days: int = 365
    tags: dict[str, str] = field(default_factory=dict)


class RegionNetwork(pulumi.ComponentResource):
    """A VPC whose AZs share nothing on their egress path: each private subnet leaves by its own NAT."""

    vpc_id: pulumi.Output[str]
    public_subnet_ids: dict[str, pulumi.Output[str]]
    private_subnet_ids: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, args: RegionNetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("bulkhead:network:RegionNetwork", name, None, opts)
        self._child = pulumi.ResourceOptions(parent=self)
        self._tags = args.tags
        vpc = aws.ec2.Vpc(
            name,
            cidr_block=args.cidr,
            enable_dns_hostnames=True,
            enable_dns_support=True,
            tags={**args.tags, "Name": name},
            opts=self._child,
        )
        self.vpc_id = vpc.id
        gateway = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, tags=args.tags, opts=self._child)
        public_table = aws.ec2.RouteTable(
            f"{name}-public",
            vpc_id=vpc.id,
            routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=gateway.id)],
            tags=args.tags,
            opts=self._child,
        )
        self.public_subnet_ids = {}
        self.private_subnet_ids = {}
        private_tables = []
        for subnets in args.subnets:
            public_id, private_id, private_table = self._zone(name, vpc, public_table, subnets)
            self.public_subnet_ids[subnets.az] = public_id
            self.private_subnet_ids[subnets.az] = private_id
            private_tables.append(private_table.id)
        self._boundaries(name, vpc, args)
        # WAL archiving and base backups go to S3 through a gateway endpoint, not the NAT: an AZ's NAT
        # failing must not stop the database from archiving.
        aws.ec2.VpcEndpoint(
            f"{name}-s3",
            vpc_id=vpc.id,
            service_name=f"com.amazonaws.{args.region}.s3",
            vpc_endpoint_type="Gateway",
            route_table_ids=private_tables,
            # Only the platform's own buckets: a compromised host cannot ship data to a bucket of its choosing.
            policy=policy_document(
                [
                    {
                        "Sid": "PlatformBucketsOnly",
                        "Effect": "Allow",
                        "Principal": "*",
                        "Action": "s3:*",
                        "Resource": [
                            arn
                            for bucket in args.platform_buckets
                            for arn in (f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*")
                        ],
                    }
                ]
            ),
            tags=args.tags,
            opts=self._child,
        )
        self.register_outputs(
            {
                "vpcId": self.vpc_id,
                "publicSubnetIds": self.public_subnet_ids,
                "privateSubnetIds": self.private_subnet_ids,
            }
        )

    def _boundaries(self, name: str, vpc: aws.ec2.Vpc, args: RegionNetworkArgs) -> None:
        """Network ACLs per tier, an inert default ACL and default security group, and flow logs."""
        for tier, subnet_ids, served in (
            ("public", list(self.public_subnet_ids.values()), HTTP_PORTS),
            ("private", list(self.private_subnet_ids.values()), ()),
        ):
            aws.ec2.NetworkAcl(
                f"{name}-{tier}",
                vpc_id=vpc.id,
                subnet_ids=subnet_ids,
                ingress=acl_ingress(args.cidr, served),
                egress=[aws.ec2.NetworkAclEgressArgs(
                    rule_no=100, action="allow", protocol="-1", from_port=0, to_port=0, cidr_block=ANYWHERE
                )],
                tags={**args.tags, "bulkhead:tier": tier},
                opts=self._child,
            )  # fmt: skip
        # Every subnet has its tier's ACL; the default one, and the default security group, admit nothing,
        # so that anything created outside this program is shut out rather than open.
        aws.ec2.DefaultNetworkAcl(
            f"{name}-default", default_network_acl_id=vpc.default_network_acl_id, tags=args.tags, opts=self._child
        )
        aws.ec2.DefaultSecurityGroup(f"{name}-default", vpc_id=vpc.id, tags=args.tags, opts=self._child)
        group = aws.cloudwatch.LogGroup(
            f"{name}-flow-logs",
            name=f"/bulkhead/{args.region}/vpc-flow-logs",
            retention_in_days=args.flow_log_retention_days,
            tags=args.tags,
            opts=self._child,
        )
        role = aws.iam.Role(
            f"{name}-flow-logs",
            assume_role_policy=policy_document(
                [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "vpc-flow-logs.amazonaws.com"},
                        "Action": "sts:AssumeRole",
                        "Condition": {"StringEquals": {"aws:SourceAccount": args.account_id}},
                    }
                ]
            ),
            tags=args.tags,
            opts=self._child,
        )
        aws.iam.RolePolicy(
            f"{name}-flow-logs",
            role=role.id,
            policy=policy_document(
                [
                    {
                        "Effect": "Allow",
                        "Action": ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
                        "Resource": [group.arn, pulumi.Output.concat(group.arn, ":*")],
                    }
                ]
            ),
            opts=self._child,
        )
        aws.ec2.FlowLog(
            f"{name}-flow-logs",
            vpc_id=vpc.id,
            traffic_type="ALL",
            log_destination_type="cloud-watch-logs",
            log_destination=group.arn,
            iam_role_arn=role.arn,
            tags=args.tags,
            opts=self._child,
        )

    def _zone(
        self, name: str, vpc: aws.ec2.Vpc, public_table: aws.ec2.RouteTable, subnets: Subnets
    ) -> tuple[pulumi.Output[str], pulumi.Output[str], aws.ec2.RouteTable]:
        az = subnets.az
        tags = {**self._tags, "bulkhead:az": az}
        public = aws.ec2.Subnet(
            f"{name}-public-{az}",
            vpc_id=vpc.id,
            cidr_block=subnets.public_cidr,
            availability_zone=az,
            tags={**tags, "bulkhead:tier": "public"},
            opts=self._child,
        )
        aws.ec2.RouteTableAssociation(
            f"{name}-public-{az}", subnet_id=public.id, route_table_id=public_table.id, opts=self._child
        )
        address = aws.ec2.Eip(f"{name}-nat-{az}", domain="vpc", tags=tags, opts=self._child)
        nat = aws.ec2.NatGateway(
            f"{name}-nat-{az}", allocation_id=address.id, subnet_id=public.id, tags=tags, opts=self._child
        )
        private = aws.ec2.Subnet(
            f"{name}-private-{az}",
            vpc_id=vpc.id,
            cidr_block=subnets.private_cidr,
            availability_zone=az,
            tags={**tags, "bulkhead:tier": "private"},
            opts=self._child,
        )
        private_table = aws.ec2.RouteTable(
            f"{name}-private-{az}",
            vpc_id=vpc.id,
            routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", nat_gateway_id=nat.id)],
            tags=tags,
            opts=self._child,
        )
        aws.ec2.RouteTableAssociation(
            f"{name}-private-{az}", subnet_id=private.id, route_table_id=private_table.id, opts=self._child
        )
        return public.id, private.id, private_table


def acl_ingress(vpc_cidr: str, served: tuple[int, ...]) -> list[aws.ec2.NetworkAclIngressArgs]:
    """What a tier's ACL admits, in rule order: everything from inside the VPC; remote administration
    from outside never; the ports the tier serves; and the ephemeral ports that replies return on."""
    rules: list[aws.ec2.NetworkAclIngressArgs] = [
        aws.ec2.NetworkAclIngressArgs(
            rule_no=10, action="allow", protocol="-1", from_port=0, to_port=0, cidr_block=vpc_cidr
        )
    ]
    for offset, port in enumerate(REMOTE_ADMIN_PORTS):
        for protocol_offset, protocol in enumerate(("tcp", "udp")):
            rules.append(
                aws.ec2.NetworkAclIngressArgs(
                    rule_no=20 + offset * 2 + protocol_offset, action="deny", protocol=protocol,
                    from_port=port, to_port=port, cidr_block=ANYWHERE,
                )
            )  # fmt: skip
    for offset, port in enumerate(served):
        rules.append(
            aws.ec2.NetworkAclIngressArgs(
                rule_no=100 + offset, action="allow", protocol="tcp", from_port=port, to_port=port, cidr_block=ANYWHERE
            )
        )
    for offset, protocol in enumerate(("tcp", "udp")):
        rules.append(
            aws.ec2.NetworkAclIngressArgs(
                rule_no=200 + offset, action="allow", protocol=protocol,
                from_port=EPHEMERAL_PORTS[0], to_port=EPHEMERAL_PORTS[1], cidr_block=ANYWHERE,
            )
        )  # fmt: skip
    return rules
