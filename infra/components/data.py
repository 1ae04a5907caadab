"""Postgres: one Patroni-managed member per AZ, each beside an etcd member, and the WAL archive they write.

Patroni elects the leader through etcd and fences the old one with the leader key's TTL; Bulkhead only
configures it. etcd runs on the database hosts themselves (one member per AZ): losing an AZ then loses
one etcd member and one PostgreSQL member together, which a three-member quorum survives, and no tier
of small instances exists only to hold a few keys. The members' addresses are fixed (from
`bulkhead.topology`), so that each etcd member can name its peers before any instance exists.

The archive bucket is versioned, encrypted, TLS-only and private, and S3 replication copies it to a
bucket in the partner region (April 2011: one region's storage hung for days). The database hosts'
role may write only its own server prefix, so a compromised host cannot destroy another's backups.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from bulkhead import bootstrap, parameters

from .host_helpers import agent_policy, host_tags, instance_profile, policy_document

POSTGRES_PORT = 5432
PATRONI_PORT = 8008
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380


@dataclass
class PostgresArgs:
    """Where the two database hosts go, who may connect, and where the archive lives."""

    region: str
    partner_region: str
    server: str
    archive_bucket: str
    vpc_id: pulumi.Input[str]
    vpc_cidr: str
    # AZ -> the member's fixed private address; the first AZ's member initialises the cluster.
    members: dict[str, str]
    private_subnet_ids: dict[str, pulumi.Input[str]]
    client_security_group_ids: list[pulumi.Input[str]]
    image_id: pulumi.Input[str]
    instance_type: str
    retention_days: int
    base_backup_interval_seconds: int
    synchronous_commit: bool
    maximum_lag_on_failover: int
    ansible_repo: str
    ansible_ref: str
    tags: dict[str, str] = field(default_factory=dict)


class Postgres(pulumi.ComponentResource):
    """The database tier of one region and its cross-region archive."""

    archive_bucket: pulumi.Output[str]
    replica_bucket: pulumi.Output[str]
    member_private_ips: pulumi.Output[list[str]]

    def __init__(self, name: str, args: PostgresArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("bulkhead:data:Postgres", name, None, opts)
        self._args = args
        partner = aws.Provider(f"{name}-partner", region=args.partner_region, opts=pulumi.ResourceOptions(parent=self))
        archive, archive_versioning = self._secure_bucket(args.archive_bucket, None)
        replica, replica_versioning = self._secure_bucket(f"{args.archive_bucket}-replica", partner)
        self._replicate(name, archive, replica, depends_on=[archive_versioning, replica_versioning])
        group = aws.ec2.SecurityGroup(
            name,
            vpc_id=args.vpc_id,
            description="Bulkhead PostgreSQL: clients, Patroni's health checks, replication and etcd",
            ingress=[
                # Dyno hosts connect to PostgreSQL, and their local HAProxy asks Patroni who leads.
                *(
                    aws.ec2.SecurityGroupIngressArgs(
                        protocol="tcp", from_port=port, to_port=port, security_groups=args.client_security_group_ids
                    )
                    for port in (POSTGRES_PORT, PATRONI_PORT)
                ),
                # Members replicate, rewind and ask each other's Patroni; etcd members talk only to each other.
                *(
                    aws.ec2.SecurityGroupIngressArgs(protocol="tcp", from_port=low, to_port=high, self=True)
                    for low, high in ((POSTGRES_PORT, POSTGRES_PORT), (PATRONI_PORT, PATRONI_PORT),
                                      (ETCD_CLIENT_PORT, ETCD_PEER_PORT))
                ),
            ],
            egress=[aws.ec2.SecurityGroupEgressArgs(protocol="-1", from_port=0, to_port=0, cidr_blocks=["0.0.0.0/0"])],
            tags=args.tags,
            opts=pulumi.ResourceOptions(parent=self),
        )  # fmt: skip
        profile = instance_profile(f"{name}-db", self._database_policy(archive), self, args.tags)
        hosts = [
            self._host(f"{name}-pg-{az}", "primary" if i == 0 else "standby", az, group, profile, archive)
            for i, az in enumerate(args.members)
        ]
        self.archive_bucket = archive.bucket
        self.replica_bucket = replica.bucket
        self.member_private_ips = pulumi.Output.all(*(host.private_ip for host in hosts))
        self.register_outputs(
            {
                "archiveBucket": archive.bucket,
                "replicaBucket": replica.bucket,
                "memberPrivateIps": self.member_private_ips,
            }
        )

    def _secure_bucket(
        self, bucket_name: str, provider: aws.Provider | None
    ) -> tuple[aws.s3.Bucket, aws.s3.BucketVersioning]:
        """A private bucket: versioned, encrypted at rest, TLS-only, old versions expired."""
        opts = pulumi.ResourceOptions(parent=self, provider=provider)
        tags = self._args.tags
        bucket = aws.s3.Bucket(bucket_name, bucket=bucket_name, force_destroy=False, tags=tags, opts=opts)
        versioning = aws.s3.BucketVersioning(
            bucket_name,
            bucket=bucket.id,
            versioning_configuration=aws.s3.BucketVersioningVersioningConfigurationArgs(status="Enabled"),
            opts=opts,
        )
        aws.s3.BucketServerSideEncryptionConfiguration(
            bucket_name,
            bucket=bucket.id,
            rules=[
                aws.s3.BucketServerSideEncryptionConfigurationRuleArgs(
                    apply_server_side_encryption_by_default=aws.s3.BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(
                        sse_algorithm="AES256"
                    ),
                )
            ],
            opts=opts,
        )
        block = aws.s3.BucketPublicAccessBlock(
            bucket_name,
            bucket=bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=opts,
        )
        aws.s3.BucketPolicy(
            bucket_name,
            bucket=bucket.id,
            policy=policy_document(
                [
                    {
                        "Sid": "DenyInsecureTransport",
                        "Effect": "Deny",
                        "Principal": "*",
                        "Action": "s3:*",
                        "Resource": [bucket.arn, pulumi.Output.concat(bucket.arn, "/*")],
                        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                    }
                ]
            ),
            # S3 rejects a bucket policy while the public access block is being applied.
            opts=pulumi.ResourceOptions(parent=self, provider=provider, depends_on=[block]),
        )
        aws.s3.BucketLifecycleConfiguration(
            bucket_name,
            bucket=bucket.id,
            rules=[
                aws.s3.BucketLifecycleConfigurationRuleArgs(
                    id="expire-old-versions",
                    status="Enabled",
                    filter=aws.s3.BucketLifecycleConfigurationRuleFilterArgs(prefix=""),
                    noncurrent_version_expiration=aws.s3.BucketLifecycleConfigurationRuleNoncurrentVersionExpirationArgs(
                        noncurrent_days=self._args.retention_days
                    ),
                    abort_incomplete_multipart_upload=aws.s3.BucketLifecycleConfigurationRuleAbortIncompleteMultipartUploadArgs(
                        days_after_initiation=7
                    ),
                )
            ],
            # Lifecycle rules on noncurrent versions need versioning in place first.
            opts=pulumi.ResourceOptions(parent=self, provider=provider, depends_on=[versioning]),
        )
        return bucket, versioning

    def _replicate(
        self, name: str, source: aws.s3.Bucket, destination: aws.s3.Bucket, depends_on: list[pulumi.Resource]
    ) -> None:
        child = pulumi.ResourceOptions(parent=self)
        role = aws.iam.Role(
            f"{name}-replication",
            assume_role_policy=policy_document(
                [{"Effect": "Allow", "Principal": {"Service": "s3.amazonaws.com"}, "Action": "sts:AssumeRole"}]
            ),
            tags=self._args.tags,
            opts=child,
        )
        aws.iam.RolePolicy(
            f"{name}-replication",
            role=role.id,
            policy=policy_document(
                [
                    {"Effect": "Allow", "Action": ["s3:GetReplicationConfiguration", "s3:ListBucket"],
                     "Resource": [source.arn]},
                    {"Effect": "Allow",
                     "Action": ["s3:GetObjectVersionForReplication", "s3:GetObjectVersionAcl",
                                "s3:GetObjectVersionTagging"],
                     "Resource": [pulumi.Output.concat(source.arn, "/*")]},
                    {"Effect": "Allow", "Action": ["s3:ReplicateObject", "s3:ReplicateDelete", "s3:ReplicateTags"],
                     "Resource": [pulumi.Output.concat(destination.arn, "/*")]},
                ]
            ),
            opts=child,
        )  # fmt: skip
        aws.s3.BucketReplicationConfig(
            f"{name}-replication",
            bucket=source.id,
            role=role.arn,
            rules=[
                aws.s3.BucketReplicationConfigRuleArgs(
                    id="partner-region",
                    status="Enabled",
                    filter=aws.s3.BucketReplicationConfigRuleFilterArgs(prefix=""),
                    delete_marker_replication=aws.s3.BucketReplicationConfigRuleDeleteMarkerReplicationArgs(
                        status="Disabled"
                    ),
                    destination=aws.s3.BucketReplicationConfigRuleDestinationArgs(
                        bucket=destination.arn, storage_class="STANDARD_IA"
                    ),
                )
            ],
            # Replication can only be configured once both buckets are versioned.
            opts=pulumi.ResourceOptions(parent=self, depends_on=depends_on),
        )

    def _database_policy(self, archive: aws.s3.Bucket) -> pulumi.Output[str]:
        server = self._args.server
        return agent_policy(
            self._args.region,
            "Bulkhead/Postgres",
            [
                {
                    "Effect": "Allow",
                    "Action": ["s3:PutObject", "s3:GetObject", "s3:DeleteObject"],
                    "Resource": [pulumi.Output.concat(archive.arn, f"/{server}/*")],
                },
                {
                    "Effect": "Allow",
                    "Action": "s3:ListBucket",
                    "Resource": [archive.arn],
                    "Condition": {"StringLike": {"s3:prefix": [server, f"{server}/*"]}},
                },
                # The first member publishes its address and the cluster's passwords; the others read them.
                {
                    "Effect": "Allow",
                    "Action": ["ssm:GetParameter", "ssm:PutParameter"],
                    "Resource": [
                        parameters.arn(self._args.region, parameters.database_path(self._args.region, server))
                    ],
                },
            ],
        )

    def _host(
        self,
        name: str,
        initial_role: str,
        az: str,
        group: aws.ec2.SecurityGroup,
        profile: aws.iam.InstanceProfile,
        archive: aws.s3.Bucket,
    ) -> aws.ec2.Instance:
        args = self._args
        facts = {
            "bulkhead_region": args.region,
            # Which member initialises the cluster ("primary") and which wait for it; Patroni decides who leads.
            "postgres_replication_role": initial_role,
            "postgres_server_name": args.server,
            "postgres_archive_bucket": args.archive_bucket,
            "postgres_allowed_networks": [args.vpc_cidr],
            "postgres_base_backup_interval": args.base_backup_interval_seconds,
            "postgres_members": list(args.members.values()),
            "postgres_synchronous_mode": args.synchronous_commit,
            "postgres_maximum_lag_on_failover": args.maximum_lag_on_failover,
        }
        return aws.ec2.Instance(
            name,
            ami=args.image_id,
            instance_type=args.instance_type,
            subnet_id=args.private_subnet_ids[az],
            availability_zone=az,
            private_ip=args.members[az],
            vpc_security_group_ids=[group.id],
            iam_instance_profile=profile.name,
            user_data=bootstrap.user_data("postgres", facts, args.ansible_repo, args.ansible_ref),
            metadata_options=aws.ec2.InstanceMetadataOptionsArgs(
                http_tokens="required", http_endpoint="enabled", instance_metadata_tags="enabled"
            ),
            tags={**host_tags("postgres", args.region, az, postgres=initial_role), "Name": name},
            # The instance reads the bucket name from its facts; it must exist before the first archive. Its
            # address is fixed, and only one instance can hold it: a replacement removes the old one first
            # (Patroni rebuilds the new member from the archive).
            opts=pulumi.ResourceOptions(parent=self, depends_on=[archive], delete_before_replace=True),
        )
