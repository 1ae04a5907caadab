"""Each bad config stops the program with one line naming the key and the fix, before any resource."""

from __future__ import annotations

from typing import Any

import pytest

from bulkhead import topology
from bulkhead.errors import EXIT_USAGE
from bulkhead.plan import PlanMocks
from bulkhead.stack_runner import evaluate_stack
from bulkhead.topology import ConfigError

pytestmark = pytest.mark.unit


class CountingMocks(PlanMocks):
    """Counts what the program declares or looks up; a config error must leave the count at zero."""

    def __init__(self) -> None:
        super().__init__("us-east-1")
        self.declared: list[str] = []

    def new_resource(self, args):
        self.declared.append(args.typ)
        return super().new_resource(args)

    def call(self, args):
        self.declared.append(args.token)
        return super().call(args)


def _no_references(name: str) -> dict:
    raise AssertionError(f"a bad config must fail before reading {name}")


def _evaluate_with(project_dir, stack: str, **changes: Any) -> tuple[ConfigError, CountingMocks]:
    config = topology.read_stack_config(project_dir, stack)
    for key, value in changes.items():
        key = key.replace("__", ":")
        if value is None:
            config.pop(key)
        else:
            config[key] = value
    mocks = CountingMocks()
    with pytest.raises(ConfigError) as failure:
        evaluate_stack(stack, mocks, _no_references, project_dir, config=config)
    return failure.value, mocks


@pytest.mark.parametrize(
    ("stack", "changes", "expected"),
    [
        pytest.param(
            "us-east-1", {"bulkhead__vpcCidr": "10.20.128.0/17"},
            "bulkhead:vpcCidr 10.20.128.0/17 overlaps 10.20.0.0/16 of stack us-west-2", id="overlapping-cidrs",
        ),
        pytest.param(
            "us-east-1", {"aws__region": "us-east-9"}, "aws:region is 'us-east-9', not a known AWS region",
            id="unknown-region",
        ),
        pytest.param(
            "us-east-1", {"bulkhead__partnerRegion": "us-mars-1"},
            "bulkhead:partnerRegion is 'us-mars-1', not a known AWS region", id="unknown-partner-region",
        ),
        pytest.param(
            "us-east-1", {"bulkhead__partnerRegion": "us-east-1"},
            "bulkhead:partnerRegion is us-east-1, the stack's own region", id="partner-is-own-region",
        ),
        pytest.param(
            "us-west-2", {"bulkhead__availabilityZones": ["us-west-2a", "us-west-2b"]},
            "bulkhead:availabilityZones lists 2 distinct AZs; list at least 3", id="fewer-than-three-azs",
        ),
        pytest.param(
            "us-west-2", {"bulkhead__availabilityZones": ["us-west-2a", "us-west-2b", "us-east-1c"]},
            "bulkhead:availabilityZones has 'us-east-1c', not an AZ of us-west-2", id="az-of-another-region",
        ),
        pytest.param(
            "eu-west-1", {"bulkhead__vpcCidr": None},
            "bulkhead:vpcCidr is missing; set it with `pulumi config set bulkhead:vpcCidr VALUE -s eu-west-1`",
            id="missing-key",
        ),
        pytest.param(
            "eu-west-1", {"bulkhead__cells": 0}, "bulkhead:cells is 0, below the minimum of 1", id="zero-cells",
        ),
        pytest.param(
            "eu-west-1", {"bulkhead__cells": "many"}, "bulkhead:cells is 'many', not a whole number",
            id="cells-not-a-number",
        ),
        pytest.param(
            "global", {"bulkhead__secondaryRegion": "eu-west-1"},
            "bulkhead:secondaryRegion is eu-west-1 but us-east-1's partner (where its backups go) is us-west-2",
            id="global-secondary-not-partner",
        ),
        pytest.param(
            "global", {"bulkhead__statusRegion": "us-east-1"}, "bulkhead:statusRegion is us-east-1, a platform region",
            id="status-site-on-the-platform",
        ),
        pytest.param("global", {"bulkhead__domain": None}, "bulkhead:domain is missing", id="global-missing-key"),
        pytest.param(
            "eu-west-1", {"bulkhead__synchronousCommit": "sometimes"},
            "bulkhead:synchronousCommit is 'sometimes', not true or false", id="synchronous-commit-not-a-bool",
        ),
        pytest.param(
            "eu-west-1", {"bulkhead__maximumLagOnFailover": "-1"},
            "bulkhead:maximumLagOnFailover is -1, below the minimum of 0", id="negative-failover-lag",
        ),
        pytest.param(
            "eu-west-1", {"bulkhead__alertWebhook": "http://pager.example.com/hook"},
            "bulkhead:alertWebhook is 'http://pager.example.com/hook', not an https:// URL", id="webhook-not-https",
        ),
        pytest.param(
            "eu-west-1", {"bulkhead__imageSource": "golden"},
            "bulkhead:imageSource is 'golden'; use baked (`bulkhead image bake`'s AMIs) or base",
            id="unknown-image-source",
        ),
        pytest.param(
            "eu-west-1", {"bulkhead__imageSource": "baked", "bulkhead__ansibleRef": "no-such-ref"},
            "bulkhead:imageSource baked: ref no-such-ref is not in the checkout", id="baked-ref-not-in-checkout",
        ),
    ],
)  # fmt: skip
def test_config__bad_value_fails_in_one_line_before_any_resource(project_dir, stack, changes, expected):
    error, mocks = _evaluate_with(project_dir, stack, **changes)
    # A config error inside the program keeps its type through Pulumi's RunError: the CLI exits 2 for it.
    assert error.exit_code == EXIT_USAGE
    message = str(error)
    assert message.startswith(f"stack {stack}: ")
    assert expected in message
    assert "\n" not in message
    assert mocks.declared == []


def test_config__a_good_stack_declares_resources(project_dir):
    """The counter above can see resources: the same harness on an unchanged stack counts many."""
    mocks = CountingMocks()
    config = topology.read_stack_config(project_dir, "eu-west-1")
    evaluate_stack("eu-west-1", mocks, _no_references, project_dir, config=config)
    assert len(mocks.declared) > 50


class NoBakedImages(CountingMocks):
    """An account where no bake has run: a lookup of this account's own images finds nothing, as on AWS."""

    def call(self, args):
        if args.token == "aws:ec2/getAmiIds:getAmiIds":
            self.declared.append(args.token)
            return {"id": "none", "ids": []}
        return super().call(args)


def test_config__baked_images_that_were_never_baked_stop_the_program_naming_the_bake(project_dir):
    config = {**topology.read_stack_config(project_dir, "eu-west-1"), "bulkhead:imageSource": "baked",
              "bulkhead:ansibleRef": "HEAD"}  # fmt: skip
    mocks = NoBakedImages()
    with pytest.raises(ConfigError) as failure:
        evaluate_stack("eu-west-1", mocks, _no_references, project_dir, config=config)
    message = str(failure.value)
    assert message.startswith("stack eu-west-1: no AMI bulkhead-router-"), message
    assert "run `bulkhead image bake --region eu-west-1 --tier router`, or set bulkhead:imageSource base" in message
    assert "\n" not in message
    # Only the one lookup: nothing was declared before it
    assert mocks.declared == ["aws:ec2/getAmiIds:getAmiIds"]


def test_config__baked_images_that_exist_are_each_tiers_own(project_dir):
    """With every tier baked (the plan's lookups find an image), each tier's launch data names a baked image."""
    config = {**topology.read_stack_config(project_dir, "eu-west-1"), "bulkhead:imageSource": "baked",
              "bulkhead:ansibleRef": "HEAD"}  # fmt: skip
    mocks = CountingMocks()
    evaluate_stack("eu-west-1", mocks, _no_references, project_dir, config=config)
    assert mocks.declared[:3] == ["aws:ec2/getAmiIds:getAmiIds"] * 3
