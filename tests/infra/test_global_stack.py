"""Policy tests for the global stack: DNS failover and a status site that shares nothing with the platform."""

from __future__ import annotations

import json
import re

import pytest

from bulkhead import topology
from bulkhead.stack_runner import StackRun

pytestmark = pytest.mark.unit


@pytest.fixture
def global_run(planned) -> StackRun:
    return planned[topology.GLOBAL_STACK]


@pytest.fixture
def config(project_dir) -> dict:
    return topology.read_stack_config(project_dir, topology.GLOBAL_STACK)


def test_global_stack__a_primary_and_a_secondary_record_per_service_each_health_checked(global_run, planned, config):
    checks = {c.id: c for c in global_run.of_type("aws:route53/healthCheck:HealthCheck")}
    records = global_run.of_type("aws:route53/record:Record")
    for service in config["bulkhead:services"]:
        mine = [r for r in records if r.inputs["name"] == f"{service}.{config['bulkhead:domain']}"]
        roles = {r.inputs["failoverRoutingPolicies"][0]["type"]: r for r in mine}
        assert set(roles) == {"PRIMARY", "SECONDARY"}
        for role, region_key in (("PRIMARY", "bulkhead:primaryRegion"), ("SECONDARY", "bulkhead:secondaryRegion")):
            record = roles[role]
            lb_dns = planned[config[region_key]].outputs["routerLbDnsName"]
            assert record.inputs["records"] == [lb_dns]
            check = checks[record.inputs["healthCheckId"]]
            assert check.inputs["fqdn"] == lb_dns and check.inputs["type"] == "HTTPS"


def _status_resources(run: StackRun):
    (site,) = run.of_type("bulkhead:status:StatusSite")
    return site, [r for r in run.resources if r.urn != site.urn and r.urn.split("::")[2].startswith(site.type)]


def test_global_stack__status_site_is_built_through_its_own_provider_in_another_region(global_run, config):
    _, resources = _status_resources(global_run)
    providers = {r.urn: r for r in resources if r.type == "pulumi:providers:aws"}
    # The engine hands providers their nested inputs as JSON strings.
    assert all(json.loads(p.inputs["assumeRoles"])[0]["roleArn"] == config["bulkhead:statusRoleArn"]
               for p in providers.values()), "everything of the site is in the status account"  # fmt: skip
    built = [r for r in resources if r.custom and r.type != "pulumi:providers:aws"]
    assert {r.type for r in built} >= {"aws:s3/bucket:Bucket", "aws:cloudfront/distribution:Distribution"}
    assert all(r.provider.rsplit("::", 1)[0] in providers for r in built)
    site = [r for r in built if r.type in ("aws:s3/bucket:Bucket", "aws:cloudfront/distribution:Distribution")]
    (site_provider,) = {providers[r.provider.rsplit("::", 1)[0]].urn for r in site}
    assert providers[site_provider].inputs["region"] == config["bulkhead:statusRegion"]
    platform_regions = {config["bulkhead:primaryRegion"], config["bulkhead:secondaryRegion"]}
    assert providers[site_provider].inputs["region"] not in platform_regions
    # The site's alarm reads CloudFront's metrics, which exist in us-east-1 only: still the status account.
    (alarm,) = [r for r in built if r.type == "aws:cloudwatch/metricAlarm:MetricAlarm"
                and r.inputs["namespace"] == "AWS/CloudFront"]  # fmt: skip
    assert providers[alarm.provider.rsplit("::", 1)[0]].inputs["region"] == "us-east-1"


def test_global_stack__a_silent_region_pages_from_the_status_region(global_run, planned):
    _, resources = _status_resources(global_run)
    providers = {r.urn: r for r in resources if r.type == "pulumi:providers:aws"}
    alarms = [r for r in resources if r.type == "aws:cloudwatch/metricAlarm:MetricAlarm"
              and r.inputs["namespace"] == "Bulkhead/Heartbeat"]  # fmt: skip
    region_stacks = {s for s in planned if s != topology.GLOBAL_STACK}
    assert {a.inputs["dimensions"]["Region"] for a in alarms} == region_stacks == {"eu-west-1", "us-east-1",
                                                                                   "us-west-2"}  # fmt: skip
    (topic,) = [r for r in resources if r.type == "aws:sns/topic:Topic" and r.inputs.get("name") == "bulkhead-status"]
    for alarm in alarms:
        # Silence itself is the fault: no data breaches; one minute of it (two high-resolution periods) pages.
        assert alarm.inputs["treatMissingData"] == "breaching"
        assert (alarm.inputs["period"], alarm.inputs["evaluationPeriods"]) == (30, 2)
        assert (alarm.inputs["statistic"], alarm.inputs["comparisonOperator"], alarm.inputs["threshold"]) == (
            "SampleCount",
            "LessThanThreshold",
            1,
        )
        assert alarm.inputs["alarmActions"] == [topic.state["arn"]]
        region = providers[alarm.provider.rsplit("::", 1)[0]].inputs["region"]
        assert region not in region_stacks
    assert global_run.outputs["statusTopicArn"] == topic.state["arn"]


def test_global_stack__status_site_references_nothing_of_the_region_stacks(global_run, planned):
    _, resources = _status_resources(global_run)
    region_values = set()
    for stack, run in planned.items():
        if stack != topology.GLOBAL_STACK:
            # Identities of region-stack resources (names of regions alone say nothing of a dependency).
            region_values |= {v for k, v in run.outputs.items() if isinstance(v, str) and "egion" not in k}
    text = repr([r.inputs for r in resources])
    assert not [value for value in region_values if value in text]
    (page,) = [r for r in resources if r.type == "aws:s3/bucketObject:BucketObject"]
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", page.inputs["content"]), "no outside assets"
