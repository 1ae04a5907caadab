"""Posting to the status site: one component at a time, idempotent, bad input refused with the page untouched."""

from __future__ import annotations

import json

import boto3
import pytest
from moto import mock_aws

from bulkhead.errors import UsageError
from bulkhead.ops import status

pytestmark = pytest.mark.unit
BUCKET = "status-example-net"


@pytest.fixture
def s3():
    with mock_aws():
        client = boto3.client("s3", region_name="ca-central-1")
        client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "ca-central-1"})
        yield client


def _page(s3) -> str:
    return s3.get_object(Bucket=BUCKET, Key="index.html")["Body"].read().decode()


def test_post__sets_one_component_writes_the_page_and_keeps_history(s3):
    assert status.post(s3, BUCKET, "example.net status", "databases", "outage", "us-east-1 is unavailable")
    assert status.post(s3, BUCKET, "example.net status", "databases", "degraded", "serving from us-west-2")
    document = status.read(s3, BUCKET)
    assert document["components"] == {"routing": "operational", "dynos": "operational", "databases": "degraded",
                                      "api": "operational"}  # fmt: skip
    assert [(p["state"], p["message"]) for p in document["posts"]] == [
        ("outage", "us-east-1 is unavailable"), ("degraded", "serving from us-west-2")]  # fmt: skip
    page = _page(s3)
    assert "serving from us-west-2" in page and "<script" not in page and "http" not in page.split("<body>")[1]
    head = s3.head_object(Bucket=BUCKET, Key="index.html")
    assert head["CacheControl"] == "max-age=5" and head["ContentType"].startswith("text/html")


def test_post__the_same_post_twice_changes_nothing(s3):
    assert status.post(s3, BUCKET, "t", "api", "degraded", "slow")
    before = s3.get_object(Bucket=BUCKET, Key="status.json")["Body"].read()
    assert not status.post(s3, BUCKET, "t", "api", "degraded", "slow")
    assert s3.get_object(Bucket=BUCKET, Key="status.json")["Body"].read() == before


@pytest.mark.parametrize(
    ("component", "state", "message", "expected"),
    [("cdn", "outage", "x", "unknown component 'cdn'"), ("api", "sideways", "x", "unknown state 'sideways'"),
     ("api", "outage", "  ", "--message is empty")],
)  # fmt: skip
def test_post__bad_input_is_refused_and_the_page_left_as_it_was(s3, component, state, message, expected):
    status.post(s3, BUCKET, "t", "routing", "operational", "all well")
    page, document = _page(s3), json.loads(s3.get_object(Bucket=BUCKET, Key="status.json")["Body"].read())
    with pytest.raises(UsageError, match=expected):
        status.post(s3, BUCKET, "t", component, state, message)
    assert _page(s3) == page
    assert status.read(s3, BUCKET) == document
