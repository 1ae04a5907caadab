"""RegionNetwork: one VPC over three AZs, a public and a private subnet per AZ, a NAT gateway per AZ."""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from bulkhead.topology import Subnets


@dataclass
class RegionNetworkArgs:
    """The VPC block, its per-AZ subnets and the tags every child carries."""

    region: str
    cidr: str
    subnets: list[Subnets]
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
        # WAL archiving and base backups go to S3 through a gateway endpoint, not the NAT: an AZ's NAT
        # failing must not stop the database from archiving.
        aws.ec2.VpcEndpoint(
            f"{name}-s3",
            vpc_id=vpc.id,
            service_name=f"com.amazonaws.{args.region}.s3",
            vpc_endpoint_type="Gateway",
            route_table_ids=private_tables,
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
