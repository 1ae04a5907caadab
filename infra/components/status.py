"""StatusSite: a static status page in S3 behind CloudFront, deployed through its own provider.

June 2012: the status site fell over under load exactly when customers needed it, and it pulled fonts
and images from the platform itself. This one is static, cached at the edge, lives in another
account and region than the platform, and its page embeds every byte it shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from bulkhead import topology

from .alerting import alert_queue
from .host_helpers import policy_document

# CloudFront publishes its metrics in us-east-1 only.
CLOUDFRONT_METRICS_REGION = "us-east-1"
# AWS's managed "CachingOptimized" cache policy.
CACHING_OPTIMIZED_POLICY = "658327ea-f89d-4fab-a63d-7e88639e58f6"


@dataclass
class StatusSiteArgs:
    """Where the status site lives and what its first page says."""

    region: str
    role_arn: str | None
    bucket_name: str
    page_html: str
    # The platform's account: its instance roles may assume the heartbeat role in the status account.
    platform_account_id: pulumi.Input[str]
    # The regions whose heartbeats the status region watches.
    platform_regions: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)


class StatusSite(pulumi.ComponentResource):
    """The status page, independent of everything else Bulkhead deploys."""

    bucket: pulumi.Output[str]
    distribution_domain: pulumi.Output[str]
    distribution_id: pulumi.Output[str]
    topic_arn: pulumi.Output[str]
    queue_url: pulumi.Output[str]

    def __init__(self, name: str, args: StatusSiteArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("bulkhead:status:StatusSite", name, None, opts)
        provider = aws.Provider(
            name,
            region=args.region,
            assume_roles=[aws.ProviderAssumeRoleArgs(role_arn=args.role_arn)] if args.role_arn else None,
            opts=pulumi.ResourceOptions(parent=self),
        )
        child = pulumi.ResourceOptions(parent=self, provider=provider)
        tags = {**args.tags, "bulkhead:service": "status_site"}
        bucket = aws.s3.Bucket(name, bucket=args.bucket_name, tags=tags, opts=child)
        aws.s3.BucketPublicAccessBlock(
            name,
            bucket=bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=child,
        )
        access = aws.cloudfront.OriginAccessControl(
            name,
            name=args.bucket_name,
            origin_access_control_origin_type="s3",
            signing_behavior="always",
            signing_protocol="sigv4",
            opts=child,
        )
        origin_id = "status-bucket"
        distribution = aws.cloudfront.Distribution(
            name,
            enabled=True,
            default_root_object="index.html",
            price_class="PriceClass_100",
            origins=[
                aws.cloudfront.DistributionOriginArgs(
                    domain_name=bucket.bucket_regional_domain_name,
                    origin_id=origin_id,
                    origin_access_control_id=access.id,
                )
            ],
            default_cache_behavior=aws.cloudfront.DistributionDefaultCacheBehaviorArgs(
                target_origin_id=origin_id,
                viewer_protocol_policy="redirect-to-https",
                allowed_methods=["GET", "HEAD"],
                cached_methods=["GET", "HEAD"],
                cache_policy_id=CACHING_OPTIMIZED_POLICY,
                compress=True,
            ),
            restrictions=aws.cloudfront.DistributionRestrictionsArgs(
                geo_restriction=aws.cloudfront.DistributionRestrictionsGeoRestrictionArgs(restriction_type="none")
            ),
            viewer_certificate=aws.cloudfront.DistributionViewerCertificateArgs(cloudfront_default_certificate=True),
            tags=tags,
            opts=child,
        )
        aws.s3.BucketPolicy(
            name,
            bucket=bucket.id,
            policy=pulumi.Output.json_dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Sid": "CloudFrontReadsOnly",
                            "Effect": "Allow",
                            "Principal": {"Service": "cloudfront.amazonaws.com"},
                            "Action": "s3:GetObject",
                            "Resource": pulumi.Output.concat(bucket.arn, "/*"),
                            "Condition": {"StringEquals": {"AWS:SourceArn": distribution.arn}},
                        }
                    ],
                }
            ),
            opts=child,
        )
        aws.s3.BucketObject(
            f"{name}-index",
            bucket=bucket.id,
            key="index.html",
            content=args.page_html,
            content_type="text/html; charset=utf-8",
            # As `bulkhead status post` writes it: an update is served within seconds.
            cache_control="max-age=5",
            opts=child,
        )
        self._alarm(name, args, distribution, tags)
        self._heartbeat_role(name, args, provider, tags)
        topic = aws.sns.Topic(f"{name}-topic", name=topology.STATUS_TOPIC, kms_master_key_id="alias/aws/sns",
                              tags=tags, opts=child)  # fmt: skip
        queue, heard = alert_queue(f"{name}-alerts", topic, tags, child)
        # After the queue's subscription, so that it hears each alarm's first change of state.
        self._heartbeat_alarms(name, args, topic, tags, pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(
            depends_on=[heard])))  # fmt: skip
        self.bucket = bucket.bucket
        self.distribution_domain = distribution.domain_name
        self.distribution_id = distribution.id
        self.topic_arn = topic.arn
        self.queue_url = queue.url
        self.register_outputs(
            {
                "bucket": bucket.bucket,
                "distributionDomain": distribution.domain_name,
                "distributionId": distribution.id,
                "topicArn": topic.arn,
                "queueUrl": queue.url,
            }
        )

    def _heartbeat_alarms(self, name: str, args: StatusSiteArgs, topic: aws.sns.Topic, tags: dict[str, str],
                          child: pulumi.ResourceOptions) -> None:  # fmt: skip
        """The dead man's switch: one alarm per platform region, here where a lost region cannot take it down.

        June 2012: the pager lived on the platform it watched. Every host counts itself in every 10 s, as a
        high-resolution metric; a whole minute without one count from any host of a region (two periods of
        30 s, or no data at all) is that region gone silent. A high-resolution alarm is evaluated every 30 s,
        so the page comes 60-90 s after the silence begins (a 60 s alarm, evaluated once a minute, could take
        two minutes).
        """
        for region in args.platform_regions:
            aws.cloudwatch.MetricAlarm(
                f"{name}-heartbeat-{region}",
                name=f"bulkhead-{region}-silent",
                namespace=topology.HEARTBEAT_NAMESPACE,
                metric_name=topology.HEARTBEAT_METRIC,
                dimensions={"Region": region},
                statistic="SampleCount",
                period=30,
                evaluation_periods=2,
                threshold=1,
                comparison_operator="LessThanThreshold",
                treat_missing_data="breaching",
                alarm_actions=[topic.arn],
                ok_actions=[topic.arn],
                tags={**tags, "bulkhead:watches": region},
                opts=child,
            )

    def _alarm(
        self, name: str, args: StatusSiteArgs, distribution: aws.cloudfront.Distribution, tags: dict[str, str]
    ) -> None:
        """The site's own health alarm, in the status account: errors served at the edge."""
        provider = aws.Provider(
            f"{name}-metrics",
            region=CLOUDFRONT_METRICS_REGION,
            assume_roles=[aws.ProviderAssumeRoleArgs(role_arn=args.role_arn)] if args.role_arn else None,
            opts=pulumi.ResourceOptions(parent=self),
        )
        child = pulumi.ResourceOptions(parent=self, provider=provider)
        topic = aws.sns.Topic(f"{name}-alarms", kms_master_key_id="alias/aws/sns", tags=tags, opts=child)
        aws.cloudwatch.MetricAlarm(
            f"{name}-5xx",
            name=f"{name}-5xx",
            namespace="AWS/CloudFront",
            metric_name="5xxErrorRate",
            dimensions={"DistributionId": distribution.id, "Region": "Global"},
            statistic="Average",
            period=300,
            evaluation_periods=2,
            threshold=5,
            comparison_operator="GreaterThanThreshold",
            treat_missing_data="notBreaching",
            alarm_actions=[topic.arn],
            ok_actions=[topic.arn],
            tags=tags,
            opts=child,
        )

    def _heartbeat_role(self, name: str, args: StatusSiteArgs, provider: aws.Provider, tags: dict[str, str]) -> None:
        """The one cross-account trust: platform instance roles put heartbeat metrics here, and nothing else."""
        child = pulumi.ResourceOptions(parent=self, provider=provider)
        platform = pulumi.Output.concat("arn:aws:iam::", args.platform_account_id)
        role = aws.iam.Role(
            f"{name}-heartbeat",
            name=topology.HEARTBEAT_ROLE,
            assume_role_policy=policy_document(
                [
                    {
                        "Effect": "Allow",
                        "Principal": {"AWS": pulumi.Output.concat(platform, ":root")},
                        "Action": "sts:AssumeRole",
                        "Condition": {
                            "ArnLike": {"aws:PrincipalArn": pulumi.Output.concat(platform, ":role/bulkhead-*")}
                        },
                    }
                ]
            ),
            tags=tags,
            opts=child,
        )
        aws.iam.RolePolicy(
            f"{name}-heartbeat",
            role=role.id,
            policy=policy_document(
                [
                    {
                        "Effect": "Allow",
                        "Action": "cloudwatch:PutMetricData",
                        "Resource": "*",
                        "Condition": {"StringEquals": {"cloudwatch:namespace": topology.HEARTBEAT_NAMESPACE}},
                    }
                ]
            ),
            opts=child,
        )
