"""Helpers shared by the components that run hosts (routers, dyno cells, PostgreSQL): not components.

They keep the three tiers' IAM and launch settings identical in shape: tags that the `aws_ec2`
inventory groups by, IMDSv2 only, and an instance role that holds exactly the policy given to it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import pulumi
import pulumi_aws as aws

from bulkhead import topology
from bulkhead.ops.rods import RODS, parameter_name

# Instance roles trust EC2 alone. No aws:SourceAccount condition: EC2 does not send that key when it
# assumes a role for an instance profile (IAM's confused-deputy guidance lists the services that do), so
# the condition would only lock every host out of its own role.
EC2_ASSUME_ROLE = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
    }
)


# Debian's AMIs boot from /dev/xvda.
ROOT_DEVICE = "/dev/xvda"
ROOT_VOLUME_GIB = 20


def host_tags(role: str, region: str, az: str | None = None, **extra: str) -> dict[str, str]:
    """The tags the `amazon.aws.aws_ec2` inventory groups hosts by."""
    tags = {"bulkhead:role": role, "bulkhead:region": region, **{f"bulkhead:{k}": v for k, v in extra.items()}}
    if az is not None:
        tags["bulkhead:az"] = az
    return tags


def instance_role(name: str, parent: pulumi.Resource, tags: Mapping[str, str]) -> aws.iam.Role:
    """A role that EC2 instances, and nothing else, may assume."""
    return aws.iam.Role(
        name, assume_role_policy=EC2_ASSUME_ROLE, tags=dict(tags), opts=pulumi.ResourceOptions(parent=parent)
    )


def instance_profile(
    name: str,
    policy: pulumi.Input[str],
    parent: pulumi.Resource,
    tags: Mapping[str, str],
    role: aws.iam.Role | None = None,
) -> aws.iam.InstanceProfile:
    """An instance role holding only `policy`, wrapped in an instance profile.

    Pass `role` when something else (a KMS key policy) must name the role before its policy exists.
    """
    opts = pulumi.ResourceOptions(parent=parent)
    role = role or instance_role(name, parent, tags)
    aws.iam.RolePolicy(name, role=role.id, policy=policy, opts=opts)
    return aws.iam.InstanceProfile(name, role=role.name, tags=dict(tags), opts=opts)


def launch_template(
    name: str,
    *,
    image_id: pulumi.Input[str],
    instance_type: str,
    profile: aws.iam.InstanceProfile,
    security_group_ids: list[pulumi.Input[str]],
    user_data_base64: str,
    tags: Mapping[str, str],
    parent: pulumi.Resource,
) -> aws.ec2.LaunchTemplate:
    """A launch template with IMDSv2 required and the tier's tags on every instance it starts."""
    return aws.ec2.LaunchTemplate(
        name,
        image_id=image_id,
        instance_type=instance_type,
        iam_instance_profile=aws.ec2.LaunchTemplateIamInstanceProfileArgs(arn=profile.arn),
        vpc_security_group_ids=security_group_ids,
        user_data=user_data_base64,
        # The root volume is encrypted by the template itself, not only by the region's EBS default.
        block_device_mappings=[
            aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
                device_name=ROOT_DEVICE,
                ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
                    encrypted="true", volume_type="gp3", volume_size=ROOT_VOLUME_GIB, delete_on_termination="true"
                ),
            )
        ],
        # Tags in the metadata service: a first boot learns its role and AZ from them, with no API call.
        metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(
            http_tokens="required", http_endpoint="enabled", instance_metadata_tags="enabled"
        ),
        tag_specifications=[
            aws.ec2.LaunchTemplateTagSpecificationArgs(resource_type="instance", tags=dict(tags)),
        ],
        tags=dict(tags),
        opts=pulumi.ResourceOptions(parent=parent),
    )


def per_az_group(
    name: str,
    *,
    subnet_id: pulumi.Input[str],
    template: aws.ec2.LaunchTemplate,
    size: int,
    max_size: int,
    tags: Mapping[str, str],
    parent: pulumi.Resource,
    target_group_arns: list[pulumi.Input[str]] | None = None,
    warm_pool: aws.autoscaling.GroupWarmPoolArgs | None = None,
) -> aws.autoscaling.Group:
    """An Auto Scaling group pinned to one AZ's subnet, so losing an AZ loses only its own group."""
    return aws.autoscaling.Group(
        name,
        vpc_zone_identifiers=[subnet_id],
        min_size=size,
        max_size=max_size,
        desired_capacity=size,
        launch_template=aws.autoscaling.GroupLaunchTemplateArgs(id=template.id, version="$Latest"),
        target_group_arns=target_group_arns or [],
        health_check_type="ELB" if target_group_arns else "EC2",
        health_check_grace_period=120,
        warm_pool=warm_pool,
        tags=[aws.autoscaling.GroupTagArgs(key=k, value=v, propagate_at_launch=True) for k, v in tags.items()],
        opts=pulumi.ResourceOptions(parent=parent),
    )


def policy_document(statements: list[dict]) -> pulumi.Output[str]:
    """An IAM policy document from its statements, which may hold outputs such as ARNs."""
    return pulumi.Output.json_dumps({"Version": "2012-10-17", "Statement": statements})


def agent_policy(region: str, metric_namespace: str, extra: list[dict] | None = None) -> pulumi.Output[str]:
    """What every host's agents need: read this region's control rods and heartbeat destination, publish metrics
    in its namespace, and assume the status account's heartbeat role (the one cross-account trust)."""
    return policy_document(
        [
            {
                "Effect": "Allow",
                "Action": ["ssm:GetParameter", "ssm:GetParameters"],
                "Resource": [f"arn:aws:ssm:{region}:*:parameter{parameter_name(region, rod)}" for rod in RODS]
                + [f"arn:aws:ssm:{region}:*:parameter{topology.heartbeat_parameter(region)}"],
            },
            {
                "Effect": "Allow",
                "Action": "cloudwatch:PutMetricData",
                "Resource": "*",
                "Condition": {"StringEquals": {"cloudwatch:namespace": metric_namespace}},
            },
            *(extra or []),
            {
                "Effect": "Allow",
                "Action": "sts:AssumeRole",
                "Resource": f"arn:aws:iam::*:role/{topology.HEARTBEAT_ROLE}",
            },
        ]
    )
