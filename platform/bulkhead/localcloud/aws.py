"""The boto3 adapter of the local cloud: clients for a region (and an assumed role) against the endpoint.

It owns retries and the translation of "the server is gone" into one clear error; callers get plain
boto3 clients and never build one themselves.
"""

from __future__ import annotations

import threading

import boto3
import botocore.config
import botocore.exceptions

from bulkhead.errors import BulkheadError

# The local cloud takes any credentials; these are the ones every local client and tool uses.
LOCAL_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
_CONFIG = botocore.config.Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=2, read_timeout=60)


class LocalCloudError(BulkheadError):
    """The local cloud cannot do what was asked; the message is one line with the fix."""


def local_environment(region: str = "us-east-1") -> dict[str, str]:
    """The local credentials as environment variables, for processes that reach the local cloud."""
    return {
        "AWS_ACCESS_KEY_ID": LOCAL_CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": LOCAL_CREDENTIALS["aws_secret_access_key"],
        "AWS_DEFAULT_REGION": region,
    }


class LocalAws:
    """boto3 clients against one moto endpoint, cached per (service, region, role)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._clients: dict[tuple[str, str, str | None], object] = {}
        self._credentials: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()

    def client(self, service: str, region: str, role_arn: str | None = None):
        key = (service, region, role_arn)
        with self._lock:
            if key not in self._clients:
                credentials = self._assumed(role_arn) if role_arn else LOCAL_CREDENTIALS
                self._clients[key] = boto3.client(
                    service, endpoint_url=self.endpoint, region_name=region, config=_CONFIG, **credentials
                )
            return self._clients[key]

    def _assumed(self, role_arn: str) -> dict[str, str]:
        # Moto maps an assumed role's credentials to the role's account: the status site really lands
        # in another account, as on AWS.
        if role_arn not in self._credentials:
            sts = boto3.client(
                "sts", endpoint_url=self.endpoint, region_name="us-east-1", config=_CONFIG, **LOCAL_CREDENTIALS
            )
            granted = sts.assume_role(RoleArn=role_arn, RoleSessionName="bulkhead-local")["Credentials"]
            self._credentials[role_arn] = {
                "aws_access_key_id": granted["AccessKeyId"],
                "aws_secret_access_key": granted["SecretAccessKey"],
                "aws_session_token": granted["SessionToken"],
            }
        return self._credentials[role_arn]


def is_unreachable(error: BaseException) -> bool:
    """True when an error means the endpoint itself is gone, not that a request was refused."""
    return isinstance(
        error,
        botocore.exceptions.EndpointConnectionError
        | botocore.exceptions.ConnectionClosedError
        | botocore.exceptions.ReadTimeoutError,
    )
