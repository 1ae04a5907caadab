"""Security settings: KMS keys, EBS encryption by default, network ACLs, the VPC defaults, flow logs."""

from __future__ import annotations

from bulkhead.localcloud.translators import Inputs, ReplaceRequired, State, Target, aws_tags, register

# The EC2 API names protocols by number; the program may use names.
PROTOCOLS = {"tcp": "6", "udp": "17", "icmp": "1", "all": "-1"}


def _key(target: Target, inputs: Inputs) -> tuple[str, State]:
    kms = target.client("kms")
    request = {
        "Description": inputs.get("description", ""),
        "Tags": [{"TagKey": t["Key"], "TagValue": t["Value"]} for t in aws_tags(inputs)],
    }
    if inputs.get("policy"):
        request["Policy"] = inputs["policy"]
    metadata = kms.create_key(**request)["KeyMetadata"]
    if inputs.get("enableKeyRotation"):
        kms.enable_key_rotation(KeyId=metadata["KeyId"])
    return metadata["KeyId"], {**inputs, "arn": metadata["Arn"], "keyId": metadata["KeyId"]}


register(
    "aws:kms/key:Key",
    _key,
    lambda t, i, s: t.client("kms").schedule_key_deletion(KeyId=i, PendingWindowInDays=7),
)


def _ebs_default(target: Target, inputs: Inputs) -> tuple[str, State]:
    ec2 = target.client("ec2")
    if inputs.get("enabled", True):
        ec2.enable_ebs_encryption_by_default()
    else:
        ec2.disable_ebs_encryption_by_default()
    return target.region, dict(inputs)


register(
    "aws:ebs/encryptionByDefault:EncryptionByDefault",
    _ebs_default,
    lambda t, i, s: t.client("ec2").disable_ebs_encryption_by_default(),
)


def _entries(inputs: Inputs) -> list[tuple[bool, dict]]:
    entries = []
    for egress, key in ((False, "ingress"), (True, "egress")):
        for rule in inputs.get(key) or []:
            protocol = str(rule["protocol"]).lower()
            entry = {
                "RuleNumber": int(rule["ruleNo"]),
                "Protocol": PROTOCOLS.get(protocol, protocol),
                "RuleAction": rule["action"],
                "CidrBlock": rule["cidrBlock"],
            }
            if entry["Protocol"] != "-1":
                entry["PortRange"] = {"From": int(rule["fromPort"]), "To": int(rule["toPort"])}
            entries.append((egress, entry))
    return entries


def _associate(target: Target, acl_id: str, subnet_ids: list[str]) -> None:
    ec2 = target.client("ec2")
    for subnet_id in subnet_ids:
        current = ec2.describe_network_acls(Filters=[{"Name": "association.subnet-id", "Values": [subnet_id]}])
        for acl in current["NetworkAcls"]:
            for association in acl["Associations"]:
                if association["SubnetId"] == subnet_id and acl["NetworkAclId"] != acl_id:
                    ec2.replace_network_acl_association(
                        AssociationId=association["NetworkAclAssociationId"], NetworkAclId=acl_id
                    )


def _network_acl(target: Target, inputs: Inputs) -> tuple[str, State]:
    ec2 = target.client("ec2")
    acl_id = ec2.create_network_acl(VpcId=inputs["vpcId"])["NetworkAcl"]["NetworkAclId"]
    for egress, entry in _entries(inputs):
        ec2.create_network_acl_entry(NetworkAclId=acl_id, Egress=egress, **entry)
    _associate(target, acl_id, list(inputs.get("subnetIds") or []))
    if inputs.get("tags"):
        ec2.create_tags(Resources=[acl_id], Tags=aws_tags(inputs))
    return acl_id, dict(inputs)


def _update_network_acl(target: Target, acl_id: str, old: Inputs, new: Inputs, state: State) -> State:
    if old.get("vpcId") != new.get("vpcId") or old.get("subnetIds") != new.get("subnetIds"):
        raise ReplaceRequired
    ec2 = target.client("ec2")
    for egress, entry in _entries(old):
        ec2.delete_network_acl_entry(NetworkAclId=acl_id, Egress=egress, RuleNumber=entry["RuleNumber"])
    for egress, entry in _entries(new):
        ec2.create_network_acl_entry(NetworkAclId=acl_id, Egress=egress, **entry)
    return dict(new)


def _delete_network_acl(target: Target, acl_id: str, state: State) -> None:
    ec2 = target.client("ec2")
    vpc_id = state["vpcId"]
    (default,) = ec2.describe_network_acls(
        Filters=[{"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "default", "Values": ["true"]}]
    )["NetworkAcls"]
    # As on AWS: the subnets go back to the VPC's default ACL before this one can be deleted.
    _associate(target, default["NetworkAclId"], list(state.get("subnetIds") or []))
    ec2.delete_network_acl(NetworkAclId=acl_id)


register("aws:ec2/networkAcl:NetworkAcl", _network_acl, _delete_network_acl, _update_network_acl)


def _default_network_acl(target: Target, inputs: Inputs) -> tuple[str, State]:
    """Adopt the VPC's default ACL and make it hold exactly the declared rules (none: it admits nothing)."""
    ec2 = target.client("ec2")
    acl_id = inputs["defaultNetworkAclId"]
    (acl,) = ec2.describe_network_acls(NetworkAclIds=[acl_id])["NetworkAcls"]
    for entry in acl["Entries"]:
        if entry["RuleNumber"] < 32767:  # the final implicit deny cannot be removed, on AWS as here
            ec2.delete_network_acl_entry(NetworkAclId=acl_id, Egress=entry["Egress"], RuleNumber=entry["RuleNumber"])
    for egress, entry in _entries(inputs):
        ec2.create_network_acl_entry(NetworkAclId=acl_id, Egress=egress, **entry)
    if inputs.get("tags"):
        ec2.create_tags(Resources=[acl_id], Tags=aws_tags(inputs))
    return acl_id, dict(inputs)


# Removing a default ACL or group from the program leaves it in the VPC, as pulumi-aws does.
register("aws:ec2/defaultNetworkAcl:DefaultNetworkAcl", _default_network_acl, lambda t, i, s: None)


def _default_security_group(target: Target, inputs: Inputs) -> tuple[str, State]:
    """Adopt the VPC's default security group and strip every rule from it."""
    ec2 = target.client("ec2")
    (group,) = ec2.describe_security_groups(
        Filters=[{"Name": "vpc-id", "Values": [inputs["vpcId"]]}, {"Name": "group-name", "Values": ["default"]}]
    )["SecurityGroups"]
    group_id = group["GroupId"]
    if group["IpPermissions"]:
        ec2.revoke_security_group_ingress(GroupId=group_id, IpPermissions=group["IpPermissions"])
    if group["IpPermissionsEgress"]:
        ec2.revoke_security_group_egress(GroupId=group_id, IpPermissions=group["IpPermissionsEgress"])
    if inputs.get("tags"):
        ec2.create_tags(Resources=[group_id], Tags=aws_tags(inputs))
    return group_id, {**inputs, "arn": f"arn:aws:ec2:{target.region}:{group['OwnerId']}:security-group/{group_id}"}


register("aws:ec2/defaultSecurityGroup:DefaultSecurityGroup", _default_security_group, lambda t, i, s: None)


def _log_group(target: Target, inputs: Inputs) -> tuple[str, State]:
    logs = target.client("logs")
    name = inputs.get("name") or target.physical_name(512)
    logs.create_log_group(logGroupName=name, tags=dict(inputs.get("tags") or {}))
    if inputs.get("retentionInDays"):
        logs.put_retention_policy(logGroupName=name, retentionInDays=int(inputs["retentionInDays"]))
    account = target.client("sts").get_caller_identity()["Account"]
    return name, {**inputs, "name": name, "arn": f"arn:aws:logs:{target.region}:{account}:log-group:{name}"}


register(
    "aws:cloudwatch/logGroup:LogGroup", _log_group, lambda t, i, s: t.client("logs").delete_log_group(logGroupName=i)
)


def _flow_log(target: Target, inputs: Inputs) -> tuple[str, State]:
    request = {
        "ResourceIds": [inputs["vpcId"]],
        "ResourceType": "VPC",
        "TrafficType": inputs.get("trafficType", "ALL"),
        "LogDestinationType": inputs.get("logDestinationType", "cloud-watch-logs"),
    }
    if request["LogDestinationType"] == "cloud-watch-logs":
        # The API takes the group's name; the program gives its ARN.
        request["LogGroupName"] = inputs["logDestination"].split(":log-group:", 1)[1]
        request["DeliverLogsPermissionArn"] = inputs["iamRoleArn"]
    else:
        request["LogDestination"] = inputs["logDestination"]
    result = target.client("ec2").create_flow_logs(**request)
    if result.get("Unsuccessful"):
        raise ValueError(f"flow log for {inputs['vpcId']} refused: {result['Unsuccessful']}")
    (flow_log_id,) = result["FlowLogIds"]
    if inputs.get("tags"):
        target.client("ec2").create_tags(Resources=[flow_log_id], Tags=aws_tags(inputs))
    return flow_log_id, dict(inputs)


register("aws:ec2/flowLog:FlowLog", _flow_log, lambda t, i, s: t.client("ec2").delete_flow_logs(FlowLogIds=[i]))
