"""Alerting: the alarms that would have paged early in the seeds' outages, wired to one SNS topic.

Router 5xx (June 2012), dyno boot time p95 (Feb 2012: a 2 s rise the evening before went unheeded)
and WAL archive lag (a database whose archive stalls is a database without a backup).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws


@dataclass(frozen=True)
class AlarmRule:
    """One alarm: which metric, which statistic, and when it fires."""

    name: str
    namespace: str
    metric: str
    threshold: float
    statistic: str | None = None
    extended_statistic: str | None = None
    periods: int = 3
    # A router or archiver that stops reporting is as alarming as one reporting trouble.
    missing_data: str = "breaching"
    # The service whose health this alarm watches (`bulkhead check` wants one per service).
    service: str = ""


ALARMS = (
    AlarmRule("router-5xx", "Bulkhead/Router", "Http5xx", threshold=50, statistic="Sum", service="router"),
    AlarmRule("dyno-boot-time-p95", "Bulkhead/Runtime", "DynoBootSeconds", threshold=30, extended_statistic="p95",
              periods=2, missing_data="notBreaching", service="dyno_host"),
    AlarmRule("wal-archive-lag", "Bulkhead/Postgres", "WalArchiveLagSeconds", threshold=300, statistic="Maximum",
              service="postgres"),
    # Three members keep a quorum through one loss; the first unhealthy member is the warning.
    AlarmRule("etcd-unhealthy-members", "Bulkhead/Postgres", "EtcdUnhealthyMembers", threshold=0,
              statistic="Maximum", periods=2, missing_data="notBreaching", service="etcd"),
)  # fmt: skip


@dataclass
class AlertingArgs:
    """Whom to tell: an optional e-mail address subscribed to the topic."""

    region: str
    alert_email: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


class Alerting(pulumi.ComponentResource):
    """The alarm topic of one region and its alarms."""

    topic_arn: pulumi.Output[str]

    def __init__(self, name: str, args: AlertingArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("bulkhead:ops:Alerting", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        topic = aws.sns.Topic(name, kms_master_key_id="alias/aws/sns", tags=args.tags, opts=child)
        if args.alert_email:
            aws.sns.TopicSubscription(
                f"{name}-email", topic=topic.arn, protocol="email", endpoint=args.alert_email, opts=child
            )
        for rule in ALARMS:
            aws.cloudwatch.MetricAlarm(
                f"{name}-{rule.name}",
                name=f"{name}-{rule.name}",
                namespace=rule.namespace,
                metric_name=rule.metric,
                dimensions={"Region": args.region},
                statistic=rule.statistic,
                extended_statistic=rule.extended_statistic,
                period=60,
                evaluation_periods=rule.periods,
                threshold=rule.threshold,
                comparison_operator="GreaterThanThreshold",
                treat_missing_data=rule.missing_data,
                alarm_actions=[topic.arn],
                ok_actions=[topic.arn],
                tags={**args.tags, "bulkhead:service": rule.service},
                opts=child,
            )
        self.topic_arn = topic.arn
        self.register_outputs({"topicArn": topic.arn})
