"""StatusSite: a static status page in S3 behind CloudFront, deployed through its own provider.

June 2012: the status site fell over under load exactly when customers needed it, and it pulled fonts
and images from the platform itself. This one is static, cached at the edge, lives in another
account and region than the platform, and its page embeds every byte it shows.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

# AWS's managed "CachingOptimized" cache policy.
CACHING_OPTIMIZED_POLICY = "658327ea-f89d-4fab-a63d-7e88639e58f6"


@dataclass
class StatusSiteArgs:
    """Where the status site lives and what its first page says."""

    region: str
    role_arn: str | None
    bucket_name: str
    page_html: str


class StatusSite(pulumi.ComponentResource):
    """The status page, independent of everything else Bulkhead deploys."""

    bucket: pulumi.Output[str]
    distribution_domain: pulumi.Output[str]

    def __init__(self, name: str, args: StatusSiteArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("bulkhead:status:StatusSite", name, None, opts)
        provider = aws.Provider(
            name,
            region=args.region,
            assume_roles=[aws.ProviderAssumeRoleArgs(role_arn=args.role_arn)] if args.role_arn else None,
            opts=pulumi.ResourceOptions(parent=self),
        )
        child = pulumi.ResourceOptions(parent=self, provider=provider)
        bucket = aws.s3.Bucket(name, bucket=args.bucket_name, opts=child)
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
            cache_control="max-age=30",
            opts=child,
        )
        self.bucket = bucket.bucket
        self.distribution_domain = distribution.domain_name
        self.register_outputs({"bucket": bucket.bucket, "distributionDomain": distribution.domain_name})
