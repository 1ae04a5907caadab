"""The local cloud's alarm evaluation: CloudWatch's rules for periods and missing data, its state set through
CloudWatch's API, and its message published to the alarm's topic (read here from a subscribed queue)."""

from __future__ import annotations

import datetime as dt
import json

import boto3
import pytest
from moto import mock_aws

from bulkhead.localcloud import alarms
from bulkhead.localcloud.alarms import Verdict, evaluate

pytestmark = pytest.mark.unit
REGION = "eu-west-1"
LAG = {"AlarmName": "lag", "ComparisonOperator": "GreaterThanThreshold", "Threshold": 60.0, "EvaluationPeriods": 1,
       "TreatMissingData": "notBreaching"}  # fmt: skip
SILENT = {"AlarmName": "silent", "ComparisonOperator": "LessThanThreshold", "Threshold": 1.0, "EvaluationPeriods": 2,
          "TreatMissingData": "breaching"}  # fmt: skip


@pytest.mark.parametrize(
    ("alarm", "values", "state"),
    [(LAG, [61.0], "ALARM"), (LAG, [60.0], "OK"), (LAG, [None], "OK"),
     (SILENT, [None, None], "ALARM"), (SILENT, [3.0, None], "OK"), (SILENT, [0.0, None], "ALARM"),
     ({**LAG, "TreatMissingData": "missing"}, [None], "INSUFFICIENT_DATA")],
)  # fmt: skip
def test_evaluate__periods_and_missing_data_decide_as_cloudwatch_documents(alarm, values, state):
    assert evaluate(alarm, values, "OK").state == state


def test_evaluate__ignored_missing_data_keeps_the_state():
    assert evaluate({**LAG, "TreatMissingData": "ignore"}, [None], "ALARM") == Verdict(
        "ALARM", "no data; state kept (missing data ignored)"
    )


def test_percentile__nearest_rank():
    assert alarms.percentile([1.0, 2.0, 3.0, 4.0, 100.0], "p95") == 100.0
    assert alarms.percentile([float(n) for n in range(1, 101)], "p95") == 95.0


@pytest.fixture
def cloud():
    with mock_aws():
        sns, sqs = boto3.client("sns", region_name=REGION), boto3.client("sqs", region_name=REGION)
        topic = sns.create_topic(Name="alarms")["TopicArn"]
        queue = sqs.create_queue(QueueName="alerts")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
        cloudwatch = boto3.client("cloudwatch", region_name=REGION)
        cloudwatch.put_metric_alarm(AlarmName="wal-archive-lag", Namespace="Bulkhead/Postgres",
                                    MetricName="WalArchiveLagSeconds", Dimensions=[{"Name": "Region", "Value": REGION}],
                                    Statistic="Maximum", Period=60, EvaluationPeriods=1, Threshold=60,
                                    ComparisonOperator="GreaterThanThreshold", TreatMissingData="notBreaching",
                                    AlarmActions=[topic], OKActions=[topic])  # fmt: skip
        # As the local cloud's translator leaves a new alarm, and as AWS does (moto starts it at OK).
        cloudwatch.set_alarm_state(AlarmName="wal-archive-lag", StateValue="INSUFFICIENT_DATA", StateReason="new")
        reachable = {REGION: True}
        evaluator = alarms.Evaluator(lambda s, r, role: boto3.client(s, region_name=r), [REGION], [None],
                                     lambda region: reachable[region])  # fmt: skip
        yield evaluator, cloudwatch, sqs, queue, reachable


def _lag(cloudwatch, seconds: float, ago: float = 5) -> None:
    cloudwatch.put_metric_data(Namespace="Bulkhead/Postgres", MetricData=[{
        "MetricName": "WalArchiveLagSeconds", "Dimensions": [{"Name": "Region", "Value": REGION}], "Value": seconds,
        "Timestamp": dt.datetime.now(dt.UTC) - dt.timedelta(seconds=ago)}])  # fmt: skip


def _heard(sqs, queue) -> list[dict]:
    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])
    for m in messages:
        sqs.delete_message(QueueUrl=queue, ReceiptHandle=m["ReceiptHandle"])
    return [json.loads(json.loads(m["Body"])["Message"]) for m in messages]


def _state(cloudwatch) -> dict:
    (alarm,) = cloudwatch.describe_alarms(AlarmNames=["wal-archive-lag"])["MetricAlarms"]
    return alarm


def test_evaluator__a_lag_over_threshold_sets_alarm_through_cloudwatch_and_tells_the_topic(cloud):
    evaluator, cloudwatch, sqs, queue, _ = cloud
    evaluator.tick()
    assert _state(cloudwatch)["StateValue"] == "OK"  # idle: no data is not breaching
    assert [(m["OldStateValue"], m["NewStateValue"]) for m in _heard(sqs, queue)] == [("INSUFFICIENT_DATA", "OK")]
    _lag(cloudwatch, 75)
    evaluator.tick()
    assert _state(cloudwatch)["StateValue"] == "OK", "not due again before its period has passed"
    evaluator._due.clear()
    evaluator.tick()
    alarm = _state(cloudwatch)
    assert alarm["StateValue"] == "ALARM" and "[75]" in alarm["StateReason"]
    assert (dt.datetime.now(dt.UTC) - alarm["StateUpdatedTimestamp"]).total_seconds() < 30
    (message,) = _heard(sqs, queue)
    assert (message["AlarmName"], message["NewStateValue"], message["Region"]) == ("wal-archive-lag", "ALARM", REGION)
    assert message["Trigger"]["Threshold"] == 60


def test_evaluator__a_region_off_the_air_is_neither_evaluated_nor_heard(cloud):
    evaluator, cloudwatch, sqs, queue, reachable = cloud
    reachable[REGION] = False
    _lag(cloudwatch, 500)
    evaluator.tick()
    assert _state(cloudwatch)["StateValue"] == "INSUFFICIENT_DATA"
    assert _heard(sqs, queue) == []
