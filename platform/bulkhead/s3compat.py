"""What boto3 (and barman-cloud, which uses it) needs to talk to an S3 store other than AWS's.

Newer boto3 sends and checks CRC checksums on every request by default; stores other than AWS, the
local cloud's moto among them, may refuse or mangle those. With a custom endpoint they are sent and
checked only when an operation requires them.
"""

from __future__ import annotations

CHECKSUM_ENVIRONMENT = {
    "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
    "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
}


def environment(endpoint_url: str | None) -> dict[str, str]:
    """Environment for a tool (barman-cloud, the aws CLI) reaching `endpoint_url`; none for AWS itself."""
    return dict(CHECKSUM_ENVIRONMENT) if endpoint_url else {}


def client_settings(endpoint_url: str | None) -> dict[str, str]:
    """The same choice as `botocore.config.Config` keyword arguments, for clients made in-process."""
    return {key.removeprefix("AWS_").lower(): value for key, value in environment(endpoint_url).items()}
