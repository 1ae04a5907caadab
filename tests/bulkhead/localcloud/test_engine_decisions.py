"""The local cloud's decisions without a moto server: what to do with a declared resource, which policy to install."""

from __future__ import annotations

import json

import pytest

from bulkhead.localcloud.engine import choose_action
from bulkhead.localcloud.state import ResourceRecord
from bulkhead.localcloud.translators.storage import enforceable_policy

pytestmark = pytest.mark.unit
SG = "aws:ec2/securityGroup:SecurityGroup"
URN = "urn:pulumi:eu-west-1::bulkhead::aws:ec2/securityGroup:SecurityGroup::db"
INPUTS = {"vpcId": "vpc-1", "ingress": [{"fromPort": 5432, "toPort": 5432}]}


def _old(**changes) -> ResourceRecord:
    fields = {"urn": URN, "type": SG, "id": "sg-1", "region": "eu-west-1", "role_arn": None, "inputs": INPUTS,
              "state": {}} | changes  # fmt: skip
    return ResourceRecord(**fields)


def test_choose_action__nothing_remembered_is_created():
    assert choose_action(None, SG, "eu-west-1", None, INPUTS, updatable=True) == "create"


def test_choose_action__the_same_inputs_in_the_same_place_are_left_alone():
    assert choose_action(_old(), SG, "eu-west-1", None, dict(INPUTS), updatable=False) == "unchanged"


def test_choose_action__changed_inputs_update_in_place_only_where_the_type_can():
    changed = {**INPUTS, "ingress": []}
    assert choose_action(_old(), SG, "eu-west-1", None, changed, updatable=True) == "update"
    assert choose_action(_old(), SG, "eu-west-1", None, changed, updatable=False) == "replace"


@pytest.mark.parametrize(
    "old",
    [
        pytest.param(_old(region="us-east-1"), id="another-region"),
        pytest.param(_old(role_arn="arn:aws:iam::210987654321:role/status"), id="another-account"),
        pytest.param(_old(type="aws:ec2/instance:Instance"), id="another-type"),
    ],
)
def test_choose_action__a_resource_that_moved_is_replaced_even_with_the_same_inputs(old):
    assert choose_action(old, SG, "eu-west-1", None, INPUTS, updatable=True) == "replace"


def test_enforceable_policy__conditional_statements_are_left_out_and_named():
    policy = json.dumps({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": "*",
             "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
            {"Sid": "AllowReplication", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::1:role/r"},
             "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/*"},
            {"Effect": "Deny", "Principal": "*", "Action": "s3:DeleteObject", "Resource": "*",
             "Condition": {"StringNotEquals": {"aws:PrincipalAccount": "1"}}},
        ],
    })  # fmt: skip
    enforced, skipped = enforceable_policy(policy)
    assert skipped == ["DenyInsecureTransport", "statement 2"]
    assert [s.get("Sid") for s in json.loads(enforced)["Statement"]] == ["AllowReplication"]
    assert json.loads(enforced)["Version"] == "2012-10-17"


def test_enforceable_policy__only_conditional_statements_leave_nothing_to_install():
    policy = json.dumps({"Statement": [{"Sid": "TlsOnly", "Effect": "Deny", "Condition": {"Bool": {}}}]})
    assert enforceable_policy(policy) == (None, ["TlsOnly"])
