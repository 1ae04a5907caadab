"""EC2 networking and compute: VPCs, subnets, routes, NAT, security groups, templates, groups, instances."""

from __future__ import annotations

import base64

from bulkhead.localcloud.aws import LocalCloudError
from bulkhead.localcloud.translators import Inputs, ReplaceRequired, State, Target, aws_tags, register


def _tag(target: Target, resource_id: str, inputs: Inputs) -> None:
    if inputs.get("tags"):
        target.client("ec2").create_tags(Resources=[resource_id], Tags=aws_tags(inputs))


def _vpc(target: Target, inputs: Inputs) -> tuple[str, State]:
    ec2 = target.client("ec2")
    vpc = ec2.create_vpc(CidrBlock=inputs["cidrBlock"])["Vpc"]
    for attribute in ("enableDnsSupport", "enableDnsHostnames"):
        if inputs.get(attribute):
            ec2.modify_vpc_attribute(VpcId=vpc["VpcId"], **{attribute[0].upper() + attribute[1:]: {"Value": True}})
    _tag(target, vpc["VpcId"], inputs)
    arn = f"arn:aws:ec2:{target.region}:{vpc['OwnerId']}:vpc/{vpc['VpcId']}"
    in_vpc = [{"Name": "vpc-id", "Values": [vpc["VpcId"]]}]
    (acl,) = ec2.describe_network_acls(Filters=[*in_vpc, {"Name": "default", "Values": ["true"]}])["NetworkAcls"]
    (group,) = ec2.describe_security_groups(Filters=[*in_vpc, {"Name": "group-name", "Values": ["default"]}])[
        "SecurityGroups"
    ]
    return vpc["VpcId"], {
        **inputs,
        "arn": arn,
        "ownerId": vpc["OwnerId"],
        "defaultNetworkAclId": acl["NetworkAclId"],
        "defaultSecurityGroupId": group["GroupId"],
    }


register("aws:ec2/vpc:Vpc", _vpc, lambda t, i, s: t.client("ec2").delete_vpc(VpcId=i))


def _gateway(target: Target, inputs: Inputs) -> tuple[str, State]:
    ec2 = target.client("ec2")
    gateway_id = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=gateway_id, VpcId=inputs["vpcId"])
    _tag(target, gateway_id, inputs)
    return gateway_id, dict(inputs)


def _delete_gateway(target: Target, gateway_id: str, state: State) -> None:
    ec2 = target.client("ec2")
    ec2.detach_internet_gateway(InternetGatewayId=gateway_id, VpcId=state["vpcId"])
    ec2.delete_internet_gateway(InternetGatewayId=gateway_id)


register("aws:ec2/internetGateway:InternetGateway", _gateway, _delete_gateway)


def _subnet(target: Target, inputs: Inputs) -> tuple[str, State]:
    subnet = target.client("ec2").create_subnet(
        VpcId=inputs["vpcId"], CidrBlock=inputs["cidrBlock"], AvailabilityZone=inputs["availabilityZone"]
    )["Subnet"]
    _tag(target, subnet["SubnetId"], inputs)
    return subnet["SubnetId"], {
        **inputs,
        "arn": subnet.get("SubnetArn", ""),
        "availabilityZone": subnet["AvailabilityZone"],
    }


register("aws:ec2/subnet:Subnet", _subnet, lambda t, i, s: t.client("ec2").delete_subnet(SubnetId=i))


def _route_table(target: Target, inputs: Inputs) -> tuple[str, State]:
    ec2 = target.client("ec2")
    table_id = ec2.create_route_table(VpcId=inputs["vpcId"])["RouteTable"]["RouteTableId"]
    for route in inputs.get("routes") or []:
        via = {"GatewayId": route["gatewayId"]} if route.get("gatewayId") else {"NatGatewayId": route["natGatewayId"]}
        ec2.create_route(RouteTableId=table_id, DestinationCidrBlock=route["cidrBlock"], **via)
    _tag(target, table_id, inputs)
    return table_id, dict(inputs)


register(
    "aws:ec2/routeTable:RouteTable", _route_table, lambda t, i, s: t.client("ec2").delete_route_table(RouteTableId=i)
)


def _association(target: Target, inputs: Inputs) -> tuple[str, State]:
    association = target.client("ec2").associate_route_table(
        SubnetId=inputs["subnetId"], RouteTableId=inputs["routeTableId"]
    )
    return association["AssociationId"], dict(inputs)


register(
    "aws:ec2/routeTableAssociation:RouteTableAssociation",
    _association,
    lambda t, i, s: t.client("ec2").disassociate_route_table(AssociationId=i),
)


def _eip(target: Target, inputs: Inputs) -> tuple[str, State]:
    address = target.client("ec2").allocate_address(Domain="vpc")
    _tag(target, address["AllocationId"], inputs)
    return address["AllocationId"], {**inputs, "publicIp": address["PublicIp"], "allocationId": address["AllocationId"]}


register("aws:ec2/eip:Eip", _eip, lambda t, i, s: t.client("ec2").release_address(AllocationId=i))


def _nat(target: Target, inputs: Inputs) -> tuple[str, State]:
    nat = target.client("ec2").create_nat_gateway(SubnetId=inputs["subnetId"], AllocationId=inputs["allocationId"])
    nat_id = nat["NatGateway"]["NatGatewayId"]
    _tag(target, nat_id, inputs)
    return nat_id, dict(inputs)


register("aws:ec2/natGateway:NatGateway", _nat, lambda t, i, s: t.client("ec2").delete_nat_gateway(NatGatewayId=i))


def _endpoint(target: Target, inputs: Inputs) -> tuple[str, State]:
    endpoint = target.client("ec2").create_vpc_endpoint(
        VpcId=inputs["vpcId"],
        ServiceName=inputs["serviceName"],
        VpcEndpointType=inputs.get("vpcEndpointType", "Gateway"),
        RouteTableIds=list(inputs.get("routeTableIds") or []),
        **({"PolicyDocument": inputs["policy"]} if inputs.get("policy") else {}),
    )["VpcEndpoint"]
    return endpoint["VpcEndpointId"], dict(inputs)


register(
    "aws:ec2/vpcEndpoint:VpcEndpoint",
    _endpoint,
    lambda t, i, s: t.client("ec2").delete_vpc_endpoints(VpcEndpointIds=[i]),
)


def _permissions(rules: list[dict], group_id: str) -> list[dict]:
    permissions = []
    for rule in rules or []:
        groups = [{"GroupId": g} for g in rule.get("securityGroups") or []]
        if rule.get("self"):
            groups.append({"GroupId": group_id})
        permissions.append(
            {
                "IpProtocol": str(rule["protocol"]),
                "FromPort": int(rule["fromPort"]),
                "ToPort": int(rule["toPort"]),
                "IpRanges": [{"CidrIp": c} for c in rule.get("cidrBlocks") or []],
                "UserIdGroupPairs": groups,
            }
        )
    return permissions


def _security_group(target: Target, inputs: Inputs) -> tuple[str, State]:
    ec2 = target.client("ec2")
    group_id = ec2.create_security_group(
        GroupName=inputs.get("name") or target.physical_name(255),
        Description=inputs.get("description") or "Managed by Pulumi",
        VpcId=inputs["vpcId"],
    )["GroupId"]
    # A new group allows all egress; the program's egress list replaces that default.
    ec2.revoke_security_group_egress(
        GroupId=group_id, IpPermissions=[{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]
    )
    _apply_rules(target, group_id, inputs, authorize=True)
    _tag(target, group_id, inputs)
    return group_id, dict(inputs)


def _apply_rules(target: Target, group_id: str, inputs: Inputs, authorize: bool) -> None:
    ec2 = target.client("ec2")
    for direction in ("ingress", "egress"):
        permissions = _permissions(inputs.get(direction), group_id)
        if not permissions:
            continue
        action = ("authorize" if authorize else "revoke") + f"_security_group_{direction}"
        getattr(ec2, action)(GroupId=group_id, IpPermissions=permissions)


def _update_security_group(target: Target, group_id: str, old: Inputs, new: Inputs, state: State) -> State:
    if (old.get("name"), old.get("description"), old.get("vpcId")) != (
        new.get("name"),
        new.get("description"),
        new.get("vpcId"),
    ):
        raise ReplaceRequired
    # Rules change in place, as on AWS: a new dyno cell's group joins the database's ingress without
    # replacing the group (and so without replacing the database hosts that use it).
    _apply_rules(target, group_id, old, authorize=False)
    _apply_rules(target, group_id, new, authorize=True)
    return dict(new)


register(
    "aws:ec2/securityGroup:SecurityGroup",
    _security_group,
    lambda t, i, s: t.client("ec2").delete_security_group(GroupId=i),
    _update_security_group,
)


def _metadata_options(options: Inputs) -> dict:
    carried = {"HttpTokens": options.get("httpTokens"), "HttpEndpoint": options.get("httpEndpoint")}
    if options.get("instanceMetadataTags"):
        carried["InstanceMetadataTags"] = options["instanceMetadataTags"]
    return carried


def _launch_template_data(inputs: Inputs) -> dict:
    data = {
        "ImageId": inputs["imageId"],
        "InstanceType": inputs["instanceType"],
        "SecurityGroupIds": list(inputs.get("vpcSecurityGroupIds") or []),
        "UserData": inputs.get("userData", ""),
        "TagSpecifications": [
            {"ResourceType": spec["resourceType"], "Tags": aws_tags(spec)}
            for spec in inputs.get("tagSpecifications") or []
        ],
    }
    if inputs.get("iamInstanceProfile"):
        data["IamInstanceProfile"] = {"Arn": inputs["iamInstanceProfile"]["arn"]}
    if inputs.get("metadataOptions"):
        data["MetadataOptions"] = _metadata_options(inputs["metadataOptions"])
    if inputs.get("blockDeviceMappings"):
        data["BlockDeviceMappings"] = [
            {"DeviceName": mapping["deviceName"], "Ebs": _ebs(mapping.get("ebs") or {})}
            for mapping in inputs["blockDeviceMappings"]
        ]
    return data


def _ebs(ebs: Inputs) -> dict:
    """A block device's EBS settings as the EC2 API takes them (the program gives booleans as strings)."""
    converted: dict = {}
    for key, argument in (("encrypted", "Encrypted"), ("deleteOnTermination", "DeleteOnTermination")):
        if key in ebs:
            converted[argument] = str(ebs[key]).lower() == "true"
    for key, argument in (("volumeType", "VolumeType"), ("kmsKeyId", "KmsKeyId")):
        if ebs.get(key):
            converted[argument] = ebs[key]
    if ebs.get("volumeSize"):
        converted["VolumeSize"] = int(ebs["volumeSize"])
    return converted


def _launch_template(target: Target, inputs: Inputs) -> tuple[str, State]:
    template = target.client("ec2").create_launch_template(
        LaunchTemplateName=target.physical_name(128), LaunchTemplateData=_launch_template_data(inputs)
    )["LaunchTemplate"]
    return template["LaunchTemplateId"], {**inputs, "latestVersion": template["LatestVersionNumber"]}


def _update_launch_template(target: Target, template_id: str, old: Inputs, new: Inputs, state: State) -> State:
    """As on AWS: new settings (user data with a new ref, say) are a new version of the same template, which
    groups on $Latest launch from; the template keeps its name, so it is never replaced."""
    ec2 = target.client("ec2")
    version = ec2.create_launch_template_version(
        LaunchTemplateId=template_id, LaunchTemplateData=_launch_template_data(new)
    )["LaunchTemplateVersion"]["VersionNumber"]
    ec2.modify_launch_template(LaunchTemplateId=template_id, DefaultVersion=str(version))
    return {**state, **new, "latestVersion": version}


register(
    "aws:ec2/launchTemplate:LaunchTemplate",
    _launch_template,
    lambda t, i, s: t.client("ec2").delete_launch_template(LaunchTemplateId=i),
    _update_launch_template,
)


def _group(target: Target, inputs: Inputs) -> tuple[str, State]:
    autoscaling = target.client("autoscaling")
    name = inputs.get("name") or target.physical_name(255)
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=name,
        LaunchTemplate={
            "LaunchTemplateId": inputs["launchTemplate"]["id"],
            "Version": inputs["launchTemplate"]["version"],
        },
        MinSize=int(inputs["minSize"]),
        MaxSize=int(inputs["maxSize"]),
        DesiredCapacity=int(inputs["desiredCapacity"]),
        VPCZoneIdentifier=",".join(inputs["vpcZoneIdentifiers"]),
        TargetGroupARNs=list(inputs.get("targetGroupArns") or []),
        HealthCheckType=inputs.get("healthCheckType", "EC2"),
        HealthCheckGracePeriod=int(inputs.get("healthCheckGracePeriod") or 0),
        Tags=[
            {
                "Key": tag["key"],
                "Value": tag["value"],
                "PropagateAtLaunch": bool(tag.get("propagateAtLaunch")),
                "ResourceId": name,
                "ResourceType": "auto-scaling-group",
            }
            for tag in inputs.get("tags") or []
        ],
    )
    pool = inputs.get("warmPool")
    if pool:
        autoscaling.put_warm_pool(
            AutoScalingGroupName=name,
            MinSize=int(pool.get("minSize") or 0),
            PoolState=pool.get("poolState", "Stopped"),
            InstanceReusePolicy={"ReuseOnScaleIn": bool((pool.get("instanceReusePolicy") or {}).get("reuseOnScaleIn"))},
        )
    _check_placement(target, name, inputs["vpcZoneIdentifiers"])
    return name, {**inputs, "name": name, "arn": f"arn:aws:autoscaling:{target.region}:group/{name}"}


def _check_placement(target: Target, name: str, subnet_ids: list[str]) -> None:
    """The program pins each group to its AZ's subnets; the capacity must really be there."""
    subnets = target.client("ec2").describe_subnets(SubnetIds=list(subnet_ids))["Subnets"]
    zones = {s["AvailabilityZone"] for s in subnets}
    group = target.client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[name])
    misplaced = [
        i["InstanceId"] for i in group["AutoScalingGroups"][0]["Instances"] if i["AvailabilityZone"] not in zones
    ]
    if misplaced:
        raise LocalCloudError(f"group {name} started {', '.join(misplaced)} outside {sorted(zones)}")


def _update_group(target: Target, name: str, old: Inputs, new: Inputs, state: State) -> State:
    sizing = ("minSize", "maxSize", "desiredCapacity")
    if {k: v for k, v in old.items() if k not in sizing} != {k: v for k, v in new.items() if k not in sizing}:
        raise ReplaceRequired
    target.client("autoscaling").update_auto_scaling_group(
        AutoScalingGroupName=name,
        MinSize=int(new["minSize"]),
        MaxSize=int(new["maxSize"]),
        DesiredCapacity=int(new["desiredCapacity"]),
    )
    _check_placement(target, name, new["vpcZoneIdentifiers"])
    return {**state, **new}


register(
    "aws:autoscaling/group:Group",
    _group,
    lambda t, i, s: t.client("autoscaling").delete_auto_scaling_group(AutoScalingGroupName=i, ForceDelete=True),
    _update_group,
)


def _instance(target: Target, inputs: Inputs) -> tuple[str, State]:
    request = {
        "ImageId": inputs["ami"],
        "InstanceType": inputs["instanceType"],
        "MinCount": 1,
        "MaxCount": 1,
        "SubnetId": inputs["subnetId"],
        "SecurityGroupIds": list(inputs.get("vpcSecurityGroupIds") or []),
        # boto3 base64-encodes RunInstances' user data itself, as the EC2 API wants it once.
        "UserData": inputs.get("userData") or "",
        "TagSpecifications": [{"ResourceType": "instance", "Tags": aws_tags(inputs)}],
    }
    if inputs.get("availabilityZone"):
        request["Placement"] = {"AvailabilityZone": inputs["availabilityZone"]}
    if inputs.get("privateIp"):
        request["PrivateIpAddress"] = inputs["privateIp"]
    if inputs.get("iamInstanceProfile"):
        request["IamInstanceProfile"] = {"Name": inputs["iamInstanceProfile"]}
    if inputs.get("metadataOptions"):
        request["MetadataOptions"] = _metadata_options(inputs["metadataOptions"])
    if inputs.get("rootBlockDevice"):
        request["BlockDeviceMappings"] = [{"DeviceName": _root_device(target, inputs["ami"]),
                                           "Ebs": _ebs(inputs["rootBlockDevice"])}]  # fmt: skip
    (instance,) = target.client("ec2").run_instances(**request)["Instances"]
    return instance["InstanceId"], {
        **inputs,
        "privateIp": instance["PrivateIpAddress"],
        "availabilityZone": instance["Placement"]["AvailabilityZone"],
        "arn": f"arn:aws:ec2:{target.region}::instance/{instance['InstanceId']}",
    }


def _root_device(target: Target, image_id: str) -> str:
    (image,) = target.client("ec2").describe_images(ImageIds=[image_id])["Images"]
    return image.get("RootDeviceName") or "/dev/xvda"


def _update_instance(target: Target, instance_id: str, old: Inputs, new: Inputs, state: State) -> State:
    """As pulumi-aws does by default (user_data_replace_on_change off): new user data or tags change the
    running instance in place, for its next boot; anything else replaces it."""
    in_place = ("userData", "tags")
    if {k: v for k, v in old.items() if k not in in_place} != {k: v for k, v in new.items() if k not in in_place}:
        raise ReplaceRequired
    ec2 = target.client("ec2")
    if old.get("userData") != new.get("userData"):
        # Unlike RunInstances, ModifyInstanceAttribute takes user data already base64-encoded.
        encoded = base64.b64encode((new.get("userData") or "").encode())
        ec2.modify_instance_attribute(InstanceId=instance_id, UserData={"Value": encoded})
    if old.get("tags") != new.get("tags"):
        ec2.create_tags(Resources=[instance_id], Tags=aws_tags(new))
    return {**state, **new}


register(
    "aws:ec2/instance:Instance",
    _instance,
    lambda t, i, s: t.client("ec2").terminate_instances(InstanceIds=[i]),
    _update_instance,
)
