"""The metrics agent: what it reads from HAProxy and the dyno manager, the deltas it sends, and a round that
publishes into one region's CloudWatch and a heartbeat into the status account's (moto)."""

from __future__ import annotations

import datetime as dt
import json

import boto3
import pytest
from moto import mock_aws

from bulkhead.agents import metrics
from bulkhead.agents.metrics import Counts, HeartbeatDestination, MetricsAgent, Sources

pytestmark = pytest.mark.unit
REGION, STATUS_REGION, STATUS_ACCOUNT = "eu-west-1", "ca-central-1", "210987654321"
# HAProxy 2.6's `show stat`, cut to the columns read and one of each kind of row.
SHOW_STAT = """# pxname,svname,qcur,req_tot,hrsp_2xx,hrsp_5xx,
https,FRONTEND,,1200,1100,7,
app_sample,web-1,0,,600,3,
app_sample,BACKEND,0,,1100,7,
stats,FRONTEND,,5,5,0,
"""


def test_haproxy_counts__sums_the_frontends_only():
    assert metrics.haproxy_counts(SHOW_STAT) == Counts(requests=1205, http_5xx=7)


@pytest.mark.parametrize(("previous", "current", "added"), [(None, 50, 0), (40, 50, 10), (50, 50, 0), (900, 12, 12)])
def test_since__a_running_total_s_increase_and_a_restart_counts_from_zero(previous, current, added):
    assert metrics.since(previous, current) == added


def test_new_boots__only_boots_after_the_last_published_and_never_a_failed_one():
    state = {"boots": [{"process": "web-1", "seconds": 0.4, "at": 100.0}, {"process": "web-2", "seconds": None,
             "at": 101.0}, {"process": "web-3", "seconds": 12.5, "at": 102.0}]}  # fmt: skip
    assert metrics.new_boots(state, after=100.0) == [(102.0, 12.5)]
    (datum,) = metrics.boot_data(metrics.new_boots(state, 0), REGION, dt.datetime.now(dt.UTC))
    assert datum["Values"] == [0.4, 12.5] and "Value" not in datum


@pytest.fixture
def clouds(tmp_path):
    with mock_aws():
        ssm = boto3.client("ssm", region_name=REGION)
        role = f"arn:aws:iam::{STATUS_ACCOUNT}:role/bulkhead-heartbeat"
        ssm.put_parameter(Name=f"/bulkhead/{REGION}/heartbeat", Type="String",
                          Value=json.dumps({"roleArn": role, "region": STATUS_REGION}))  # fmt: skip
        sts = boto3.client("sts", region_name=REGION)

        def client(service, region, credentials):
            return boto3.client(service, region_name=region, aws_access_key_id=credentials["AccessKeyId"],
                                aws_secret_access_key=credentials["SecretAccessKey"],
                                aws_session_token=credentials["SessionToken"])  # fmt: skip

        status = client(
            "cloudwatch", STATUS_REGION, sts.assume_role(RoleArn=role, RoleSessionName="test")["Credentials"]
        )
        yield boto3.client("cloudwatch", region_name=REGION), HeartbeatDestination(ssm, sts, REGION, client), status


def _sum(cloudwatch, namespace: str, name: str) -> float:
    now = dt.datetime.now(dt.UTC)
    # Ending a minute ahead: moto cuts EndTime to the second, which would leave out this second's data.
    window = {"StartTime": now - dt.timedelta(minutes=5), "EndTime": now + dt.timedelta(minutes=1)}
    points = cloudwatch.get_metric_statistics(Namespace=namespace, MetricName=name, Statistics=["Sum"], Period=60,
                                              Dimensions=[{"Name": "Region", "Value": REGION}], **window)  # fmt: skip
    return sum(p["Sum"] for p in points["Datapoints"])


def test_round__publishes_boots_into_the_region_and_a_heartbeat_into_the_status_account(clouds, tmp_path):
    cloudwatch, heartbeat, status = clouds
    dyno_state = tmp_path / "dyno-manager.json"
    agent = MetricsAgent(REGION, "dyno-1", Sources(dyno_state=dyno_state), tmp_path / "state.json",
                         lambda: cloudwatch, heartbeat)  # fmt: skip
    dyno_state.write_text(json.dumps({"boots": [{"process": "web-1", "seconds": 2.5, "at": agent._boots_after + 1}]}))
    agent.round()
    agent.round()  # the same boot is not sent twice
    assert _sum(cloudwatch, "Bulkhead/Runtime", "DynoBootSeconds") == 2.5
    assert _sum(status, "Bulkhead/Heartbeat", "Heartbeat") == 2
    assert _sum(cloudwatch, "Bulkhead/Heartbeat", "Heartbeat") == 0, "never into the platform's own account"
    state = json.loads((tmp_path / "state.json").read_text())
    assert (state["rounds"], state["heartbeats"], state["errors"]) == (2, 2, {})


def test_round__a_failing_source_is_counted_and_the_heartbeat_goes_on(clouds, tmp_path):
    cloudwatch, heartbeat, status = clouds
    agent = MetricsAgent(REGION, "router-1", Sources(haproxy_socket=tmp_path / "no-such.sock"),
                         tmp_path / "state.json", lambda: cloudwatch, heartbeat)  # fmt: skip
    agent.round()
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["errors"] == {"router": 1} and "FileNotFoundError" in state["last_error"]["router"]
    assert state["heartbeats"] == 1 and _sum(status, "Bulkhead/Heartbeat", "Heartbeat") == 1
