"""region-silent: a whole region goes quiet; the status region's dead man's switch must page, then clear.

The fault is the region taken off the air (`bulkhead local air REGION off`): its endpoints refuse every
connection, its hosts' included, so no host of the region can send its heartbeat, and the region's own
alarm topic cannot be reached to page through. The drill shows that topic refusing, reads the status
queue (in the status account and region) until the region's `-silent` alarm's ALARM notification
arrives, brings the region back, and reads on until its OK arrives. Goals:
- `region_topic_unreachable`: publishing to the region's own alarm topic fails during the fault;
- `alarm_s`: from the fault to the ALARM message in the status queue, under 120 s (no heartbeat for two
  high-resolution periods of 30 s, evaluated every 30 s: 60-90 s);
- `cleared_s`: from the region's return to the OK message, under 120 s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import botocore.exceptions

from bulkhead.drills.agent_report import AgentReport
from bulkhead.drills.alerts import heartbeat_alarm
from bulkhead.drills.common import DrillError, poll_until, stepper
from bulkhead.ha.reach import Reach
from bulkhead.localcloud import cloud, controller
from bulkhead.localcloud.aws import LocalAws, is_unreachable
from bulkhead.localcloud.state import Store

ALARM_GOAL_S = 120
CLEAR_GOAL_S = 120


def _topic_answers(store: Store, region: str) -> bool:
    """Whether the region's own alarm topic takes a message now (through the region's endpoint)."""
    outputs = store.outputs(region) or {}
    endpoint = controller.front_endpoint(store.directory, region)
    if not endpoint or "alarmTopicArn" not in outputs:
        raise DrillError(f"stack {region} is not deployed with its alarm topic; run `bulkhead local up`")
    try:
        sns = LocalAws(endpoint).client("sns", region)
        sns.publish(TopicArn=outputs["alarmTopicArn"], Subject="drill region-silent", Message="can you hear me")
    except botocore.exceptions.BotoCoreError as error:
        if is_unreachable(error):
            return False
        raise
    return True


def run(reach: Reach, scratch: Path, on_step: Callable[[str], None] | None = None,
        project_dir: Path | None = None) -> AgentReport:  # fmt: skip
    project_dir = project_dir or Path.cwd()
    report = AgentReport("region-silent", reach.region)
    step = stepper(report, on_step)
    store = Store.of_project(project_dir)
    watch = heartbeat_alarm(project_dir, reach.region)
    if not reach.hosts:
        raise DrillError(f"{reach.region} has no sandbox hosts to fall silent; run `bulkhead hosts up`")
    if poll_until(lambda: watch.state()[0] == "OK", 180, interval=5) is None:
        raise DrillError(f"{watch.alarm} is {watch.state()[0]}, not OK: {reach.region}'s hosts send no heartbeat; "
                         "see /var/lib/bulkhead/metrics/state.json on them")  # fmt: skip
    drained = watch.drain()
    step(f"{watch.alarm} is OK; the status queue drained ({drained} old notifications)")
    cloud.set_on_air(store, reach.region, False)
    fault_at = time.time()
    step(f"{reach.region} off the air")
    alarmed = cleared = None
    reachable = True
    try:
        reachable = _topic_answers(store, reach.region)
        step(f"{reach.region}'s own alarm topic {'answers' if reachable else 'refuses'}")
        alarmed = watch.wait_for("ALARM", ALARM_GOAL_S + 120)
        step("the ALARM notification arrived in the status queue" if alarmed else "no ALARM notification arrived")
    finally:
        cloud.set_on_air(store, reach.region, True)
        back_at = time.time()
        step(f"{reach.region} on the air again")
    if alarmed:
        cleared = watch.wait_for("OK", CLEAR_GOAL_S + 120)
        step("the OK notification arrived" if cleared else "no OK notification arrived")
    alarm_s = None if alarmed is None else round(alarmed[0] - fault_at, 1)
    cleared_s = None if cleared is None else round(cleared[0] - back_at, 1)
    state, changed = watch.state()
    report.figures = {"alarm": watch.alarm, "alarm_s": alarm_s, "cleared_s": cleared_s,
                      "region_topic_unreachable": not reachable,
                      "alarm_reason": alarmed[1]["NewStateReason"] if alarmed else None,
                      "state_now": state, "state_changed_at": changed.isoformat() if changed else None}  # fmt: skip
    report.goal("region_topic_unreachable", not reachable, "the region's topic refuses", not reachable)
    report.goal("alarm_s", alarm_s, f"< {ALARM_GOAL_S}", alarm_s is not None and alarm_s < ALARM_GOAL_S)
    report.goal("cleared_s", cleared_s, f"< {CLEAR_GOAL_S}", cleared_s is not None and cleared_s < CLEAR_GOAL_S)
    return report
