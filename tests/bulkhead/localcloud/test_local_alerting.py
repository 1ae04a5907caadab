"""Alarms that evaluate and notify, and a status site that takes a post in seconds and is read in a real browser
while every platform region refuses connections: all on the local cloud that `bulkhead local up` makes."""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.request
from pathlib import Path

import pytest
from playwright import sync_api

from bulkhead import project, topology
from bulkhead.localcloud import cloud
from bulkhead.ops import alarms, status

pytestmark = pytest.mark.moto

PROJECT_DIR = project.find(start=Path(__file__).parent)
REGIONS = [s for s in topology.stack_names(PROJECT_DIR) if s != topology.GLOBAL_STACK]
GLOBAL = topology.read_stack_config(PROJECT_DIR, "global")
# Kept after the run (CI uploads the directory): what the browser saw.
ARTIFACTS = Path(os.environ.get("BULKHEAD_TEST_ARTIFACTS", PROJECT_DIR / ".bulkhead" / "test-artifacts"))


def _status_account(clients, service: str, region: str):
    role = clients("sts", "us-east-1").assume_role(RoleArn=GLOBAL["bulkhead:statusRoleArn"], RoleSessionName="test")
    credentials = role["Credentials"]
    return clients(service, region, aws_access_key_id=credentials["AccessKeyId"],
                   aws_secret_access_key=credentials["SecretAccessKey"],
                   aws_session_token=credentials["SessionToken"])  # fmt: skip


def _drain(sqs, queue: str, until, timeout: float) -> list[dict]:
    """Every notification read from `queue` until `until(heard)` holds (or the timeout passes)."""
    heard: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not until(heard):
        for message in sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
            "Messages", []
        ):
            sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
            heard.append(json.loads(message["Body"]))
    return heard


def _distribution_url(store) -> str:
    (served,) = cloud.status(store)["controller"]["distributions"].values()
    return served["url"]


def test_alarms__regions_that_never_sent_a_heartbeat_page_the_status_account(deployed):
    """Given a fresh deploy, no host has sent a heartbeat yet: each region's dead man's switch fires
    within 30 s, through the status topic in the status account, and describe_alarms says so."""
    _, clients, reports = deployed
    region = GLOBAL["bulkhead:statusRegion"]
    sqs = _status_account(clients, "sqs", region)
    queue = reports["global"].outputs["statusQueueUrl"]

    def alarms_in(heard):
        return {json.loads(h["Message"])["AlarmName"] for h in heard if h.get("Subject", "").startswith("ALARM")}

    heard = _drain(sqs, queue, lambda h: len(alarms_in(h)) == len(REGIONS), timeout=30)
    assert alarms_in(heard) == {f"bulkhead-{r}-silent" for r in REGIONS}
    cloudwatch = _status_account(clients, "cloudwatch", region)
    for alarm in cloudwatch.describe_alarms(AlarmNamePrefix="bulkhead-")["MetricAlarms"]:
        assert alarm["StateValue"] == "ALARM" and alarm["StateReason"].startswith("Threshold Crossed")


def test_alarms__an_idle_region_is_ok_and_its_queue_hears_each_change(deployed):
    """Given an idle region (no requests, no boots, no archive), every alarm of its own goes OK, and its
    alert queue hears each change of state."""
    _, clients, reports = deployed
    region = "eu-west-1"
    sqs = clients("sqs", region)
    queue = reports[region].outputs["alertQueueUrl"]
    heard = _drain(sqs, queue, lambda h: len(h) >= 4, timeout=30)
    changes = sorted((json.loads(h["Message"])["AlarmName"], json.loads(h["Message"])["NewStateValue"]) for h in heard)
    assert changes == [(f"bulkhead-{region}-{name}", "OK") for name in
                       ("dyno-boot-time-p95", "etcd-unhealthy-members", "router-5xx", "wal-archive-lag")]  # fmt: skip
    states = {a["StateValue"] for a in clients("cloudwatch", region).describe_alarms()["MetricAlarms"]}
    assert states == {"OK"}


def test_status__a_post_is_served_at_the_edge_within_seconds_and_announced(deployed, project_dir):
    store, clients, reports = deployed
    url = _distribution_url(store)
    site = status.status_site(project_dir, store)
    with urllib.request.urlopen(url, timeout=5) as answer:  # cached now, for max-age=5
        assert answer.status == 200
    posted = time.monotonic()
    assert status.post(site, "dynos", "degraded", "boots are slow in eu-west-1 cell 2")
    served_after = None
    while time.monotonic() - posted < 10:
        with urllib.request.urlopen(url, timeout=5) as answer:
            if "boots are slow in eu-west-1 cell 2" in answer.read().decode():
                served_after = time.monotonic() - posted
                break
        time.sleep(0.2)
    assert served_after is not None and served_after < 5, f"served after {served_after} s"
    with urllib.request.urlopen(url + "feed.atom", timeout=5) as answer:
        assert answer.headers["Content-Type"] == "application/atom+xml" and b"Dynos: degraded" in answer.read()
    sqs = _status_account(clients, "sqs", GLOBAL["bulkhead:statusRegion"])
    posts = [json.loads(h["Message"]) for h in _drain(sqs, reports["global"].outputs["statusQueueUrl"],
             lambda h: any(x.get("Subject", "").startswith("[status]") for x in h), timeout=10)
             if h.get("Subject", "").startswith("[status]")]  # fmt: skip
    assert posts == [{"at": posts[0]["at"], "component": "dynos", "state": "degraded",
                      "message": "boots are slow in eu-west-1 cell 2"}]  # fmt: skip


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_status__the_page_renders_in_chromium_while_every_platform_region_refuses(deployed, project_dir):
    """Given every platform region off the air, a post still lands and the page, loaded in Debian's chromium
    from the local CloudFront, shows each component's posted state and asked nothing of anyone but itself."""
    store, _, _ = deployed
    fronts = cloud.status(store)["controller"]["regions"]
    url = _distribution_url(store)
    site = status.status_site(project_dir, store)
    try:
        for region in REGIONS:
            cloud.set_on_air(store, region, False)
        assert all(_refused(fronts[r]["port"]) for r in REGIONS)
        posted = {"routing": "degraded", "dynos": "operational", "databases": "outage", "api": "degraded"}
        for component, state in posted.items():
            status.post(site, component, state, f"us-east-1 is unavailable: {component} {state}")
        time.sleep(1.5)  # the edge sees the invalidation within a second
        requests: list[str] = []
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        with sync_api.sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path="/usr/bin/chromium",
                                             args=["--no-sandbox"] if os.geteuid() == 0 else [])  # fmt: skip
            page = browser.new_page()
            page.on("request", lambda request: requests.append(request.url))
            page.goto(url, wait_until="networkidle")
            rows = {li.locator("span").inner_text(): li.locator("b").inner_text() for li in page.locator("li").all()}
            page.screenshot(path=str(ARTIFACTS / "status-page.png"), full_page=True)
            title = page.title()
            browser.close()
    finally:
        for region in REGIONS:
            cloud.set_on_air(store, region, True)
    assert title == "platform.example.net status"
    assert rows == {"HTTP routing": "degraded", "Dynos": "operational", "Databases": "outage",
                    "Platform API": "degraded"}  # fmt: skip
    assert requests and all(r.startswith(url) for r in requests), requests
    assert (ARTIFACTS / "status-page.png").stat().st_size > 1000


def test_alarms_cli__lists_each_alarm_where_it_lives_and_a_region_off_the_air_as_unreachable(deployed, monkeypatch):
    store, _, _ = deployed
    monkeypatch.setenv("BULKHEAD_LOCAL_DIR", str(store.directory))
    rows = {r["alarm"]: r for r in alarms.current(PROJECT_DIR)}
    assert {f"bulkhead-{r}-silent" for r in REGIONS} <= set(rows)
    assert all(rows[f"bulkhead-{r}-silent"]["state"] == "ALARM" for r in REGIONS), "no host ever beat"
    assert rows["bulkhead-eu-west-1-wal-archive-lag"]["where"] == "eu-west-1"
    assert rows["bulkhead-eu-west-1-silent"]["where"] == f"{GLOBAL['bulkhead:statusRegion']} (status)"
    try:
        cloud.set_on_air(store, "eu-west-1", False)
        rows = alarms.current(PROJECT_DIR)
    finally:
        cloud.set_on_air(store, "eu-west-1", True)
    assert [r["state"] for r in rows if r["where"] == "eu-west-1"] == ["UNREACHABLE"]
    assert {r["state"] for r in rows if r["where"] == "us-west-2"} == {"OK"}
