"""Read what is deployed, through the AWS APIs, into the items that the policy rules judge.

The same calls run against an AWS account and the local cloud. Where the local cloud cannot hold
what was declared (moto ignores a policy's conditions, so the local cloud leaves conditional Denies
out of the bucket policies it applies), the item takes the statement from the local cloud's record
of what was declared, and its note says so. On AWS there is no such record and the live policy is read.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass

import botocore.exceptions

from bulkhead.ops.policy_model import Declared, Item, statements

Clients = Callable[..., object]  # clients(service, region, role_arn=None) -> a boto3 client
STACK_TAG = "bulkhead:stack"


@dataclass(frozen=True)
class Scope:
    """One stack to read: its region, other regions it reaches (the partner's replica), and its account's role."""

    stack: str
    region: str
    regions: tuple[str, ...]
    role_arn: str | None = None


def _tags(pairs: list[dict] | None, key: str = "Key", value: str = "Value") -> dict[str, str]:
    return {t[key]: t[value] for t in pairs or []}


def _missing(error: botocore.exceptions.ClientError) -> bool:
    return (
        error.response.get("Error", {})
        .get("Code", "")
        .startswith(("NoSuch", "ObjectLockConfigurationNotFound", "ServerSideEncryptionConfigurationNotFound"))
    )


def _get(call: Callable, *keys: str, **kwargs):
    """One describe call; a configuration that does not exist answers None."""
    try:
        answer = call(**kwargs)
    except botocore.exceptions.ClientError as error:
        if _missing(error) or "NotFound" in error.response.get("Error", {}).get("Code", ""):
            return None
        raise
    for key in keys:
        answer = answer.get(key) if isinstance(answer, dict) else None
    return answer


class Reader:
    """Reads one deployment; `declared` is the local cloud's record (empty on AWS)."""

    def __init__(self, clients: Clients, declared: list[Declared]) -> None:
        self.clients = clients
        self.declared = declared

    def read(self, scopes: list[Scope]) -> list[Item]:
        items: list[Item] = []
        for scope in scopes:
            items += self._region(scope)
            items += self._buckets(scope)
            items += self._roles(scope)
            if scope.role_arn or scope.stack == "global":
                items += self._distributions(scope)
        return items

    # --- EC2, the region's account settings, alarms, parameters ---

    def _region(self, scope: Scope) -> list[Item]:
        ec2 = self.clients("ec2", scope.region, scope.role_arn)
        mine = [{"Name": f"tag:{STACK_TAG}", "Values": [scope.stack]}]
        vpcs = ec2.describe_vpcs(Filters=mine)["Vpcs"]
        if not vpcs:
            return self._alarms(scope)
        items = [Item("ebs_default", scope.region, scope.stack, scope.region,
                      {"enabled": ec2.get_ebs_encryption_by_default()["EbsEncryptionByDefault"]})]  # fmt: skip
        vpc_ids = [v["VpcId"] for v in vpcs]
        in_vpcs = [{"Name": "vpc-id", "Values": vpc_ids}]
        logged = {f["ResourceId"] for f in ec2.describe_flow_logs(
            Filters=[{"Name": "resource-id", "Values": vpc_ids}])["FlowLogs"]}  # fmt: skip
        for vpc in vpcs:
            items.append(Item("vpc", vpc["VpcId"], scope.stack, scope.region,
                              {"flow_logs": vpc["VpcId"] in logged, "tags": _tags(vpc.get("Tags"))}))  # fmt: skip
        for group in ec2.describe_security_groups(Filters=in_vpcs)["SecurityGroups"]:
            ingress = [
                {"protocol": p["IpProtocol"], "from": p.get("FromPort", 0), "to": p.get("ToPort", 0),
                 "cidrs": [r["CidrIp"] for r in p.get("IpRanges", [])]}
                for p in group["IpPermissions"]
            ]  # fmt: skip
            default = group["GroupName"] == "default"
            attrs = {"default": default, "ingress": ingress, "tags": _tags(group.get("Tags")),
                     "rule_count": len(group["IpPermissions"]) + len(group["IpPermissionsEgress"])}  # fmt: skip
            name = f"default of {group['VpcId']}" if default else group["GroupName"]
            items.append(Item("security_group", name, scope.stack, scope.region, attrs))
        cidrs = {v["VpcId"]: v["CidrBlock"] for v in vpcs}
        for acl in ec2.describe_network_acls(Filters=in_vpcs)["NetworkAcls"]:
            entries = [{"rule": e["RuleNumber"], "action": e["RuleAction"], "protocol": e["Protocol"],
                        "from": e.get("PortRange", {}).get("From", 0), "to": e.get("PortRange", {}).get("To", 0),
                        "cidr": e.get("CidrBlock", "0.0.0.0/0")}
                       for e in acl["Entries"] if not e["Egress"] and e["RuleNumber"] < 32767]  # fmt: skip
            tags = _tags(acl.get("Tags"))
            items.append(Item("network_acl", acl["NetworkAclId"], scope.stack, scope.region,
                              {"default": acl["IsDefault"], "tier": "default" if acl["IsDefault"]
                               else tags.get("bulkhead:tier", ""), "vpc_cidr": cidrs.get(acl["VpcId"]),
                               "ingress": entries}))  # fmt: skip
        for endpoint in ec2.describe_vpc_endpoints(Filters=in_vpcs)["VpcEndpoints"]:
            if endpoint["ServiceName"].endswith(".s3"):
                items.append(Item("s3_endpoint", endpoint["VpcEndpointId"], scope.stack, scope.region,
                                  {"policy": statements(endpoint.get("PolicyDocument"))}))  # fmt: skip
        items += self._templates(ec2, scope) + self._instances(ec2, scope) + self._groups(scope)
        items += self._alarms(scope) + self._parameters(scope)
        return items

    def _templates(self, ec2, scope: Scope) -> list[Item]:
        items = []
        for template in ec2.describe_launch_templates(Filters=[{"Name": f"tag:{STACK_TAG}", "Values": [scope.stack]}])[
            "LaunchTemplates"
        ]:
            (version,) = ec2.describe_launch_template_versions(
                LaunchTemplateId=template["LaunchTemplateId"], Versions=["$Latest"]
            )["LaunchTemplateVersions"]
            data = version["LaunchTemplateData"]
            mappings = data.get("BlockDeviceMappings") or []
            tags = {k: v for spec in data.get("TagSpecifications") or [] for k, v in _tags(spec.get("Tags")).items()}
            items.append(Item("launch_template", template["LaunchTemplateName"], scope.stack, scope.region,
                              {"volumes_encrypted": bool(mappings) and all(
                                  str(m.get("Ebs", {}).get("Encrypted")).lower() == "true" for m in mappings),
                               "http_tokens": (data.get("MetadataOptions") or {}).get("HttpTokens"),
                               "user_data": _decoded(data.get("UserData")), "tags": tags}))  # fmt: skip
        return items

    def _instances(self, ec2, scope: Scope) -> list[Item]:
        items = []
        found = ec2.describe_instances(Filters=[
            {"Name": f"tag:{STACK_TAG}", "Values": [scope.stack]},
            {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]},
        ])  # fmt: skip
        instances = [i for r in found["Reservations"] for i in r["Instances"]]
        volume_ids = [m["Ebs"]["VolumeId"] for i in instances for m in i.get("BlockDeviceMappings", []) if "Ebs" in m]
        encrypted = {v["VolumeId"]: v["Encrypted"] for v in (
            ec2.describe_volumes(VolumeIds=volume_ids)["Volumes"] if volume_ids else [])}  # fmt: skip
        for instance in instances:
            volumes = [m["Ebs"]["VolumeId"] for m in instance.get("BlockDeviceMappings", []) if "Ebs" in m]
            user_data = ec2.describe_instance_attribute(InstanceId=instance["InstanceId"], Attribute="userData")
            items.append(Item("instance", instance["InstanceId"], scope.stack, scope.region,
                              {"volumes_encrypted": bool(volumes) and all(encrypted.get(v) for v in volumes),
                               "http_tokens": instance.get("MetadataOptions", {}).get("HttpTokens"),
                               "user_data": _decoded(user_data.get("UserData", {}).get("Value")),
                               "tags": _tags(instance.get("Tags"))}))  # fmt: skip
        return items

    def _groups(self, scope: Scope) -> list[Item]:
        autoscaling = self.clients("autoscaling", scope.region, scope.role_arn)
        items = []
        for group in autoscaling.describe_auto_scaling_groups()["AutoScalingGroups"]:
            tags = _tags(group.get("Tags"))
            if tags.get(STACK_TAG) == scope.stack:
                items.append(Item("host_group", group["AutoScalingGroupName"], scope.stack, scope.region,
                                  {"tags": tags}))  # fmt: skip
        return items

    def _alarms(self, scope: Scope) -> list[Item]:
        items = []
        for region in scope.regions:
            cloudwatch = self.clients("cloudwatch", region, scope.role_arn)
            for alarm in cloudwatch.describe_alarms()["MetricAlarms"]:
                tags = _tags(cloudwatch.list_tags_for_resource(ResourceARN=alarm["AlarmArn"])["Tags"])
                if tags.get(STACK_TAG) == scope.stack:
                    items.append(Item("alarm", alarm["AlarmName"], scope.stack, region, {"tags": tags}))
        return items

    def _parameters(self, scope: Scope) -> list[Item]:
        ssm = self.clients("ssm", scope.region, scope.role_arn)
        items = []
        for page in ssm.get_paginator("describe_parameters").paginate():
            for parameter in page["Parameters"]:
                if parameter["Name"].startswith(f"/bulkhead/{scope.region}/"):
                    items.append(Item("parameter", parameter["Name"], scope.stack, scope.region,
                                      {"type": parameter["Type"]}))  # fmt: skip
        return items

    # --- S3 and KMS ---

    def _buckets(self, scope: Scope) -> list[Item]:
        s3 = self.clients("s3", scope.region, scope.role_arn)
        items = []
        keys: set[tuple[str, str]] = set()
        for bucket in s3.list_buckets()["Buckets"]:
            name = bucket["Name"]
            tags = _tags(_get(s3.get_bucket_tagging, "TagSet", Bucket=name))
            if tags.get(STACK_TAG) != scope.stack:
                continue
            region = _get(s3.get_bucket_location, "LocationConstraint", Bucket=name) or "us-east-1"
            here = self.clients("s3", region, scope.role_arn)
            item = Item("bucket", name, scope.stack, region, {"tags": tags, "arn": f"arn:aws:s3:::{name}"})
            attrs = item.attrs
            attrs["versioning"] = _get(here.get_bucket_versioning, "Status", Bucket=name) == "Enabled"
            rules = _get(here.get_bucket_encryption, "ServerSideEncryptionConfiguration", "Rules", Bucket=name) or []
            default = rules[0]["ApplyServerSideEncryptionByDefault"] if rules else {}
            attrs["sse"] = default.get("SSEAlgorithm")
            attrs["kms_key"] = default.get("KMSMasterKeyID")
            if attrs["kms_key"]:
                keys.add((region, attrs["kms_key"]))
            block = _get(here.get_public_access_block, "PublicAccessBlockConfiguration", Bucket=name) or {}
            attrs["public_blocked"] = len(block) == 4 and all(block.values())
            attrs["policy"] = self._bucket_policy(here, item)
            lock = _get(here.get_object_lock_configuration, "ObjectLockConfiguration", Bucket=name) or {}
            retention = (lock.get("Rule") or {}).get("DefaultRetention") or {}
            attrs["lock_mode"], attrs["lock_days"] = retention.get("Mode"), retention.get("Days") or None
            lifecycle = _get(here.get_bucket_lifecycle_configuration, "Rules", Bucket=name) or []
            attrs["expiration_days"] = min((r["Expiration"]["Days"] for r in lifecycle
                                            if r.get("Status") == "Enabled" and "Days" in r.get("Expiration", {})),
                                           default=None)  # fmt: skip
            logging = _get(here.get_bucket_logging, "LoggingEnabled", Bucket=name) or {}
            attrs["logging_target"] = logging.get("TargetBucket")
            items.append(item)
        key_items = self._keys(keys, scope)
        for item in items:
            key = key_items.get(item.attrs.get("kms_key") or "")
            item.attrs["kms_customer_managed"] = bool(key and key.attrs["customer_managed"])
            if key:
                item.attrs["kms_key"] = key.name
        return items + list({id(key): key for key in key_items.values()}.values())

    def _bucket_policy(self, s3, item: Item) -> list[dict]:
        live = statements(_get(s3.get_bucket_policy, "Policy", Bucket=item.name))
        declared = [d for d in self.declared if d.type == "aws:s3/bucketPolicy:BucketPolicy"
                    and d.inputs.get("bucket") == item.name]  # fmt: skip
        if declared:
            wanted = statements(declared[0].inputs["policy"])
            if wanted != live:
                item.attrs["policy_note"] = ("policy read from the local cloud's record of what was declared: "
                                             "moto cannot hold a conditional Deny")  # fmt: skip
                return wanted
        return live

    def _keys(self, keys: set[tuple[str, str]], scope: Scope) -> dict[str, Item]:
        """Each key a bucket names, by the id the bucket gives (an ARN or a key id), as one item named by its ARN."""
        found: dict[str, Item] = {}
        for region, key_id in sorted(keys):
            kms = self.clients("kms", region, scope.role_arn)
            metadata = kms.describe_key(KeyId=key_id)["KeyMetadata"]
            if metadata["Arn"] not in found:
                policy = kms.get_key_policy(KeyId=metadata["KeyId"], PolicyName="default")["Policy"]
                attrs = {"customer_managed": metadata["KeyManager"] == "CUSTOMER", "policy": statements(policy)}
                found[metadata["Arn"]] = Item("kms_key", metadata["Arn"], scope.stack, region, attrs)
            found[key_id] = found[metadata["Arn"]]
        return found

    # --- IAM and CloudFront (global services) ---

    def _roles(self, scope: Scope) -> list[Item]:
        iam = self.clients("iam", scope.region, scope.role_arn)
        items = []
        for page in iam.get_paginator("list_roles").paginate():
            for role in page["Roles"]:
                tags = _tags(iam.list_role_tags(RoleName=role["RoleName"])["Tags"])
                if tags.get(STACK_TAG) != scope.stack:
                    continue
                policy = []
                for name in iam.list_role_policies(RoleName=role["RoleName"])["PolicyNames"]:
                    policy += statements(
                        iam.get_role_policy(RoleName=role["RoleName"], PolicyName=name)["PolicyDocument"]
                    )
                items.append(Item("role", role["RoleName"], scope.stack, scope.region,
                                  {"trust": statements(role["AssumeRolePolicyDocument"]), "policy": policy,
                                   "tags": tags}))  # fmt: skip
        return items

    def _distributions(self, scope: Scope) -> list[Item]:
        cloudfront = self.clients("cloudfront", "us-east-1", scope.role_arn)
        items = []
        for summary in (cloudfront.list_distributions().get("DistributionList") or {}).get("Items", []):
            tags = _tags(cloudfront.list_tags_for_resource(Resource=summary["ARN"])["Tags"].get("Items"))
            if tags.get(STACK_TAG) == scope.stack:
                items.append(Item("distribution", summary["Id"], scope.stack, "us-east-1",
                                  {"viewer_protocol": summary["DefaultCacheBehavior"]["ViewerProtocolPolicy"],
                                   "tags": tags}))  # fmt: skip
        return items


def _decoded(text: str | None) -> str:
    if not text:
        return ""
    try:
        return base64.b64decode(text).decode()
    except (ValueError, UnicodeDecodeError):
        return text


def declared_from_state(stack: str, records) -> list[Declared]:
    """The local cloud's record of one stack (its state's resources) as declared resources."""
    return [Declared(stack, r.region, r.type, r.id, r.inputs, r.state) for r in records]


def as_json(items: list[Item]) -> str:
    return json.dumps([item.__dict__ for item in items], default=str)
