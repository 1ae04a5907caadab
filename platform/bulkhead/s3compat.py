"""What boto3 (and barman-cloud, which uses it) needs to talk to an S3 store other than AWS's.

Uploads always carry a checksum (boto3's CRC32, sent as `x-amz-sdk-checksum-algorithm`): an
object-locked bucket refuses a write with neither that nor Content-MD5, on AWS and in moto alike,
and the archive buckets are object-locked. Responses are checked only when an operation requires
it: stores other than AWS, the local cloud's moto among them, do not return checksums for every
object (multipart uploads), and boto3 would reject those answers.
"""

from __future__ import annotations

CHECKSUM_ENVIRONMENT = {
    "AWS_REQUEST_CHECKSUM_CALCULATION": "when_supported",
    "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
}


def environment(endpoint_url: str | None) -> dict[str, str]:
    """Environment for a tool (barman-cloud, the aws CLI) reaching `endpoint_url`; none for AWS itself."""
    return dict(CHECKSUM_ENVIRONMENT) if endpoint_url else {}


def client_settings(endpoint_url: str | None) -> dict[str, str]:
    """The same choice as `botocore.config.Config` keyword arguments, for clients made in-process."""
    return {key.removeprefix("AWS_").lower(): value for key, value in environment(endpoint_url).items()}
