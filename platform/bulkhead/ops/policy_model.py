"""What `bulkhead check` checks: the platform's resources in one plain shape, whatever they were read from.

The rules (`policy_rules`) see only `Item`s. Two readers make them: `declared` from what the Pulumi
program declares (under mocks, or as the local cloud recorded it) and `policy_live.read` from what is
deployed, through the AWS APIs. So the same rules judge the program and the deployment.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Which bucket is which: the program tags them with their purpose.
PURPOSE_TAG = "bulkhead:purpose"
ARCHIVE = "wal-archive"
ACCESS_LOGS = "access-logs"


@dataclass
class Item:
    """One resource, as the rules see it.

    `attrs` holds plain values (bools, ints, strings, lists of dicts); `notes` says where a value came
    from when it is not the live API's own answer (moto cannot hold a statement, say).
    """

    kind: str
    name: str
    stack: str
    region: str
    attrs: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def tags(self) -> dict[str, str]:
        return self.attrs.get("tags") or {}


@dataclass(frozen=True)
class Declared:
    """One resource as the program declared it: its type token, id, inputs and the provider's answer."""

    stack: str
    region: str
    type: str
    id: str
    inputs: Mapping[str, Any]
    state: Mapping[str, Any]


def statements(policy: Any) -> list[dict]:
    """A policy document's statements, from its JSON text or its parsed form."""
    if not policy:
        return []
    document = json.loads(policy) if isinstance(policy, str) else policy
    found = document.get("Statement", [])
    return [found] if isinstance(found, dict) else list(found)


def as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _tags(inputs: Mapping[str, Any]) -> dict[str, str]:
    tags = inputs.get("tags") or {}
    if isinstance(tags, list):  # Auto Scaling groups give key/value/propagateAtLaunch triples
        return {t["key"]: t["value"] for t in tags}
    return {str(k): str(v) for k, v in tags.items()}


def _user_data(inputs: Mapping[str, Any]) -> str:
    text = inputs.get("userData") or ""
    try:
        return base64.b64decode(text, validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return text


def _ingress_rule(rule: Mapping[str, Any]) -> dict:
    return {
        "protocol": str(rule.get("protocol")),
        "from": int(rule.get("fromPort") or 0),
        "to": int(rule.get("toPort") or 0),
        "cidrs": list(rule.get("cidrBlocks") or []),
    }


def _acl_entry(rule: Mapping[str, Any]) -> dict:
    return {
        "rule": int(rule["ruleNo"]),
        "action": rule["action"],
        "protocol": str(rule["protocol"]).lower(),
        "from": int(rule.get("fromPort") or 0),
        "to": int(rule.get("toPort") or 0),
        "cidr": rule.get("cidrBlock", ""),
    }


def declared(records: Iterable[Declared]) -> list[Item]:
    """The items of a program's declared resources (plan mocks' runs, or the local cloud's state)."""
    records = list(records)
    by_type: dict[str, list[Declared]] = {}
    for record in records:
        by_type.setdefault(record.type, []).append(record)

    def of(type_token: str) -> list[Declared]:
        return by_type.get(type_token, [])

    def on_bucket(type_token: str, bucket_id: str) -> Declared | None:
        return next((r for r in of(type_token) if r.inputs.get("bucket") == bucket_id), None)

    items: list[Item] = []
    keys = {r.state.get("arn"): r for r in of("aws:kms/key:Key")}
    for record in keys.values():
        items.append(Item("kms_key", record.state.get("arn", record.id), record.stack, record.region,
                          {"customer_managed": True, "policy": statements(record.inputs.get("policy")),
                           "tags": _tags(record.inputs)}))  # fmt: skip
    bucket_names = {r.id: r.inputs.get("bucket") or r.id for r in of("aws:s3/bucket:Bucket")}
    for record in of("aws:s3/bucket:Bucket"):
        bucket_id = record.id
        attrs: dict[str, Any] = {"tags": _tags(record.inputs), "arn": record.state.get("arn")}
        versioning = on_bucket("aws:s3/bucketVersioning:BucketVersioning", bucket_id)
        attrs["versioning"] = bool(versioning) and versioning.inputs["versioningConfiguration"]["status"] == "Enabled"
        encryption = on_bucket(
            "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration", bucket_id
        )
        if encryption:
            default = encryption.inputs["rules"][0]["applyServerSideEncryptionByDefault"]
            attrs["sse"] = default["sseAlgorithm"]
            key = default.get("kmsMasterKeyId")
            attrs["kms_key"] = key
            attrs["kms_customer_managed"] = key in keys
        block = on_bucket("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", bucket_id)
        attrs["public_blocked"] = bool(block) and all(
            block.inputs.get(k) for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls",
                                          "restrictPublicBuckets")
        )  # fmt: skip
        policy = on_bucket("aws:s3/bucketPolicy:BucketPolicy", bucket_id)
        attrs["policy"] = statements(policy.inputs["policy"]) if policy else []
        lock = on_bucket("aws:s3/bucketObjectLockConfiguration:BucketObjectLockConfiguration", bucket_id)
        retention = ((lock.inputs.get("rule") or {}).get("defaultRetention") or {}) if lock else {}
        attrs["lock_mode"] = retention.get("mode")
        attrs["lock_days"] = int(retention["days"]) if retention.get("days") else None
        lifecycle = on_bucket("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration", bucket_id)
        rules = [r for r in (lifecycle.inputs["rules"] if lifecycle else []) if r.get("status") == "Enabled"]
        attrs["expiration_days"] = min((int(r["expiration"]["days"]) for r in rules if r.get("expiration")),
                                       default=None)  # fmt: skip
        logging = on_bucket("aws:s3/bucketLogging:BucketLogging", bucket_id)
        target = logging.inputs.get("targetBucket") if logging else None
        attrs["logging_target"] = bucket_names.get(target, target)
        items.append(Item("bucket", record.inputs.get("bucket") or bucket_id, record.stack, record.region, attrs))
    for record in of("aws:ebs/encryptionByDefault:EncryptionByDefault"):
        items.append(Item("ebs_default", record.region, record.stack, record.region,
                          {"enabled": bool(record.inputs.get("enabled", True))}))  # fmt: skip
    vpcs_with_flow_logs = {r.inputs.get("vpcId") for r in of("aws:ec2/flowLog:FlowLog")}
    for record in of("aws:ec2/vpc:Vpc"):
        items.append(Item("vpc", record.id, record.stack, record.region,
                          {"flow_logs": record.id in vpcs_with_flow_logs, "tags": _tags(record.inputs)}))  # fmt: skip
        if not any(r.inputs.get("vpcId") == record.id for r in of("aws:ec2/defaultSecurityGroup:DefaultSecurityGroup")):
            # Not adopted by the program: the VPC's default group keeps AWS's default rules.
            items.append(Item("security_group", f"default of {record.id}", record.stack, record.region,
                              {"default": True, "rule_count": 2, "ingress": []}))  # fmt: skip
        default_acl = record.state.get("defaultNetworkAclId") or record.state.get("default_network_acl_id")
        if not any(r.inputs.get("defaultNetworkAclId") == default_acl
                   for r in of("aws:ec2/defaultNetworkAcl:DefaultNetworkAcl")):  # fmt: skip
            items.append(Item("network_acl", f"default of {record.id}", record.stack, record.region,
                              {"default": True, "tier": "default", "vpc_cidr": record.inputs.get("cidrBlock"),
                               "ingress": [{"rule": 100, "action": "allow", "protocol": "-1", "from": 0, "to": 0,
                                            "cidr": "0.0.0.0/0"}]}))  # fmt: skip
    cidr_of = {r.id: r.inputs.get("cidrBlock") for r in of("aws:ec2/vpc:Vpc")}
    for record in of("aws:ec2/securityGroup:SecurityGroup"):
        ingress = [_ingress_rule(r) for r in record.inputs.get("ingress") or []]
        items.append(Item("security_group", record.inputs.get("name") or record.id, record.stack, record.region,
                          {"default": False, "ingress": ingress, "tags": _tags(record.inputs),
                           "rule_count": len(ingress) + len(record.inputs.get("egress") or [])}))  # fmt: skip
    for record in of("aws:ec2/defaultSecurityGroup:DefaultSecurityGroup"):
        ingress = [_ingress_rule(r) for r in record.inputs.get("ingress") or []]
        items.append(Item("security_group", f"default of {record.inputs.get('vpcId')}", record.stack, record.region,
                          {"default": True, "ingress": ingress,
                           "rule_count": len(ingress) + len(record.inputs.get("egress") or [])}))  # fmt: skip
    for record in of("aws:ec2/networkAcl:NetworkAcl"):
        items.append(Item("network_acl", record.id, record.stack, record.region,
                          {"default": False, "tier": _tags(record.inputs).get("bulkhead:tier", ""),
                           "vpc_cidr": cidr_of.get(record.inputs.get("vpcId")),
                           "ingress": [_acl_entry(r) for r in record.inputs.get("ingress") or []]}))  # fmt: skip
    for record in of("aws:ec2/defaultNetworkAcl:DefaultNetworkAcl"):
        items.append(Item("network_acl", record.inputs["defaultNetworkAclId"], record.stack, record.region,
                          {"default": True, "tier": "default", "vpc_cidr": None,
                           "ingress": [_acl_entry(r) for r in record.inputs.get("ingress") or []]}))  # fmt: skip
    for record in of("aws:ec2/vpcEndpoint:VpcEndpoint"):
        if record.inputs.get("serviceName", "").endswith(".s3"):
            items.append(Item("s3_endpoint", record.id, record.stack, record.region,
                              {"policy": statements(record.inputs.get("policy"))}))  # fmt: skip
    for record in of("aws:ec2/launchTemplate:LaunchTemplate"):
        roots = [m for m in record.inputs.get("blockDeviceMappings") or []]
        tags = {k: v for spec in record.inputs.get("tagSpecifications") or [] for k, v in _tags(spec).items()}
        items.append(Item("launch_template", record.id, record.stack, record.region,
                          {"volumes_encrypted": bool(roots) and all(
                              str((m.get("ebs") or {}).get("encrypted")).lower() == "true" for m in roots),
                           "http_tokens": (record.inputs.get("metadataOptions") or {}).get("httpTokens"),
                           "user_data": _user_data(record.inputs), "tags": tags}))  # fmt: skip
    for record in of("aws:ec2/instance:Instance"):
        root = record.inputs.get("rootBlockDevice") or {}
        items.append(Item("instance", record.inputs.get("tags", {}).get("Name") or record.id, record.stack,
                          record.region,
                          {"volumes_encrypted": str(root.get("encrypted")).lower() == "true",
                           "http_tokens": (record.inputs.get("metadataOptions") or {}).get("httpTokens"),
                           "user_data": _user_data(record.inputs), "tags": _tags(record.inputs)}))  # fmt: skip
    for record in of("aws:autoscaling/group:Group"):
        items.append(Item("host_group", record.id, record.stack, record.region, {"tags": _tags(record.inputs)}))
    policies: dict[str, list[dict]] = {}
    for record in of("aws:iam/rolePolicy:RolePolicy"):
        policies.setdefault(record.inputs["role"], []).extend(statements(record.inputs["policy"]))
    for record in of("aws:iam/role:Role"):
        items.append(Item("role", record.inputs.get("name") or record.id, record.stack, record.region,
                          {"trust": statements(record.inputs["assumeRolePolicy"]),
                           "policy": policies.get(record.id, []), "tags": _tags(record.inputs)}))  # fmt: skip
    for record in of("aws:cloudwatch/metricAlarm:MetricAlarm"):
        items.append(Item("alarm", record.inputs.get("name") or record.id, record.stack, record.region,
                          {"tags": _tags(record.inputs)}))  # fmt: skip
    for record in of("aws:ssm/parameter:Parameter"):
        items.append(Item("parameter", record.inputs["name"], record.stack, record.region,
                          {"type": record.inputs.get("type", "String")}))  # fmt: skip
    for record in of("aws:cloudfront/distribution:Distribution"):
        behaviour = record.inputs.get("defaultCacheBehavior") or {}
        items.append(Item("distribution", record.id, record.stack, record.region,
                          {"viewer_protocol": behaviour.get("viewerProtocolPolicy"),
                           "tags": _tags(record.inputs)}))  # fmt: skip
    return items
