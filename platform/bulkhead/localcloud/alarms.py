"""Alarm evaluation, which moto stores but never does: the local cloud's CloudWatch, as AWS documents it.

Each alarm is evaluated once per its period over its last `EvaluationPeriods` periods, ending now, from
the metric data moto holds. A period without data counts as its `TreatMissingData` says. A change of
state is set through CloudWatch's own `SetAlarmState` (so `describe_alarms` shows it, with its reason
and timestamp) and published to the alarm's actions as CloudWatch's JSON message. An alarm in a region
that is off the air is neither evaluated nor heard from, as when that region's CloudWatch is down.

`evaluate` is the decision, with no I/O; `Evaluator` is the loop that feeds it and acts on it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

log = logging.getLogger("bulkhead.local.alarms")

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "GreaterThanThreshold": lambda value, threshold: value > threshold,
    "GreaterThanOrEqualToThreshold": lambda value, threshold: value >= threshold,
    "LessThanThreshold": lambda value, threshold: value < threshold,
    "LessThanOrEqualToThreshold": lambda value, threshold: value <= threshold,
}


@dataclass(frozen=True)
class Verdict:
    """What an evaluation decided: the state, and CloudWatch's kind of reason for it."""

    state: str
    reason: str


def evaluate(alarm: dict, values: Sequence[float | None], current: str) -> Verdict:
    """The alarm's state from one value per evaluated period, oldest first (None: no data in that period)."""
    compare = _COMPARE[alarm["ComparisonOperator"]]
    threshold = float(alarm["Threshold"])
    needed = int(alarm.get("DatapointsToAlarm") or alarm["EvaluationPeriods"])
    missing = alarm.get("TreatMissingData") or "missing"
    breaching = 0
    counted = 0
    for value in values:
        if value is None:
            if missing in ("breaching", "notBreaching"):
                counted += 1
                breaching += missing == "breaching"
            continue
        counted += 1
        breaching += compare(value, threshold)
    shown = ", ".join("none" if v is None else f"{v:g}" for v in values)
    if breaching >= needed:
        return Verdict("ALARM", f"Threshold Crossed: {breaching} of {len(values)} periods [{shown}] crossed "
                                f"{alarm['ComparisonOperator']} {threshold:g}")  # fmt: skip
    if counted == 0:
        if missing == "ignore":
            return Verdict(current, "no data; state kept (missing data ignored)")
        return Verdict("INSUFFICIENT_DATA", "Insufficient Data: no datapoints in the evaluated periods")
    return Verdict("OK", f"Threshold Crossed: {breaching} of {len(values)} periods [{shown}] crossed "
                         f"{alarm['ComparisonOperator']} {threshold:g}, {needed} needed")  # fmt: skip


def percentile(values: Sequence[float], stat: str) -> float:
    """`pNN` of `values` by the nearest-rank method."""
    share = float(stat[1:]) / 100
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def message(alarm: dict, verdict: Verdict, old: str, region: str, account: str, at: dt.datetime) -> dict:
    """The notification CloudWatch publishes to an alarm's topic on a change of state."""
    return {
        "AlarmName": alarm["AlarmName"],
        "AlarmDescription": alarm.get("AlarmDescription"),
        "AWSAccountId": account,
        "AlarmArn": alarm.get("AlarmArn"),
        "NewStateValue": verdict.state,
        "NewStateReason": verdict.reason,
        "StateChangeTime": at.isoformat(timespec="milliseconds"),
        "Region": region,
        "OldStateValue": old,
        "Trigger": {
            "MetricName": alarm["MetricName"],
            "Namespace": alarm["Namespace"],
            "Statistic": alarm.get("Statistic"),
            "ExtendedStatistic": alarm.get("ExtendedStatistic"),
            "Dimensions": [{"name": d["Name"], "value": d["Value"]} for d in alarm.get("Dimensions", [])],
            "Period": alarm["Period"],
            "EvaluationPeriods": alarm["EvaluationPeriods"],
            "ComparisonOperator": alarm["ComparisonOperator"],
            "Threshold": alarm["Threshold"],
            "TreatMissingData": alarm.get("TreatMissingData"),
        },
    }


class Evaluator:
    """Evaluates every alarm of every (region, account) it is given, each on its own period."""

    def __init__(self, client: Callable[[str, str, str | None], object], regions: Sequence[str],
                 roles: Sequence[str | None], reachable: Callable[[str], bool]) -> None:  # fmt: skip
        self.client = client
        self.places = [(region, role) for region in regions for role in roles]
        self.reachable = reachable
        self._due: dict[str, float] = {}
        self.figures = {"evaluations": 0, "changes": 0, "notifications": 0}

    def tick(self) -> None:
        for region, role in self.places:
            if not self.reachable(region):
                continue
            cloudwatch = self.client("cloudwatch", region, role)
            for alarm in cloudwatch.describe_alarms(AlarmTypes=["MetricAlarm"])["MetricAlarms"]:
                now = time.time()
                if self._due.get(alarm["AlarmArn"], 0) > now:
                    continue
                self._due[alarm["AlarmArn"]] = now + int(alarm["Period"])
                self._evaluate(cloudwatch, alarm, region, role)

    def _values(self, cloudwatch, alarm: dict, end: dt.datetime) -> list[float | None]:
        period, count = int(alarm["Period"]), int(alarm["EvaluationPeriods"])
        start = end - dt.timedelta(seconds=period * count)
        stat = alarm.get("Statistic") or alarm["ExtendedStatistic"]
        extended = bool(alarm.get("ExtendedStatistic"))
        metric = {"Namespace": alarm["Namespace"], "MetricName": alarm["MetricName"],
                  "Dimensions": alarm.get("Dimensions", [])}  # fmt: skip
        # moto computes no percentiles: a percentile is taken here over each second's maximum.
        query = {"Id": "m", "ReturnData": True,
                 "MetricStat": {"Metric": metric, "Period": 1 if extended else period,
                                "Stat": "Maximum" if extended else stat}}  # fmt: skip
        result = cloudwatch.get_metric_data(MetricDataQueries=[query], StartTime=start, EndTime=end)
        (series,) = result["MetricDataResults"]
        buckets: list[list[float]] = [[] for _ in range(count)]
        for at, value in zip(series["Timestamps"], series["Values"], strict=True):
            index = int((at - start).total_seconds() // period)
            if 0 <= index < count:
                buckets[index].append(value)
        if extended:
            return [percentile(b, stat) if b else None for b in buckets]
        return [b[0] if b else None for b in buckets]

    def _evaluate(self, cloudwatch, alarm: dict, region: str, role: str | None) -> None:
        end = dt.datetime.now(dt.UTC).replace(microsecond=0)
        values = self._values(cloudwatch, alarm, end)
        verdict = evaluate(alarm, values, alarm["StateValue"])
        self.figures["evaluations"] += 1
        log.info("alarm evaluated", extra={"alarm": alarm["AlarmName"], "region": region, "values": values,
                                           "state": verdict.state, "was": alarm["StateValue"]})  # fmt: skip
        if verdict.state == alarm["StateValue"]:
            return
        cloudwatch.set_alarm_state(AlarmName=alarm["AlarmName"], StateValue=verdict.state, StateReason=verdict.reason,
                                   StateReasonData=json.dumps({"values": values}))  # fmt: skip
        self.figures["changes"] += 1
        account = alarm["AlarmArn"].split(":")[4]
        notice = message(alarm, verdict, alarm["StateValue"], region, account, end)
        actions = {"ALARM": "AlarmActions", "OK": "OKActions", "INSUFFICIENT_DATA": "InsufficientDataActions"}
        for topic in alarm.get(actions[verdict.state], []):
            topic_region = topic.split(":")[3]
            if not self.reachable(topic_region):
                continue
            subject = f'{verdict.state}: "{alarm["AlarmName"]}" in {region}'
            self.client("sns", topic_region, role).publish(TopicArn=topic, Subject=subject[:100],
                                                           Message=json.dumps(notice))  # fmt: skip
            self.figures["notifications"] += 1
            log.info("alarm notified", extra={"alarm": alarm["AlarmName"], "state": verdict.state, "topic": topic})
