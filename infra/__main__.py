"""The Bulkhead Pulumi program: reads the stack's config once, validates it, and wires the components.

A stack named after a region lays out that region; the stack named `global` lays out DNS failover
and the status site. Config errors stop the program before any resource is declared.
"""

from __future__ import annotations

from pathlib import Path

import pulumi
import pulumi_aws as aws

from bulkhead import bake, install_inputs, status_page, topology
from components.alerting import Alerting, AlertingArgs
from components.baseline import AccountBaseline, AccountBaselineArgs
from components.control_rods import ControlRods, ControlRodsArgs
from components.data import Postgres, PostgresArgs
from components.dns import GlobalTraffic, GlobalTrafficArgs, RegionEndpoint
from components.network import RegionNetwork, RegionNetworkArgs
from components.routing import RoutingMesh, RoutingMeshArgs
from components.runtime import DynoCell, DynoCellArgs
from components.status import StatusSite, StatusSiteArgs

PROJECT_DIR = Path(__file__).resolve().parent.parent


def read_config(keys: tuple[str, ...]) -> dict[str, str | None]:
    """Every key this stack may set, as strings; defaults are applied by `bulkhead.topology`."""
    raw: dict[str, str | None] = {"aws:region": pulumi.Config("aws").get("region")}
    for key in keys:
        namespace, name = key.split(":")
        raw[key] = pulumi.Config(namespace).get(name)
    return raw


def tier_images(spec: topology.RegionSpec) -> dict[str, pulumi.Input[str]]:
    """Each tier's AMI. `base`: the newest Debian image, one for every tier. `baked`: the tier's image of the
    install inputs at the deployed commit (`bulkhead image bake`); none is a stale or missing bake, refused here
    in one line, before anything is declared, rather than booted."""
    if spec.image_source == "base":
        image = aws.ec2.get_ami_output(
            most_recent=True,
            owners=[spec.image_owner],
            filters=[
                aws.ec2.GetAmiFilterArgs(name="name", values=[spec.image_name_pattern]),
                aws.ec2.GetAmiFilterArgs(name="architecture", values=["x86_64"]),
            ],
        )
        return {tier: image.id for tier in install_inputs.PLAYBOOKS}
    try:
        commit = bake.commit_of(PROJECT_DIR, spec.ansible_ref)
    except bake.BakeError as error:
        raise topology.ConfigError(f"stack {spec.stack}: bulkhead:imageSource baked: {error}") from None
    found = {}
    for tier, digest in bake.digests_at(PROJECT_DIR, commit, install_inputs.PLAYBOOKS).items():
        name = install_inputs.image_name(tier, digest)
        # GetAmiIds, not GetAmi: no match is an empty list (newest first), where GetAmi fails without a word.
        ids = aws.ec2.get_ami_ids(
            owners=["self"], filters=[aws.ec2.GetAmiIdsFilterArgs(name="name", values=[name])]
        ).ids
        if not ids:
            raise topology.ConfigError(
                f"stack {spec.stack}: no AMI {name} for the {tier} tier at commit {commit[:12]} (bulkhead:imageSource "
                f"baked): run `bulkhead image bake --region {spec.region} --tier {tier}`, or set bulkhead:imageSource "
                "base"
            )
        found[tier] = ids[0]
    return found


def region_stack(spec: topology.RegionSpec, heartbeat: dict[str, str] | None) -> None:
    # First: a missing or stale baked image stops the program before anything is declared.
    images = tier_images(spec)
    tags = {"bulkhead:stack": spec.stack, "bulkhead:region": spec.region, "bulkhead:owner": spec.owner}
    account_id = aws.get_caller_identity_output().account_id
    AccountBaseline(spec.name, AccountBaselineArgs(region=spec.region))
    network = RegionNetwork(
        spec.name,
        RegionNetworkArgs(
            region=spec.region,
            cidr=spec.vpc_cidr,
            subnets=spec.subnets(),
            platform_buckets=[spec.archive_bucket],
            account_id=account_id,
            tags=tags,
        ),
    )
    mesh = RoutingMesh(
        spec.name,
        RoutingMeshArgs(
            region=spec.region,
            vpc_id=network.vpc_id,
            vpc_cidr=spec.vpc_cidr,
            public_subnet_ids=network.public_subnet_ids,
            private_subnet_ids=network.private_subnet_ids,
            image_id=images["router"],
            instance_type=spec.router_instance_type,
            routers_per_az=spec.routers_per_az,
            warm_pool=spec.router_warm_pool,
            max_connections_per_backend=spec.max_connections_per_backend,
            ansible_repo=spec.ansible_repo,
            ansible_ref=spec.ansible_ref,
            registry_members=list(spec.database_members().values()),
            tags=tags,
        ),
    )
    cells = [
        DynoCell(
            f"{spec.name}-cell{cell}",
            DynoCellArgs(
                region=spec.region,
                cell=cell,
                vpc_id=network.vpc_id,
                private_subnet_ids=network.private_subnet_ids,
                router_security_group_id=mesh.router_security_group_id,
                image_id=images["dyno_host"],
                instance_type=spec.dyno_instance_type,
                hosts_per_az=spec.dyno_hosts_per_cell_az,
                database_members=list(spec.database_members().values()),
                database_server=spec.database_server,
                ansible_repo=spec.ansible_repo,
                ansible_ref=spec.ansible_ref,
                tags={**tags, "bulkhead:cell": str(cell)},
            ),
        )
        for cell in range(1, spec.cells + 1)
    ]
    database = Postgres(
        spec.name,
        PostgresArgs(
            region=spec.region,
            partner_region=spec.partner_region,
            server=spec.database_server,
            archive_bucket=spec.archive_bucket,
            vpc_id=network.vpc_id,
            vpc_cidr=spec.vpc_cidr,
            members=spec.database_members(),
            private_subnet_ids=network.private_subnet_ids,
            client_security_group_ids=[cell.security_group_id for cell in cells],
            registry_client_security_group_ids=[
                mesh.router_security_group_id,
                *(cell.security_group_id for cell in cells),
            ],
            image_id=images["postgres"],
            instance_type=spec.postgres_instance_type,
            retention_days=spec.archive_retention_days,
            base_backup_interval_seconds=spec.base_backup_interval_seconds,
            synchronous_commit=spec.synchronous_commit,
            maximum_lag_on_failover=spec.maximum_lag_on_failover,
            account_id=account_id,
            ansible_repo=spec.ansible_repo,
            ansible_ref=spec.ansible_ref,
            tags=tags,
        ),
    )
    rods = ControlRods(spec.name, ControlRodsArgs(region=spec.region, tags=tags))
    alerting = Alerting(
        spec.name,
        AlertingArgs(
            region=spec.region,
            alert_email=spec.alert_email,
            alert_webhook=spec.alert_webhook,
            heartbeat_destination=heartbeat,
            tags=tags,
        ),
    )

    pulumi.export("region", spec.region)
    pulumi.export("partnerRegion", spec.partner_region)
    pulumi.export("vpcId", network.vpc_id)
    pulumi.export("routerLbDnsName", mesh.load_balancer_dns_name)
    pulumi.export("archiveBucket", database.archive_bucket)
    pulumi.export("archiveReplicaBucket", database.replica_bucket)
    pulumi.export("databaseServer", spec.database_server)
    pulumi.export("postgresMemberIps", database.member_private_ips)
    pulumi.export("controlRods", rods.parameter_names)
    pulumi.export("alarmTopicArn", alerting.topic_arn)
    pulumi.export("alertQueueUrl", alerting.queue_url)


def global_stack(spec: topology.GlobalSpec) -> None:
    def endpoint(region: str) -> RegionEndpoint:
        reference = pulumi.StackReference(spec.region_stack_name(region))
        return RegionEndpoint(region=region, dns_name=reference.require_output("routerLbDnsName"))

    traffic = GlobalTraffic(
        "bulkhead",
        GlobalTrafficArgs(
            domain=spec.domain,
            services=list(spec.services),
            primary=endpoint(spec.primary_region),
            secondary=endpoint(spec.secondary_region),
        ),
    )
    site = StatusSite(
        "bulkhead-status",
        StatusSiteArgs(
            region=spec.status_region,
            role_arn=spec.status_role_arn,
            bucket_name=spec.status_domain.replace(".", "-"),
            page_html=status_page.render(f"{spec.domain} status"),
            platform_account_id=aws.get_caller_identity_output().account_id,
            platform_regions=list(spec.platform_regions),
            tags={"bulkhead:stack": topology.GLOBAL_STACK, "bulkhead:owner": spec.owner},
        ),
    )
    pulumi.export("zoneId", traffic.zone_id)
    pulumi.export("nameServers", traffic.name_servers)
    pulumi.export("statusBucket", site.bucket)
    pulumi.export("statusUrl", pulumi.Output.concat("https://", site.distribution_domain))
    pulumi.export("statusDistributionId", site.distribution_id)
    pulumi.export("statusTopicArn", site.topic_arn)
    pulumi.export("statusQueueUrl", site.queue_url)


def main() -> None:
    stack = pulumi.get_stack()
    # The other stacks' files, for the checks that span stacks (overlapping VPCs, partner regions).
    others = topology.StackFiles(PROJECT_DIR)
    try:
        if stack == topology.GLOBAL_STACK:
            global_stack(topology.global_spec(read_config(topology.GLOBAL_KEYS), others.partner_regions()))
        else:
            # The status site's account and region, from the global stack's file: the hosts' heartbeat goes there.
            status = others.config(topology.GLOBAL_STACK) if topology.GLOBAL_STACK in others.names() else {}
            spec = topology.region_spec(stack, read_config(topology.REGION_KEYS), others.peer_vpc_cidrs(stack))
            region_stack(spec, topology.heartbeat_destination(status))
    except topology.ConfigError as error:
        # RunError prints its one line without a traceback, under the pulumi CLI as under the local cloud;
        # the ConfigError behind it lets an in-process runner keep the error's type.
        raise pulumi.RunError(str(error)) from error


main()
