"""The metadata service's protocol (IMDSv2), as EC2 documents it, without any cloud."""

from __future__ import annotations

import json

import pytest

from bulkhead.hosts.metadata import InstanceRecord, Tokens, answer

pytestmark = pytest.mark.unit
NOW = 1_000_000.0


def record(tags_in_metadata: bool = True, role: str | None = "db-role") -> InstanceRecord:
    return InstanceRecord(
        instance_id="i-0123",
        region="eu-west-1",
        az="eu-west-1b",
        private_ip="10.30.144.7",
        instance_type="m6id.xlarge",
        ami_id="ami-1",
        user_data=b"#!/bin/bash\necho hi\n",
        tags={"bulkhead:role": "postgres", "bulkhead:az": "eu-west-1b"},
        tags_in_metadata=tags_in_metadata,
        role_name=role,
        credentials=lambda: {"Code": "Success", "AccessKeyId": "AKIA1"},
    )


def token(tokens: Tokens, ttl: str = "60") -> str:
    reply = answer("PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": ttl}, None, tokens, NOW)
    assert reply.status == 200
    return reply.body.decode()


def get(path: str, instance: InstanceRecord | None, tokens: Tokens, with_token: str | None, now: float = NOW):
    headers = {"X-aws-ec2-metadata-token": with_token} if with_token else {}
    return answer("GET", path, headers, instance, tokens, now)


def test_get__without_a_token_is_refused_as_imdsv2_requires():
    assert get("/latest/meta-data/instance-id", record(), Tokens(), None).status == 401


def test_get__with_a_token_answers_the_instances_own_facts():
    tokens = Tokens()
    held = token(tokens)
    assert get("/latest/meta-data/instance-id", record(), tokens, held).body == b"i-0123"
    assert get("/latest/meta-data/placement/availability-zone", record(), tokens, held).body == b"eu-west-1b"
    assert get("/latest/meta-data/local-ipv4", record(), tokens, held).body == b"10.30.144.7"
    assert get("/latest/user-data", record(), tokens, held).body == b"#!/bin/bash\necho hi\n"


def test_token__expires_after_its_ttl():
    tokens = Tokens()
    held = token(tokens, "60")
    assert get("/latest/meta-data/instance-id", record(), tokens, held, NOW + 59).status == 200
    assert get("/latest/meta-data/instance-id", record(), tokens, held, NOW + 61).status == 401


@pytest.mark.parametrize("ttl", ["0", "21601", "soon", ""])
def test_token__a_ttl_outside_1_to_21600_is_a_bad_request(ttl):
    reply = answer("PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": ttl}, None, Tokens(), NOW)
    assert reply.status == 400


def test_tags__served_only_when_the_instance_enables_metadata_tags():
    tokens = Tokens()
    held = token(tokens)
    assert get("/latest/meta-data/tags/instance", record(), tokens, held).body == b"bulkhead:az\nbulkhead:role"
    assert get("/latest/meta-data/tags/instance/bulkhead:role", record(), tokens, held).body == b"postgres"
    assert get("/latest/meta-data/tags/instance", record(tags_in_metadata=False), tokens, held).status == 404


def test_credentials__the_role_is_listed_then_its_credentials_served():
    tokens = Tokens()
    held = token(tokens)
    # botocore asks with a trailing slash, then for the role it was told.
    assert get("/latest/meta-data/iam/security-credentials/", record(), tokens, held).body == b"db-role"
    reply = get("/latest/meta-data/iam/security-credentials/db-role", record(), tokens, held)
    assert json.loads(reply.body) == {"Code": "Success", "AccessKeyId": "AKIA1"}
    assert get("/latest/meta-data/iam/security-credentials/other", record(), tokens, held).status == 404
    assert get("/latest/meta-data/iam/security-credentials/", record(role=None), tokens, held).status == 404


def test_unknown_address__answers_404_not_another_instances_data():
    tokens = Tokens()
    assert get("/latest/meta-data/instance-id", None, tokens, token(tokens)).status == 404
