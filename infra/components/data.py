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

from .host_helpers import ROOT_VOLUME_GIB, agent_policy, host_tags, instance_profile, instance_role, policy_document

POSTGRES_PORT = 5432
PATRONI_PORT = 8008
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
# What a role named in an archive key's policy may do with it, and what the account does as its admin.
KEY_USE = ("kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey")
KEY_ADMINISTRATION = (
    "kms:Create*", "kms:Describe*", "kms:Enable*", "kms:List*", "kms:Put*", "kms:Update*", "kms:Revoke*",
    "kms:Disable*", "kms:Get*", "kms:Delete*", "kms:TagResource", "kms:UntagResource", "kms:ScheduleKeyDeletion",
    "kms:CancelKeyDeletion",
)  # fmt: skip
ACCESS_LOG_DAYS = 365
SECONDS_PER_DAY = 86400


def archive_expiry_days(retention_days: int, base_backup_interval_seconds: int) -> int:
    """When the lifecycle may expire an archived object: a point in time `retention_days` back needs the
    base backup before it, up to one base-backup interval older still."""
    return retention_days + -(-base_backup_interval_seconds // SECONDS_PER_DAY)


def deny_insecure_transport(bucket: aws.s3.Bucket) -> dict:
    """The bucket policy statement that refuses every request not made over TLS."""
    return {
        "Sid": "DenyInsecureTransport",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:*",
        "Resource": [bucket.arn, pulumi.Output.concat(bucket.arn, "/*")],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }


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
    # Who reads and writes the route registry (etcd's client port): the routers and the dyno hosts.
    registry_client_security_group_ids: list[pulumi.Input[str]]
    image_id: pulumi.Input[str]
    instance_type: str
    retention_days: int
    base_backup_interval_seconds: int
    synchronous_commit: bool
    maximum_lag_on_failover: int
    # The account that owns the stack: key policies and trust conditions name it.
    account_id: pulumi.Input[str]
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
        # The roles come first: each archive key's policy names the roles that may use it.
        database_role = instance_role(f"{name}-db", self, args.tags)
        replication_role = self._replication_role(name)
        archive_key = self._key(f"{name}-archive", None, [database_role.arn, replication_role.arn])
        replica_key = self._key(f"{name}-replica", partner, [replication_role.arn])
        archive, archive_versioning = self._secure_bucket(args.archive_bucket, None, archive_key)
        replica, replica_versioning = self._secure_bucket(f"{args.archive_bucket}-replica", partner, replica_key)
        self._replicate(
            name, replication_role, archive, replica, archive_key, replica_key,
            depends_on=[archive_versioning, replica_versioning],
        )  # fmt: skip
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
                # Routers watch, and dyno hosts publish, the route records in etcd.
                aws.ec2.SecurityGroupIngressArgs(
                    protocol="tcp", from_port=ETCD_CLIENT_PORT, to_port=ETCD_CLIENT_PORT,
                    security_groups=args.registry_client_security_group_ids,
                ),
                # Members replicate, rewind and ask each other's Patroni; etcd's peers talk only to each other.
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
        profile = instance_profile(
            f"{name}-db", self._database_policy(archive, archive_key), self, args.tags, role=database_role
        )
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

    def _key(self, name: str, provider: aws.Provider | None, users: list[pulumi.Input[str]]) -> aws.kms.Key:
        """A customer-managed key for one archive bucket; its policy names the roles that may use it."""
        account_root = pulumi.Output.concat("arn:aws:iam::", self._args.account_id, ":root")
        return aws.kms.Key(
            name,
            description=f"Bulkhead WAL archive {name}",
            enable_key_rotation=True,
            deletion_window_in_days=30,
            policy=policy_document(
                [
                    # The account administers the key; without this statement nobody could ever change it.
                    {"Sid": "AccountAdministers", "Effect": "Allow", "Principal": {"AWS": account_root},
                     "Action": list(KEY_ADMINISTRATION), "Resource": "*"},
                    {"Sid": "NamedRolesUseIt", "Effect": "Allow", "Principal": {"AWS": users},
                     "Action": list(KEY_USE), "Resource": "*"},
                    # Operators restore (`bulkhead db restore`, the region-loss runbook) with their own
                    # credentials: they may read what was written, and IAM says which operators those are.
                    {"Sid": "OperatorsRestore", "Effect": "Allow", "Principal": {"AWS": account_root},
                     "Action": ["kms:Decrypt", "kms:DescribeKey"], "Resource": "*"},
                ]
            ),
            tags=self._args.tags,
            opts=pulumi.ResourceOptions(parent=self, provider=provider),
        )  # fmt: skip

    def _secure_bucket(
        self, bucket_name: str, provider: aws.Provider | None, key: aws.kms.Key
    ) -> tuple[aws.s3.Bucket, aws.s3.BucketVersioning]:
        """A private bucket: versioned, KMS-encrypted, TLS-only, object-locked, access-logged, expiring."""
        opts = pulumi.ResourceOptions(parent=self, provider=provider)
        tags = {**self._args.tags, "bulkhead:purpose": "wal-archive"}
        bucket = aws.s3.Bucket(bucket_name, bucket=bucket_name, force_destroy=False, tags=tags, opts=opts)
        versioning = aws.s3.BucketVersioning(
            bucket_name,
            bucket=bucket.id,
            versioning_configuration=aws.s3.BucketVersioningVersioningConfigurationArgs(status="Enabled"),
            opts=opts,
        )
        self._encrypt(bucket_name, bucket, opts, key)
        block = self._block_public_access(bucket_name, bucket, opts)
        aws.s3.BucketPolicy(
            bucket_name,
            bucket=bucket.id,
            policy=policy_document([deny_insecure_transport(bucket)]),
            # S3 rejects a bucket policy while the public access block is being applied.
            opts=pulumi.ResourceOptions(parent=self, provider=provider, depends_on=[block]),
        )
        # Governance-mode retention: no host can delete or overwrite an archived version before it has
        # served its retention; expiry is the lifecycle's job. Enabled on the existing versioned bucket
        # (S3 allows that since 2023), so turning it on never replaces a bucket full of backups.
        aws.s3.BucketObjectLockConfiguration(
            bucket_name,
            bucket=bucket.id,
            object_lock_enabled="Enabled",
            rule=aws.s3.BucketObjectLockConfigurationRuleArgs(
                default_retention=aws.s3.BucketObjectLockConfigurationRuleDefaultRetentionArgs(
                    mode="GOVERNANCE", days=self._args.retention_days
                )
            ),
            opts=pulumi.ResourceOptions(parent=self, provider=provider, depends_on=[versioning]),
        )
        aws.s3.BucketLifecycleConfiguration(
            bucket_name,
            bucket=bucket.id,
            rules=[
                aws.s3.BucketLifecycleConfigurationRuleArgs(
                    id="expire-after-retention",
                    status="Enabled",
                    filter=aws.s3.BucketLifecycleConfigurationRuleFilterArgs(prefix=""),
                    expiration=aws.s3.BucketLifecycleConfigurationRuleExpirationArgs(
                        days=archive_expiry_days(self._args.retention_days, self._args.base_backup_interval_seconds)
                    ),
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
        self._access_logs(bucket_name, bucket, opts)
        return bucket, versioning

    def _encrypt(self, name: str, bucket: aws.s3.Bucket, opts: pulumi.ResourceOptions, key: aws.kms.Key | None) -> None:
        by_default = aws.s3.BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(
            sse_algorithm="aws:kms" if key else "AES256", kms_master_key_id=key.arn if key else None
        )
        aws.s3.BucketServerSideEncryptionConfiguration(
            name,
            bucket=bucket.id,
            rules=[
                aws.s3.BucketServerSideEncryptionConfigurationRuleArgs(
                    apply_server_side_encryption_by_default=by_default, bucket_key_enabled=bool(key)
                )
            ],
            opts=opts,
        )

    def _block_public_access(
        self, name: str, bucket: aws.s3.Bucket, opts: pulumi.ResourceOptions
    ) -> aws.s3.BucketPublicAccessBlock:
        return aws.s3.BucketPublicAccessBlock(
            name,
            bucket=bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=opts,
        )

    def _access_logs(self, bucket_name: str, bucket: aws.s3.Bucket, opts: pulumi.ResourceOptions) -> None:
        """S3 server access logs of an archive bucket, into a log bucket of its own in the same region."""
        log_name = f"{bucket_name}-logs"
        tags = {**self._args.tags, "bulkhead:purpose": "access-logs"}
        logs = aws.s3.Bucket(log_name, bucket=log_name, force_destroy=False, tags=tags, opts=opts)
        # S3 delivers access logs only into SSE-S3 buckets, not SSE-KMS ones.
        self._encrypt(log_name, logs, opts, None)
        block = self._block_public_access(log_name, logs, opts)
        delivery = aws.s3.BucketPolicy(
            log_name,
            bucket=logs.id,
            policy=policy_document(
                [
                    deny_insecure_transport(logs),
                    {
                        "Sid": "S3LogsDelivery",
                        "Effect": "Allow",
                        "Principal": {"Service": "logging.s3.amazonaws.com"},
                        "Action": "s3:PutObject",
                        "Resource": pulumi.Output.concat(logs.arn, "/*"),
                        "Condition": {
                            "StringEquals": {"aws:SourceAccount": self._args.account_id},
                            "ArnLike": {"aws:SourceArn": bucket.arn},
                        },
                    },
                ]
            ),
            opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[block])),
        )
        aws.s3.BucketLifecycleConfiguration(
            log_name,
            bucket=logs.id,
            rules=[
                aws.s3.BucketLifecycleConfigurationRuleArgs(
                    id="expire-logs",
                    status="Enabled",
                    filter=aws.s3.BucketLifecycleConfigurationRuleFilterArgs(prefix=""),
                    expiration=aws.s3.BucketLifecycleConfigurationRuleExpirationArgs(days=ACCESS_LOG_DAYS),
                )
            ],
            opts=opts,
        )
        aws.s3.BucketLogging(
            bucket_name,
            bucket=bucket.id,
            target_bucket=logs.id,
            target_prefix=f"{bucket_name}/",
            # S3 refuses a logging target that does not yet let its log delivery write.
            opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[delivery])),
        )

    def _replication_role(self, name: str) -> aws.iam.Role:
        return aws.iam.Role(
            f"{name}-replication",
            assume_role_policy=policy_document(
                [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "s3.amazonaws.com"},
                        "Action": "sts:AssumeRole",
                        # S3 sends the source account: no other account's bucket can borrow this role.
                        "Condition": {"StringEquals": {"aws:SourceAccount": self._args.account_id}},
                    }
                ]
            ),
            tags=self._args.tags,
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _replicate(
        self,
        name: str,
        role: aws.iam.Role,
        source: aws.s3.Bucket,
        destination: aws.s3.Bucket,
        source_key: aws.kms.Key,
        destination_key: aws.kms.Key,
        depends_on: list[pulumi.Resource],
    ) -> None:
        child = pulumi.ResourceOptions(parent=self)
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
                    {"Effect": "Allow", "Action": ["s3:ReplicateObject", "s3:ReplicateTags"],
                     "Resource": [pulumi.Output.concat(destination.arn, "/*")]},
                    {"Effect": "Allow", "Action": "kms:Decrypt", "Resource": [source_key.arn]},
                    {"Effect": "Allow", "Action": ["kms:Encrypt", "kms:GenerateDataKey"],
                     "Resource": [destination_key.arn]},
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
                    source_selection_criteria=aws.s3.BucketReplicationConfigRuleSourceSelectionCriteriaArgs(
                        sse_kms_encrypted_objects=aws.s3.BucketReplicationConfigRuleSourceSelectionCriteriaSseKmsEncryptedObjectsArgs(
                            status="Enabled"
                        )
                    ),
                    destination=aws.s3.BucketReplicationConfigRuleDestinationArgs(
                        bucket=destination.arn,
                        storage_class="STANDARD_IA",
                        # The partner-region copy is encrypted with the partner region's own key.
                        encryption_configuration=aws.s3.BucketReplicationConfigRuleDestinationEncryptionConfigurationArgs(
                            replica_kms_key_id=destination_key.arn
                        ),
                    ),
                )
            ],
            # Replication can only be configured once both buckets are versioned.
            opts=pulumi.ResourceOptions(parent=self, depends_on=depends_on),
        )

    def _database_policy(self, archive: aws.s3.Bucket, key: aws.kms.Key) -> pulumi.Output[str]:
        server = self._args.server
        return agent_policy(
            self._args.region,
            "Bulkhead/Postgres",
            [
                # Write and read its own prefix. No DeleteObject, DeleteObjectVersion or
                # BypassGovernanceRetention: a host cannot destroy a backup, and a re-upload after a crash
                # makes a new version. Retention is the lifecycle's, never barman's delete.
                {
                    "Effect": "Allow",
                    "Action": ["s3:PutObject", "s3:GetObject", "s3:AbortMultipartUpload"],
                    "Resource": [pulumi.Output.concat(archive.arn, f"/{server}/*")],
                },
                {
                    "Effect": "Allow",
                    "Action": "s3:ListBucket",
                    "Resource": [archive.arn],
                    "Condition": {"StringLike": {"s3:prefix": [server, f"{server}/*"]}},
                },
                {"Effect": "Allow", "Action": list(KEY_USE), "Resource": [key.arn]},
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
            root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(
                encrypted=True, volume_type="gp3", volume_size=ROOT_VOLUME_GIB
            ),
            metadata_options=aws.ec2.InstanceMetadataOptionsArgs(
                http_tokens="required", http_endpoint="enabled", instance_metadata_tags="enabled"
            ),
            tags={
                **args.tags,
                **host_tags("postgres", args.region, az, postgres=initial_role, etcd="member"),
                "Name": name,
            },
            # The instance reads the bucket name from its facts; it must exist before the first archive. Its
            # address is fixed, and only one instance can hold it: a replacement removes the old one first
            # (Patroni rebuilds the new member from the archive).
            opts=pulumi.ResourceOptions(parent=self, depends_on=[archive], delete_before_replace=True),
        )
