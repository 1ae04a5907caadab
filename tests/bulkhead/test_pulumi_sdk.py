"""The contract with the Pulumi SDK's internals: an upgrade that moves one fails here, naming the version."""

from __future__ import annotations

import pytest
from pulumi.runtime import rpc

from bulkhead import pulumi_sdk
from bulkhead.errors import BulkheadError

pytestmark = pytest.mark.unit


def test_sdk__every_internal_name_bulkhead_uses_is_still_there():
    missing = pulumi_sdk.missing_internals()
    assert missing == [], (
        f"pulumi {pulumi_sdk.sdk_version()} moved {', '.join(missing)}: adapt bulkhead/pulumi_sdk.py "
        "or pin the SDK in pyproject.toml"
    )


def test_sdk__a_moved_name_is_reported_in_one_line_with_the_version(monkeypatch):
    monkeypatch.setattr(pulumi_sdk, "INTERNALS", (*pulumi_sdk.INTERNALS, ("pulumi.runtime.rpc", "_gone_in_4_0")))
    with pytest.raises(BulkheadError) as failure:
        pulumi_sdk.require()
    message = str(failure.value)
    assert message.startswith(f"pulumi {pulumi_sdk.sdk_version()} lacks pulumi.runtime.rpc._gone_in_4_0, ")
    assert "\n" not in message


def test_sdk__reveal_unwraps_secrets_at_any_depth():
    secret = {rpc._special_sig_key: rpc._special_secret_sig, "value": "hunter2"}
    assert pulumi_sdk.reveal({"a": [secret, {"b": secret}], "c": 1}) == {"a": ["hunter2", {"b": "hunter2"}], "c": 1}
