"""What the alerting drills share: the alarms and subscriber queues they watch, reached as an operator would.

A region's alarms and alert queue are read through that region's endpoint; the heartbeat alarms and the
status queue through the status region's, as the status account. Notifications are SNS envelopes around
CloudWatch's alarm message; `wait_for` reads (and deletes) them until the one asked for arrives.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass
from pathlib import Path

from bulkhead import topology
from bulkhead.drills.common import DrillError
from bulkhead.localcloud.state import Store
from bulkhead.ops.secrets import region_client
from bulkhead.ops.status import StatusError, status_account


@dataclass(frozen=True)
class Watch:
    """One alarm and the queue that hears it."""

    alarm: str
    cloudwatch: object
    sqs: object
    queue: str

    def state(self) -> tuple[str, dt.datetime | None]:
        """The alarm's state and when it last changed, as CloudWatch's DescribeAlarms says."""
        found = self.cloudwatch.describe_alarms(AlarmNames=[self.alarm])["MetricAlarms"]
        if not found:
            raise DrillError(f"no alarm {self.alarm}; deploy its stack with `bulkhead local up`")
        return found[0]["StateValue"], found[0].get("StateUpdatedTimestamp")

    def drain(self) -> int:
        """Read and delete everything the queue holds now; how many there were."""
        count = 0
        while messages := self.sqs.receive_message(QueueUrl=self.queue, MaxNumberOfMessages=10).get("Messages"):
            for message in messages:
                self.sqs.delete_message(QueueUrl=self.queue, ReceiptHandle=message["ReceiptHandle"])
            count += len(messages)
        return count

    def wait_for(self, state: str, timeout: float) -> tuple[float, dict] | None:
        """(when it arrived, CloudWatch's message) of the first notification that this alarm went to `state`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = self.sqs.receive_message(QueueUrl=self.queue, MaxNumberOfMessages=10, WaitTimeSeconds=1)
            for message in answer.get("Messages", []):
                self.sqs.delete_message(QueueUrl=self.queue, ReceiptHandle=message["ReceiptHandle"])
                try:
                    alarm = json.loads(json.loads(message["Body"])["Message"])
                except (ValueError, KeyError, TypeError):
                    continue  # a status post, or anything else the topic carries
                if alarm.get("AlarmName") == self.alarm and alarm.get("NewStateValue") == state:
                    return time.time(), alarm
            time.sleep(0.5)
        return None


def region_alarm(project_dir: Path, region: str, name: str) -> Watch:
    """One of a region's own alarms (`wal-archive-lag`, ...), heard by the region's alert queue."""
    outputs = Store.of_project(project_dir).outputs(region)
    if not outputs or "alertQueueUrl" not in outputs:
        raise DrillError(f"stack {region} has no alert queue; run `bulkhead local up --stacks {region}`")
    return Watch(f"bulkhead-{region}-{name}", region_client(project_dir, "cloudwatch", region),
                 region_client(project_dir, "sqs", region), outputs["alertQueueUrl"])  # fmt: skip


def heartbeat_alarm(project_dir: Path, region: str) -> Watch:
    """The status region's dead man's switch for `region`, heard by the status queue (the status account)."""
    store = Store.of_project(project_dir)
    outputs = store.outputs(topology.GLOBAL_STACK)
    if not outputs or "statusQueueUrl" not in outputs:
        raise DrillError("the global stack is not deployed; run `bulkhead local up` with its stacks")
    try:
        client, _, _ = status_account(project_dir, store)
    except StatusError as error:
        raise DrillError(str(error)) from None
    return Watch(f"bulkhead-{region}-silent", client("cloudwatch"), client("sqs"), outputs["statusQueueUrl"])
