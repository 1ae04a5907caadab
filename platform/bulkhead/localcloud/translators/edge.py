"""The edge: network load balancers and their listeners, Route 53, CloudFront."""

from __future__ import annotations

from bulkhead.localcloud.translators import Inputs, State, Target, aws_tags, register


def _load_balancer(target: Target, inputs: Inputs) -> tuple[str, State]:
    request = {
        "Name": target.physical_name(32),
        "Subnets": list(inputs["subnets"]),
        "Scheme": "internal" if inputs.get("internal") else "internet-facing",
        "Type": inputs.get("loadBalancerType", "application"),
        "Tags": aws_tags(inputs),
    }
    if inputs.get("securityGroups"):
        request["SecurityGroups"] = list(inputs["securityGroups"])
    (balancer,) = target.client("elbv2").create_load_balancer(**request)["LoadBalancers"]
    return balancer["LoadBalancerArn"], {
        **inputs,
        "arn": balancer["LoadBalancerArn"],
        "name": balancer["LoadBalancerName"],
        "dnsName": balancer["DNSName"],
        "zoneId": balancer["CanonicalHostedZoneId"],
    }


register(
    "aws:lb/loadBalancer:LoadBalancer",
    _load_balancer,
    lambda t, i, s: t.client("elbv2").delete_load_balancer(LoadBalancerArn=i),
)


def _target_group(target: Target, inputs: Inputs) -> tuple[str, State]:
    check = inputs.get("healthCheck") or {}
    (group,) = target.client("elbv2").create_target_group(
        Name=target.physical_name(32),
        Protocol=inputs["protocol"],
        Port=int(inputs["port"]),
        VpcId=inputs["vpcId"],
        TargetType=inputs.get("targetType", "instance"),
        HealthCheckProtocol=check.get("protocol", "TCP"),
        HealthCheckPort=str(check.get("port", "traffic-port")),
        HealthCheckPath=check.get("path", "/"),
        HealthCheckIntervalSeconds=int(check.get("interval", 30)),
        HealthyThresholdCount=int(check.get("healthyThreshold", 3)),
        UnhealthyThresholdCount=int(check.get("unhealthyThreshold", 3)),
        Tags=aws_tags(inputs),
    )["TargetGroups"]
    return group["TargetGroupArn"], {**inputs, "arn": group["TargetGroupArn"], "name": group["TargetGroupName"]}


register(
    "aws:lb/targetGroup:TargetGroup",
    _target_group,
    lambda t, i, s: t.client("elbv2").delete_target_group(TargetGroupArn=i),
)


def _listener(target: Target, inputs: Inputs) -> tuple[str, State]:
    actions = [{"Type": a["type"], "TargetGroupArn": a["targetGroupArn"]} for a in inputs["defaultActions"]]
    (listener,) = target.client("elbv2").create_listener(
        LoadBalancerArn=inputs["loadBalancerArn"],
        Protocol=inputs["protocol"],
        Port=int(inputs["port"]),
        DefaultActions=actions,
    )["Listeners"]
    return listener["ListenerArn"], {**inputs, "arn": listener["ListenerArn"]}


register("aws:lb/listener:Listener", _listener, lambda t, i, s: t.client("elbv2").delete_listener(ListenerArn=i))


def _zone(target: Target, inputs: Inputs) -> tuple[str, State]:
    route53 = target.client("route53")
    created = route53.create_hosted_zone(
        Name=inputs["name"], CallerReference=target.urn, HostedZoneConfig={"Comment": inputs.get("comment", "")}
    )
    zone_id = created["HostedZone"]["Id"].split("/")[-1]
    return zone_id, {**inputs, "zoneId": zone_id, "nameServers": created["DelegationSet"]["NameServers"]}


register("aws:route53/zone:Zone", _zone, lambda t, i, s: t.client("route53").delete_hosted_zone(Id=i))


def _health_check(target: Target, inputs: Inputs) -> tuple[str, State]:
    config = {
        "FullyQualifiedDomainName": inputs["fqdn"],
        "Port": int(inputs["port"]),
        "Type": inputs["type"],
        "ResourcePath": inputs.get("resourcePath", "/"),
        "FailureThreshold": int(inputs.get("failureThreshold", 3)),
        "RequestInterval": int(inputs.get("requestInterval", 30)),
    }
    route53 = target.client("route53")
    check_id = route53.create_health_check(CallerReference=target.urn, HealthCheckConfig=config)["HealthCheck"]["Id"]
    if inputs.get("tags"):
        route53.change_tags_for_resource(ResourceType="healthcheck", ResourceId=check_id, AddTags=aws_tags(inputs))
    return check_id, dict(inputs)


register(
    "aws:route53/healthCheck:HealthCheck",
    _health_check,
    lambda t, i, s: t.client("route53").delete_health_check(HealthCheckId=i),
)


def _record_set(inputs: Inputs) -> dict:
    record = {
        "Name": inputs["name"],
        "Type": inputs["type"],
        "TTL": int(inputs["ttl"]),
        "ResourceRecords": [{"Value": value} for value in inputs["records"]],
    }
    if inputs.get("setIdentifier"):
        record["SetIdentifier"] = inputs["setIdentifier"]
    if inputs.get("failoverRoutingPolicies"):
        record["Failover"] = inputs["failoverRoutingPolicies"][0]["type"]
    if inputs.get("healthCheckId"):
        record["HealthCheckId"] = inputs["healthCheckId"]
    return record


def _change_record(target: Target, action: str, inputs: Inputs) -> None:
    target.client("route53").change_resource_record_sets(
        HostedZoneId=inputs["zoneId"],
        ChangeBatch={"Changes": [{"Action": action, "ResourceRecordSet": _record_set(inputs)}]},
    )


def _record(target: Target, inputs: Inputs) -> tuple[str, State]:
    _change_record(target, "CREATE", inputs)
    record_id = "_".join(str(inputs.get(k, "")) for k in ("zoneId", "name", "type", "setIdentifier"))
    return record_id, {**inputs, "fqdn": inputs["name"]}


register("aws:route53/record:Record", _record, lambda t, i, s: _change_record(t, "DELETE", s))


def _origin_access_control(target: Target, inputs: Inputs) -> tuple[str, State]:
    created = target.client("cloudfront").create_origin_access_control(
        OriginAccessControlConfig={
            "Name": inputs["name"],
            "Description": inputs.get("description", ""),
            "SigningProtocol": inputs["signingProtocol"],
            "SigningBehavior": inputs["signingBehavior"],
            "OriginAccessControlOriginType": inputs["originAccessControlOriginType"],
        }
    )
    return created["OriginAccessControl"]["Id"], {**inputs, "etag": created["ETag"]}


def _delete_origin_access_control(target: Target, control_id: str, state: State) -> None:
    cloudfront = target.client("cloudfront")
    etag = cloudfront.get_origin_access_control(Id=control_id)["ETag"]
    cloudfront.delete_origin_access_control(Id=control_id, IfMatch=etag)


register(
    "aws:cloudfront/originAccessControl:OriginAccessControl",
    _origin_access_control,
    _delete_origin_access_control,
)


def _distribution(target: Target, inputs: Inputs) -> tuple[str, State]:
    behaviour = inputs["defaultCacheBehavior"]
    config = {
        "CallerReference": target.urn,
        "Comment": inputs.get("comment", ""),
        "Enabled": bool(inputs.get("enabled")),
        "DefaultRootObject": inputs.get("defaultRootObject", ""),
        "PriceClass": inputs.get("priceClass", "PriceClass_All"),
        "Origins": {
            "Quantity": len(inputs["origins"]),
            "Items": [
                {
                    "Id": origin["originId"],
                    "DomainName": origin["domainName"],
                    "OriginAccessControlId": origin.get("originAccessControlId", ""),
                    "S3OriginConfig": {"OriginAccessIdentity": ""},
                }
                for origin in inputs["origins"]
            ],
        },
        "DefaultCacheBehavior": {
            "TargetOriginId": behaviour["targetOriginId"],
            "ViewerProtocolPolicy": behaviour["viewerProtocolPolicy"],
            "CachePolicyId": behaviour.get("cachePolicyId", ""),
            "Compress": bool(behaviour.get("compress")),
            "AllowedMethods": {
                "Quantity": len(behaviour["allowedMethods"]),
                "Items": list(behaviour["allowedMethods"]),
                "CachedMethods": {
                    "Quantity": len(behaviour["cachedMethods"]),
                    "Items": list(behaviour["cachedMethods"]),
                },
            },
        },
        "ViewerCertificate": {"CloudFrontDefaultCertificate": True},
    }
    created = target.client("cloudfront").create_distribution(DistributionConfig=config)["Distribution"]
    return created["Id"], {**inputs, "arn": created["ARN"], "domainName": created["DomainName"]}


def _delete_distribution(target: Target, distribution_id: str, state: State) -> None:
    cloudfront = target.client("cloudfront")
    etag = cloudfront.get_distribution(Id=distribution_id)["ETag"]
    cloudfront.delete_distribution(Id=distribution_id, IfMatch=etag)


register("aws:cloudfront/distribution:Distribution", _distribution, _delete_distribution)
