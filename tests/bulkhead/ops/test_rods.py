"""`bulkhead rods`: values, refusals, the audit trail in SSM's history, and how agents read rods."""

from __future__ import annotations

import datetime as dt

import boto3
import pytest

from bulkhead.errors import UsageError
from bulkhead.localcloud import server
from bulkhead.localcloud.aws import LOCAL_CREDENTIALS
from bulkhead.ops import rods

pytestmark = pytest.mark.moto
REGION = "eu-west-1"


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("moto")
    info = server.start(directory)
    yield info.endpoint
    server.stop(directory)


@pytest.fixture
def ssm(endpoint):
    """A region whose rods are declared at their normal values, as the region stack declares them."""
    client = boto3.client("ssm", endpoint_url=endpoint, region_name=REGION, **LOCAL_CREDENTIALS)
    for rod in rods.RODS:
        client.put_parameter(Name=rods.parameter_name(REGION, rod), Value=rod.default, Type="String",
                             Overwrite=True, Description=rod.purpose)  # fmt: skip
    return client


def test_set__records_who_and_when_in_the_rods_history(ssm):
    at = dt.datetime(2026, 11, 24, 9, 30, tzinfo=dt.UTC)
    change = rods.set_rod(ssm, REGION, "router-read-only", "ON", "ops@laptop", "bad records", now=at)
    assert change == {"rod": "router-read-only", "region": REGION, "from": "off", "to": "on", "by": "ops@laptop",
                      "at": "2026-11-24T09:30:00Z", "reason": "bad records"}  # fmt: skip
    row = next(r for r in rods.current(ssm, REGION) if r["rod"] == "router-read-only")
    assert row["value"] == "on"
    assert row["note"] == "set to on by ops@laptop at 2026-11-24T09:30:00Z: bad records"
    rods.set_rod(ssm, REGION, "router-read-only", "off", "ops@laptop", now=at)
    history = rods.history(ssm, REGION, "router-read-only")
    assert [h["value"] for h in history[-3:]] == ["off", "on", "off"]
    assert history[-2]["note"].startswith("set to on by ops@laptop")


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("router-readonly", "on", "no rod is called 'router-readonly'; the rods are api-maintenance"),
        ("router-read-only", "yes", "rod router-read-only is on or off, not 'yes'"),
        ("dyno-launch-rate", "fast", "rod dyno-launch-rate is a whole number, not 'fast': give 0-600"),
        ("dyno-launch-rate", "601", "rod dyno-launch-rate is 0-600, not 601"),
    ],
)
def test_set__an_unknown_rod_or_a_bad_value_is_refused_and_nothing_changes(ssm, name, value, message):
    before = rods.current(ssm, REGION)
    with pytest.raises(UsageError, match=message):
        rods.set_rod(ssm, REGION, name, value, "ops")
    assert rods.current(ssm, REGION) == before


def test_reader__reads_at_most_every_poll_and_keeps_its_values_when_ssm_fails(ssm, endpoint):
    reader = rods.Reader(ssm, REGION, poll_seconds=0)
    assert reader.value("dyno-launch-rate") == "30" and not reader.on("router-read-only")
    rods.set_rod(ssm, REGION, "router-read-only", "on", "ops")
    assert reader.on("router-read-only")
    unreachable = boto3.client("ssm", endpoint_url="http://127.0.0.1:9", region_name=REGION, **LOCAL_CREDENTIALS)
    reader.ssm = unreachable
    assert reader.on("router-read-only") and reader.failures == 1
    slow = rods.Reader(ssm, REGION, poll_seconds=3600)
    assert slow.on("router-read-only")
    rods.set_rod(ssm, REGION, "router-read-only", "off", "ops")
    assert slow.on("router-read-only")  # not read again within its poll


def test_cli__set_refuses_a_bad_value_before_reaching_any_cloud(capsys):
    from bulkhead import cli

    assert cli.main(["rods", "set", "dyno-launch-rate", "-3", "--region", REGION]) == 2
    assert "rod dyno-launch-rate is 0-600, not -3" in capsys.readouterr().err
