"""Alerting: the alarms that would have paged early in the seeds' outages, wired to one SNS topic.

Router 5xx (June 2012), dyno boot time p95 (Feb 2012: a 2 s rise the evening before went unheeded)
and WAL archive lag (a database whose archive stalls is a database without a backup). The hosts'
metrics agent publishes each every 10 s. An idle platform publishes little (no requests, no boots),
so missing data is not breaching: a region that goes silent altogether is the status region's
heartbeat alarm's to catch, since an alarm cannot page through the region it watches.

Subscribers: an e-mail address and an HTTPS webhook when configured, and always the region's alert
queue, which keeps every notification for 14 days for tools (and drills) to read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from bulkhead import topology


@dataclass(frozen=True)
class AlarmRule:
    """One alarm: which metric, which statistic, and when it fires."""

    name: str
    namespace: str
    metric: str
    threshold: float
    statistic: str | None = None
    extended_statistic: str | None = None
    periods: int = 2
    period: int = 60
    # Silence is the heartbeat alarm's business (status region); here it means nothing happened.
    missing_data: str = "notBreaching"
    # The service whose health this alarm watches (`bulkhead check` wants one per service).
    service: str = ""


ALARMS = (
    AlarmRule("router-5xx", "Bulkhead/Router", "Http5xx", threshold=50, statistic="Sum", service="router"),
    # Feb 2012: boot times crept up for hours before the storm; 10 s is far above a healthy boot (< 1 s here).
    AlarmRule("dyno-boot-time-p95", "Bulkhead/Runtime", "DynoBootSeconds", threshold=10, extended_statistic="p95",
              service="dyno_host"),
    # One period, so that a stalled archive pages within two minutes of its last segment.
    AlarmRule("wal-archive-lag", "Bulkhead/Postgres", "WalArchiveLagSeconds", threshold=60, statistic="Maximum",
              periods=1, service="postgres"),
    # Three members keep a quorum through one loss; the first unhealthy member is the warning.
    AlarmRule("etcd-unhealthy-members", "Bulkhead/Postgres", "EtcdUnhealthyMembers", threshold=0,
              statistic="Maximum", service="etcd"),
)  # fmt: skip
# How long the alert queue keeps a notification (SQS's most).
QUEUE_RETENTION_SECONDS = 14 * 24 * 3600


@dataclass
class AlertingArgs:
    """Whom to tell: an optional e-mail address and HTTPS webhook subscribed to the topic."""

    region: str
    alert_email: str | None = None
    alert_webhook: str | None = None
    # Where this region's hosts send their heartbeat ({"roleArn", "region"}), told to them through SSM.
    heartbeat_destination: dict[str, str] | None = None
    tags: dict[str, str] = field(default_factory=dict)


class Alerting(pulumi.ComponentResource):
    """The alarm topic of one region and its alarms."""

    topic_arn: pulumi.Output[str]
    queue_url: pulumi.Output[str]

    def __init__(self, name: str, args: AlertingArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("bulkhead:ops:Alerting", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        topic = aws.sns.Topic(name, kms_master_key_id="alias/aws/sns", tags=args.tags, opts=child)
        if args.alert_email:
            aws.sns.TopicSubscription(
                f"{name}-email", topic=topic.arn, protocol="email", endpoint=args.alert_email, opts=child
            )
        if args.alert_webhook:
            aws.sns.TopicSubscription(
                f"{name}-webhook", topic=topic.arn, protocol="https", endpoint=args.alert_webhook, opts=child
            )
        queue, heard = alert_queue(f"{name}-alerts", topic, args.tags, child)
        # After the queue's subscription: the queue then hears every alarm's first change of state too.
        alarm_opts = pulumi.ResourceOptions(parent=self, depends_on=[heard])
        for rule in ALARMS:
            aws.cloudwatch.MetricAlarm(
                f"{name}-{rule.name}",
                name=f"{name}-{rule.name}",
                namespace=rule.namespace,
                metric_name=rule.metric,
                dimensions={"Region": args.region},
                statistic=rule.statistic,
                extended_statistic=rule.extended_statistic,
                period=rule.period,
                evaluation_periods=rule.periods,
                threshold=rule.threshold,
                comparison_operator="GreaterThanThreshold",
                treat_missing_data=rule.missing_data,
                alarm_actions=[topic.arn],
                ok_actions=[topic.arn],
                tags={**args.tags, "bulkhead:service": rule.service},
                opts=alarm_opts,
            )
        if args.heartbeat_destination:
            aws.ssm.Parameter(
                f"{name}-heartbeat",
                name=topology.heartbeat_parameter(args.region),
                type="String",
                value=json.dumps(args.heartbeat_destination, sort_keys=True),
                description="Where this region's hosts send their heartbeat: the status account's role and region",
                tags=args.tags,
                opts=child,
            )
        self.topic_arn = topic.arn
        self.queue_url = queue.url
        self.register_outputs({"topicArn": topic.arn, "queueUrl": queue.url})


def alert_queue(
    name: str, topic: aws.sns.Topic, tags: dict[str, str], opts: pulumi.ResourceOptions
) -> tuple[aws.sqs.Queue, aws.sns.TopicSubscription]:
    """An SQS queue subscribed to `topic`, writable by that topic alone; and its subscription."""
    queue = aws.sqs.Queue(
        name, name=name, message_retention_seconds=QUEUE_RETENTION_SECONDS, sqs_managed_sse_enabled=True, tags=tags,
        opts=opts,
    )  # fmt: skip
    policy = aws.sqs.QueuePolicy(
        name,
        queue_url=queue.url,
        policy=pulumi.Output.json_dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "sns.amazonaws.com"},
                        "Action": "sqs:SendMessage",
                        "Resource": queue.arn,
                        "Condition": {"ArnEquals": {"aws:SourceArn": topic.arn}},
                    }
                ],
            }
        ),
        opts=opts,
    )
    # After the policy: until it exists, SNS may not deliver into the queue.
    subscription = aws.sns.TopicSubscription(
        name, topic=topic.arn, protocol="sqs", endpoint=queue.arn,
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[policy])),
    )  # fmt: skip
    return queue, subscription
