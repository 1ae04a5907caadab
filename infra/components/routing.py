"""RoutingMesh: a network load balancer over all AZs and, per AZ, an Auto Scaling group of routers.

Routers terminate TLS themselves (HAProxy), so the load balancer passes TCP 80 and 443 through. Each
AZ's group keeps a warm pool of stopped, already-configured routers: in June 2012 new routing nodes
warmed up slowly exactly when they were needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from bulkhead import bootstrap

from .host_helpers import agent_policy, host_tags, instance_profile, launch_template, per_az_group

ROUTER_PORTS = (80, 443)
HEALTH_PATH = "/healthz"


@dataclass
class RoutingMeshArgs:
    """Where the routers run and how many, and the per-backend connection bound they enforce."""

    region: str
    vpc_id: pulumi.Input[str]
    vpc_cidr: str
    public_subnet_ids: dict[str, pulumi.Input[str]]
    private_subnet_ids: dict[str, pulumi.Input[str]]
    image_id: pulumi.Input[str]
    instance_type: str
    routers_per_az: int
    warm_pool: int
    max_connections_per_backend: int
    ansible_repo: str
    ansible_ref: str
    # The etcd members (the database hosts' fixed addresses) where dyno hosts publish routes.
    registry_members: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)


class RoutingMesh(pulumi.ComponentResource):
    """The HTTP edge of one region."""

    load_balancer_dns_name: pulumi.Output[str]
    load_balancer_zone_id: pulumi.Output[str]
    router_security_group_id: pulumi.Output[str]

    def __init__(self, name: str, args: RoutingMeshArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("bulkhead:routing:RoutingMesh", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        edge_group, router_group = self._security_groups(name, args)
        balancer = aws.lb.LoadBalancer(
            name[:32],
            load_balancer_type="network",
            internal=False,
            subnets=list(args.public_subnet_ids.values()),
            security_groups=[edge_group.id],
            enable_cross_zone_load_balancing=True,
            tags=args.tags,
            opts=child,
        )
        target_groups = [self._listener(name, args, balancer, port) for port in ROUTER_PORTS]
        profile = instance_profile(
            f"{name}-router",
            agent_policy(args.region, "Bulkhead/Router"),
            self,
            args.tags,
        )
        facts = {
            "bulkhead_region": args.region,
            "router_max_connections_per_backend": args.max_connections_per_backend,
            # The route registry: etcd on the database members, whose addresses the stack fixes.
            "router_registry_members": args.registry_members,
        }
        template = launch_template(
            f"{name}-router",
            image_id=args.image_id,
            instance_type=args.instance_type,
            profile=profile,
            security_group_ids=[router_group.id],
            user_data_base64=bootstrap.user_data_base64("router", facts, args.ansible_repo, args.ansible_ref),
            tags={**args.tags, **host_tags("router", args.region)},
            parent=self,
        )
        for az, subnet_id in args.private_subnet_ids.items():
            per_az_group(
                f"{name}-router-{az}",
                subnet_id=subnet_id,
                template=template,
                size=args.routers_per_az,
                max_size=args.routers_per_az * 3,
                tags={**args.tags, **host_tags("router", args.region, az)},
                target_group_arns=[group.arn for group in target_groups],
                warm_pool=aws.autoscaling.GroupWarmPoolArgs(
                    pool_state="Stopped",
                    min_size=args.warm_pool,
                    instance_reuse_policy=aws.autoscaling.GroupWarmPoolInstanceReusePolicyArgs(reuse_on_scale_in=True),
                ),
                parent=self,
            )
        self.load_balancer_dns_name = balancer.dns_name
        self.load_balancer_zone_id = balancer.zone_id
        self.router_security_group_id = router_group.id
        self.register_outputs({"loadBalancerDnsName": balancer.dns_name, "routerSecurityGroupId": router_group.id})

    def _security_groups(self, name: str, args: RoutingMeshArgs) -> tuple[aws.ec2.SecurityGroup, aws.ec2.SecurityGroup]:
        child = pulumi.ResourceOptions(parent=self)
        # The load balancer is the only thing in a region that the internet may reach, and only on 80/443.
        edge = aws.ec2.SecurityGroup(
            f"{name}-edge",
            vpc_id=args.vpc_id,
            description="Bulkhead load balancer: HTTP and HTTPS from anywhere",
            ingress=[
                aws.ec2.SecurityGroupIngressArgs(protocol="tcp", from_port=p, to_port=p, cidr_blocks=["0.0.0.0/0"])
                for p in ROUTER_PORTS
            ],
            egress=[
                aws.ec2.SecurityGroupEgressArgs(protocol="tcp", from_port=p, to_port=p, cidr_blocks=[args.vpc_cidr])
                for p in ROUTER_PORTS
            ],
            tags=args.tags,
            opts=child,
        )
        router = aws.ec2.SecurityGroup(
            f"{name}-router",
            vpc_id=args.vpc_id,
            description="Bulkhead routers: HTTP and HTTPS from the load balancer only",
            ingress=[
                aws.ec2.SecurityGroupIngressArgs(protocol="tcp", from_port=p, to_port=p, security_groups=[edge.id])
                for p in ROUTER_PORTS
            ],
            egress=[aws.ec2.SecurityGroupEgressArgs(protocol="-1", from_port=0, to_port=0, cidr_blocks=["0.0.0.0/0"])],
            tags=args.tags,
            opts=child,
        )
        return edge, router

    def _listener(
        self, name: str, args: RoutingMeshArgs, balancer: aws.lb.LoadBalancer, port: int
    ) -> aws.lb.TargetGroup:
        child = pulumi.ResourceOptions(parent=self)
        group = aws.lb.TargetGroup(
            f"{name}-{port}"[:32],
            port=port,
            protocol="TCP",
            vpc_id=args.vpc_id,
            target_type="instance",
            deregistration_delay=30,
            health_check=aws.lb.TargetGroupHealthCheckArgs(
                protocol="HTTP", port="80", path=HEALTH_PATH, interval=10, healthy_threshold=2, unhealthy_threshold=2
            ),
            tags=args.tags,
            opts=child,
        )
        aws.lb.Listener(
            f"{name}-{port}",
            load_balancer_arn=balancer.arn,
            port=port,
            protocol="TCP",
            default_actions=[aws.lb.ListenerDefaultActionArgs(type="forward", target_group_arn=group.arn)],
            tags=args.tags,
            opts=child,
        )
        return group
