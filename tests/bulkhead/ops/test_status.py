"""Posting to the status site: one component at a time, idempotent, announced; bad input leaves the page as it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree

import boto3
import pytest
from moto import mock_aws

from bulkhead.errors import UsageError
from bulkhead.ops import status

pytestmark = pytest.mark.unit
BUCKET = "status-example-net"
REGION = "ca-central-1"
ATOM = "{http://www.w3.org/2005/Atom}"


@pytest.fixture
def site():
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        sns, sqs = boto3.client("sns", region_name=REGION), boto3.client("sqs", region_name=REGION)
        topic = sns.create_topic(Name="bulkhead-status")["TopicArn"]
        queue = sqs.create_queue(QueueName="bulkhead-status-alerts")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
        cloudfront = boto3.client("cloudfront", region_name="us-east-1")
        distribution = cloudfront.create_distribution(DistributionConfig={
            "CallerReference": "status", "Comment": "", "Enabled": True,
            "Origins": {"Quantity": 1, "Items": [{"Id": "status-bucket", "DomainName": f"{BUCKET}.s3.amazonaws.com",
                                                  "S3OriginConfig": {"OriginAccessIdentity": ""}}]},
            "DefaultCacheBehavior": {"TargetOriginId": "status-bucket", "ViewerProtocolPolicy": "allow-all",
                                     "MinTTL": 0}})["Distribution"]["Id"]  # fmt: skip
        yield status.Site(s3, sns, cloudfront, BUCKET, topic, distribution, "example.net status"), sqs, queue


def _object(s3, key: str) -> bytes:
    return s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def _announced(sqs, queue: str) -> list[dict]:
    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    return [json.loads(m["Body"]) for m in messages]


def test_post__sets_one_component_writes_page_feed_and_summary_and_keeps_history(site):
    site, _, _ = site
    assert status.post(site, "databases", "outage", "us-east-1 is unavailable")
    assert status.post(site, "Databases", "degraded", "serving from us-west-2")
    document = status.read(site.s3, BUCKET)
    assert document["components"] == {"routing": "operational", "dynos": "operational", "databases": "degraded",
                                      "api": "operational"}  # fmt: skip
    assert [(p["state"], p["message"]) for p in document["posts"]] == [
        ("outage", "us-east-1 is unavailable"), ("degraded", "serving from us-west-2")]  # fmt: skip
    page = _object(site.s3, "index.html").decode()
    assert "serving from us-west-2" in page and "<script" not in page and "http" not in page.split("<body>")[1]
    for key, kind in (("index.html", "text/html"), ("feed.atom", "application/atom+xml"),
                      ("status.json", "application/json")):  # fmt: skip
        head = site.s3.head_object(Bucket=BUCKET, Key=key)
        assert head["CacheControl"] == "max-age=5" and head["ContentType"].startswith(kind)
    entries = ElementTree.fromstring(_object(site.s3, "feed.atom")).findall(f"{ATOM}entry")
    assert [e.find(f"{ATOM}title").text for e in entries] == ["Databases: degraded", "Databases: outage"]
    assert entries[0].find(f"{ATOM}content").text == "serving from us-west-2"


def test_post__subscribers_of_the_status_topic_hear_each_post_and_the_edge_is_invalidated(site):
    site, sqs, queue = site
    status.post(site, "api", "degraded", "deploys are slow")
    status.resolve(site, "Platform API")
    heard = [json.loads(m["Message"]) for m in _announced(sqs, queue)]
    assert sorted((h["component"], h["state"], h["message"]) for h in heard) == [
        ("api", "degraded", "deploys are slow"),
        ("api", "operational", "Platform API is operating normally again."),
    ]
    invalidations = site.cloudfront.list_invalidations(DistributionId=site.distribution_id)["InvalidationList"]
    assert invalidations["Quantity"] == 2


def test_post__the_same_post_twice_changes_nothing_and_tells_no_one_twice(site):
    site, sqs, queue = site
    assert status.post(site, "api", "degraded", "slow")
    before = _object(site.s3, "status.json")
    assert not status.post(site, "api", "degraded", "slow")
    assert _object(site.s3, "status.json") == before
    assert len(_announced(sqs, queue)) == 1


def test_resolve__appends_to_history_never_rewrites_it(site):
    site, _, _ = site
    status.post(site, "routing", "outage", "eu-west-1 routers unreachable")
    first = status.read(site.s3, BUCKET)["posts"][0]
    assert status.resolve(site, "routing", "routers back")
    document = status.read(site.s3, BUCKET)
    assert document["components"]["routing"] == "operational"
    assert document["posts"][0] == first and len(document["posts"]) == 2
    assert not status.resolve(site, "routing", "routers back")


@pytest.mark.parametrize(
    ("component", "state", "message", "expected"),
    [("cdn", "outage", "x", "unknown component 'cdn'"), ("api", "sideways", "x", "unknown state 'sideways'"),
     ("api", "outage", "  ", "--message is empty")],
)  # fmt: skip
def test_post__bad_input_is_refused_and_the_page_left_as_it_was(site, component, state, message, expected):
    site, sqs, queue = site
    status.post(site, "routing", "operational", "all well")
    objects = {key: _object(site.s3, key) for key in ("index.html", "feed.atom", "status.json")}
    with pytest.raises(UsageError, match=expected):
        status.post(site, component, state, message)
    assert {key: _object(site.s3, key) for key in objects} == objects
    assert len(_announced(sqs, queue)) == 1


def test_cli__without_credentials_one_line_and_exit_1(tmp_path, project_dir):
    """No local cloud and no AWS credentials: one line that says what to do, and nothing written anywhere."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    environment.update({"BULKHEAD_LOCAL_DIR": str(tmp_path / "no-local-cloud"), "AWS_CONFIG_FILE": "/dev/null",
                        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "AWS_EC2_METADATA_DISABLED": "true"})  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "bulkhead.cli", "--project", str(project_dir), "status", "post",
                             "--component", "api", "--state", "degraded", "--message", "slow"],
                            capture_output=True, text=True, env=environment, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "cannot act as the status account" in line and "credentials" in line
