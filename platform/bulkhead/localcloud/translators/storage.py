"""S3: buckets and their configuration, and the objects the program uploads."""

from __future__ import annotations

import json
import logging

from bulkhead.localcloud.translators import Inputs, State, Target, aws_tags, register

log = logging.getLogger("bulkhead.local")


def _bucket(target: Target, inputs: Inputs) -> tuple[str, State]:
    s3 = target.client("s3")
    name = inputs.get("bucket") or target.physical_name(63).lower()
    location = (
        {} if target.region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": target.region}}
    )
    s3.create_bucket(Bucket=name, **location)
    if inputs.get("tags"):
        s3.put_bucket_tagging(Bucket=name, Tagging={"TagSet": aws_tags(inputs)})
    return name, {
        **inputs,
        "bucket": name,
        "arn": f"arn:aws:s3:::{name}",
        "region": target.region,
        "bucketRegionalDomainName": f"{name}.s3.{target.region}.amazonaws.com",
    }


register("aws:s3/bucket:Bucket", _bucket, lambda t, i, s: t.client("s3").delete_bucket(Bucket=i))


def _versioning(target: Target, inputs: Inputs) -> tuple[str, State]:
    status = inputs["versioningConfiguration"]["status"]
    target.client("s3").put_bucket_versioning(Bucket=inputs["bucket"], VersioningConfiguration={"Status": status})
    return inputs["bucket"], dict(inputs)


register(
    "aws:s3/bucketVersioning:BucketVersioning",
    _versioning,
    lambda t, i, s: t.client("s3").put_bucket_versioning(Bucket=i, VersioningConfiguration={"Status": "Suspended"}),
)


def _encryption(target: Target, inputs: Inputs) -> tuple[str, State]:
    rules = [
        {
            "ApplyServerSideEncryptionByDefault": {
                "SSEAlgorithm": rule["applyServerSideEncryptionByDefault"]["sseAlgorithm"],
                **(
                    {"KMSMasterKeyID": rule["applyServerSideEncryptionByDefault"]["kmsMasterKeyId"]}
                    if rule["applyServerSideEncryptionByDefault"].get("kmsMasterKeyId")
                    else {}
                ),
            },
            "BucketKeyEnabled": bool(rule.get("bucketKeyEnabled")),
        }
        for rule in inputs["rules"]
    ]
    target.client("s3").put_bucket_encryption(
        Bucket=inputs["bucket"], ServerSideEncryptionConfiguration={"Rules": rules}
    )
    return inputs["bucket"], dict(inputs)


register(
    "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
    _encryption,
    lambda t, i, s: t.client("s3").delete_bucket_encryption(Bucket=i),
)


def _public_access_block(target: Target, inputs: Inputs) -> tuple[str, State]:
    configuration = {
        key[0].upper() + key[1:]: bool(inputs.get(key))
        for key in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
    }
    target.client("s3").put_public_access_block(Bucket=inputs["bucket"], PublicAccessBlockConfiguration=configuration)
    return inputs["bucket"], dict(inputs)


register(
    "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",
    _public_access_block,
    lambda t, i, s: t.client("s3").delete_public_access_block(Bucket=i),
)


def enforceable_policy(policy: str) -> tuple[str | None, list[str]]:
    """The statements moto can evaluate faithfully, and the Sids of those it cannot.

    moto checks bucket policies on object requests but ignores their Condition blocks (its IAM code
    says so), so a conditional Deny, such as "deny unless TLS", would deny every request. Such
    statements are left out of what moto enforces; `bulkhead check --live` reads them from the local
    cloud's record of what was declared instead. A conditional Allow is kept: ignoring its condition
    only widens what a service principal may do, and S3 itself reads such statements (the log
    delivery grant a logging target needs).
    """
    document = json.loads(policy)

    def unenforceable(statement: dict) -> bool:
        return "Condition" in statement and statement.get("Effect") == "Deny"

    kept = [st for st in document.get("Statement", []) if not unenforceable(st)]
    skipped = [
        st.get("Sid", f"statement {i}") for i, st in enumerate(document.get("Statement", [])) if unenforceable(st)
    ]
    return (json.dumps({**document, "Statement": kept}) if kept else None), skipped


def _policy(target: Target, inputs: Inputs) -> tuple[str, State]:
    enforced, skipped = enforceable_policy(inputs["policy"])
    if skipped:
        log.info(
            "bucket policy statements not enforced by the local cloud (moto ignores conditions)",
            extra={"bucket": inputs["bucket"], "statements": skipped},
        )
    if enforced:
        target.client("s3").put_bucket_policy(Bucket=inputs["bucket"], Policy=enforced)
    # The state keeps the policy as declared: that is what a real deployment enforces.
    return inputs["bucket"], {**inputs, "enforcedLocally": enforced or ""}


register(
    "aws:s3/bucketPolicy:BucketPolicy",
    _policy,
    lambda t, i, s: t.client("s3").delete_bucket_policy(Bucket=i) if s.get("enforcedLocally") else None,
)


def _prefix(rule: Inputs) -> str:
    return (rule.get("filter") or {}).get("prefix", "")


def _lifecycle(target: Target, inputs: Inputs) -> tuple[str, State]:
    rules = []
    for rule in inputs["rules"]:
        converted = {
            "ID": rule["id"],
            "Status": rule["status"],
            "Filter": {"Prefix": _prefix(rule)},
        }
        if rule.get("expiration"):
            converted["Expiration"] = {"Days": int(rule["expiration"]["days"])}
        if rule.get("noncurrentVersionExpiration"):
            converted["NoncurrentVersionExpiration"] = {
                "NoncurrentDays": int(rule["noncurrentVersionExpiration"]["noncurrentDays"])
            }
        if rule.get("abortIncompleteMultipartUpload"):
            converted["AbortIncompleteMultipartUpload"] = {
                "DaysAfterInitiation": int(rule["abortIncompleteMultipartUpload"]["daysAfterInitiation"])
            }
        rules.append(converted)
    target.client("s3").put_bucket_lifecycle_configuration(
        Bucket=inputs["bucket"], LifecycleConfiguration={"Rules": rules}
    )
    return inputs["bucket"], dict(inputs)


register(
    "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration",
    _lifecycle,
    lambda t, i, s: t.client("s3").delete_bucket_lifecycle(Bucket=i),
)


def _destination(destination: Inputs) -> dict:
    converted = {"Bucket": destination["bucket"]}
    if destination.get("storageClass"):
        converted["StorageClass"] = destination["storageClass"]
    key = (destination.get("encryptionConfiguration") or {}).get("replicaKmsKeyId")
    if key:
        converted["EncryptionConfiguration"] = {"ReplicaKmsKeyID": key}
    return converted


def _replication(target: Target, inputs: Inputs) -> tuple[str, State]:
    rules = [
        {
            "ID": rule["id"],
            "Status": rule["status"],
            "Priority": index + 1,
            "Filter": {"Prefix": _prefix(rule)},
            "DeleteMarkerReplication": {
                "Status": (rule.get("deleteMarkerReplication") or {}).get("status", "Disabled")
            },
            "Destination": _destination(rule["destination"]),
            **(
                {"SourceSelectionCriteria": {"SseKmsEncryptedObjects": {"Status": "Enabled"}}}
                if ((rule.get("sourceSelectionCriteria") or {}).get("sseKmsEncryptedObjects") or {}).get("status")
                == "Enabled"
                else {}
            ),
        }
        for index, rule in enumerate(inputs["rules"])
    ]
    target.client("s3").put_bucket_replication(
        Bucket=inputs["bucket"], ReplicationConfiguration={"Role": inputs["role"], "Rules": rules}
    )
    return inputs["bucket"], dict(inputs)


register(
    "aws:s3/bucketReplicationConfig:BucketReplicationConfig",
    _replication,
    lambda t, i, s: t.client("s3").delete_bucket_replication(Bucket=i),
)


def _object_lock(target: Target, inputs: Inputs) -> tuple[str, State]:
    configuration: dict = {"ObjectLockEnabled": inputs.get("objectLockEnabled", "Enabled")}
    retention = (inputs.get("rule") or {}).get("defaultRetention")
    if retention:
        configuration["Rule"] = {
            "DefaultRetention": {
                "Mode": retention["mode"],
                **({"Days": int(retention["days"])} if retention.get("days") else {"Years": int(retention["years"])}),
            }
        }
    target.client("s3").put_object_lock_configuration(Bucket=inputs["bucket"], ObjectLockConfiguration=configuration)
    return inputs["bucket"], dict(inputs)


def _unlock(target: Target, bucket: str, state: State) -> None:
    # As on AWS, a bucket's object lock cannot be turned off: only its default retention goes.
    target.client("s3").put_object_lock_configuration(
        Bucket=bucket, ObjectLockConfiguration={"ObjectLockEnabled": "Enabled"}
    )


register("aws:s3/bucketObjectLockConfiguration:BucketObjectLockConfiguration", _object_lock, _unlock)


def _logging(target: Target, inputs: Inputs) -> tuple[str, State]:
    target.client("s3").put_bucket_logging(
        Bucket=inputs["bucket"],
        BucketLoggingStatus={
            "LoggingEnabled": {"TargetBucket": inputs["targetBucket"], "TargetPrefix": inputs.get("targetPrefix", "")}
        },
    )
    return inputs["bucket"], dict(inputs)


register(
    "aws:s3/bucketLogging:BucketLogging",
    _logging,
    lambda t, i, s: t.client("s3").put_bucket_logging(Bucket=i, BucketLoggingStatus={}),
)


def _object(target: Target, inputs: Inputs) -> tuple[str, State]:
    extra = {}
    for key, argument in (("contentType", "ContentType"), ("cacheControl", "CacheControl")):
        if inputs.get(key):
            extra[argument] = inputs[key]
    result = target.client("s3").put_object(
        Bucket=inputs["bucket"], Key=inputs["key"], Body=(inputs.get("content") or "").encode(), **extra
    )
    return inputs["key"], {**inputs, "etag": result["ETag"].strip('"'), "versionId": result.get("VersionId", "")}


register(
    "aws:s3/bucketObject:BucketObject",
    _object,
    lambda t, i, s: t.client("s3").delete_object(Bucket=s["bucket"], Key=i),
)
