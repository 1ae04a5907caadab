"""GlobalTraffic: Route 53 failover between the primary region and its partner, per service.

Failover is decided by Route 53's own health checks against each region's load balancer: nothing in
it needs a control-plane call to create capacity when a region is lost (June 2012: the AWS API was
down with everything else).
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

HEALTH_PATH = "/healthz"


@dataclass
class RegionEndpoint:
    """One region's public edge, as its region stack exports it."""

    region: str
    dns_name: pulumi.Input[str]


@dataclass
class GlobalTrafficArgs:
    """The zone, the services to fail over, and the two regions."""

    domain: str
    services: list[str]
    primary: RegionEndpoint
    secondary: RegionEndpoint


class GlobalTraffic(pulumi.ComponentResource):
    """A hosted zone with a PRIMARY and a SECONDARY record per service, each behind a health check."""

    zone_id: pulumi.Output[str]
    name_servers: pulumi.Output[list[str]]

    def __init__(self, name: str, args: GlobalTrafficArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("bulkhead:dns:GlobalTraffic", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        zone = aws.route53.Zone(name, name=args.domain, comment="Bulkhead global traffic", opts=child)
        checks = {
            role: aws.route53.HealthCheck(
                f"{name}-{endpoint.region}",
                fqdn=endpoint.dns_name,
                port=443,
                type="HTTPS",
                resource_path=HEALTH_PATH,
                failure_threshold=3,
                request_interval=10,
                tags={"bulkhead:region": endpoint.region},
                opts=child,
            )
            for role, endpoint in (("PRIMARY", args.primary), ("SECONDARY", args.secondary))
        }
        endpoints = {"PRIMARY": args.primary, "SECONDARY": args.secondary}
        for service in args.services:
            for role, endpoint in endpoints.items():
                aws.route53.Record(
                    f"{name}-{service}-{role.lower()}",
                    zone_id=zone.zone_id,
                    name=f"{service}.{args.domain}",
                    type="CNAME",
                    ttl=30,
                    records=[endpoint.dns_name],
                    set_identifier=f"{service}-{endpoint.region}",
                    failover_routing_policies=[aws.route53.RecordFailoverRoutingPolicyArgs(type=role)],
                    health_check_id=checks[role].id,
                    opts=child,
                )
        self.zone_id = zone.zone_id
        self.name_servers = zone.name_servers
        self.register_outputs({"zoneId": zone.zone_id, "nameServers": zone.name_servers})
