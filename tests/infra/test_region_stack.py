"""Policy tests for every region stack, run on the real program under Pulumi mocks (no network)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import pytest

from bulkhead import topology
from bulkhead.ops import policy_model, policy_rules
from bulkhead.ops.policy_model import Declared
from bulkhead.stack_runner import DeclaredResource, StackRun

pytestmark = pytest.mark.unit


@dataclass(frozen=True)
class Expected:
    """What one region stack must lay out, written down from its Pulumi.<stack>.yaml and the defaults."""

    region: str
    partner_region: str
    availability_zones: tuple[str, str, str]
    cells: int
    dyno_hosts_per_cell_az: int
    archive_bucket: str
    database_server: str
    # The members' fixed addresses (10th from the top of each AZ's private /20), in AZ order.
    database_members: tuple[str, str, str]
    router_warm_pool: int = 2
    max_connections_per_backend: int = 64
    archive_retention_days: int = 35


EXPECTED = {
    "eu-west-1": Expected("eu-west-1", "eu-central-1", ("eu-west-1a", "eu-west-1b", "eu-west-1c"), 1, 1,
                          "bulkhead-eu-west-1-archive", "pg-eu-west-1",
                          ("10.30.143.245", "10.30.159.245", "10.30.175.245")),
    "us-east-1": Expected("us-east-1", "us-west-2", ("us-east-1a", "us-east-1b", "us-east-1c"), 2, 1,
                          "bulkhead-us-east-1-archive", "pg-us-east-1",
                          ("10.10.143.245", "10.10.159.245", "10.10.175.245")),
    "us-west-2": Expected("us-west-2", "us-east-1", ("us-west-2a", "us-west-2b", "us-west-2c"), 2, 1,
                          "bulkhead-us-west-2-archive", "pg-us-west-2",
                          ("10.20.143.245", "10.20.159.245", "10.20.175.245")),
}  # fmt: skip

COMPONENT_TYPES = {
    "bulkhead:network:RegionNetwork",
    "bulkhead:routing:RoutingMesh",
    "bulkhead:runtime:DynoCell",
    "bulkhead:data:Postgres",
    "bulkhead:ops:ControlRods",
    "bulkhead:ops:Alerting",
    "bulkhead:security:AccountBaseline",
}


def test_region_stacks__every_stack_file_has_its_expectations_here(project_dir):
    names = topology.stack_names(project_dir)
    assert [n for n in names if n != topology.GLOBAL_STACK] == sorted(EXPECTED)


@pytest.fixture(params=sorted(EXPECTED))
def region(request, planned) -> tuple[Expected, StackRun]:
    return EXPECTED[request.param], planned[request.param]


def _subnet_azs(run: StackRun) -> dict[str, str]:
    return {s.id: s.inputs["availabilityZone"] for s in run.of_type("aws:ec2/subnet:Subnet")}


def _user_data_facts(instance: DeclaredResource) -> dict:
    """The host facts a first boot writes, read back out of the user data's `echo '{...}'` line."""
    (line,) = [line for line in instance.inputs["userData"].splitlines() if line.startswith("echo '{")]
    return json.loads(line.removeprefix("echo '").split("' | ")[0])


def _tags(group: DeclaredResource) -> dict[str, str]:
    return {t["key"]: t["value"] for t in group.inputs.get("tags", [])}


def _groups(run: StackRun, role: str) -> list[DeclaredResource]:
    return [g for g in run.of_type("aws:autoscaling/group:Group") if _tags(g).get("bulkhead:role") == role]


def _statements(policy: str) -> list[dict]:
    return json.loads(policy)["Statement"]


def test_region_stack__every_component_type_is_declared_and_owns_its_children(region):
    _, run = region
    components = {r.urn: r for r in run.resources if not r.custom}
    assert {c.type for c in components.values()} == COMPONENT_TYPES
    orphans = [r.urn for r in run.resources if r.custom and r.parent not in components]
    assert orphans == [], "every resource must be a child of a component"


def test_region_stack__public_and_private_subnets_in_three_azs(region):
    spec, run = region
    subnets = run.of_type("aws:ec2/subnet:Subnet")
    for tier in ("public", "private"):
        azs = {s.inputs["availabilityZone"] for s in subnets if s.inputs["tags"]["bulkhead:tier"] == tier}
        assert azs == set(spec.availability_zones)
        assert len(azs) == 3


def test_region_stack__a_router_group_per_az_behind_a_balancer_spanning_all_three(region):
    spec, run = region
    azs_of = _subnet_azs(run)
    routers = _groups(run, "router")
    assert sorted(azs_of[g.inputs["vpcZoneIdentifiers"][0]] for g in routers) == sorted(spec.availability_zones)
    assert all(len(g.inputs["vpcZoneIdentifiers"]) == 1 for g in routers), "a router group must stay in its AZ"
    assert all(g.inputs["warmPool"]["minSize"] == spec.router_warm_pool for g in routers)
    (balancer,) = run.of_type("aws:lb/loadBalancer:LoadBalancer")
    assert {azs_of[s] for s in balancer.inputs["subnets"]} == set(spec.availability_zones)
    listeners = run.of_type("aws:lb/listener:Listener")
    assert {listener.inputs["port"] for listener in listeners} == {80, 443}
    assert all(listener.inputs["loadBalancerArn"] == balancer.state["arn"] for listener in listeners)
    forwarded = {listener.inputs["defaultActions"][0]["targetGroupArn"] for listener in listeners}
    for group in routers:
        assert set(group.inputs["targetGroupArns"]) == forwarded


def test_region_stack__every_dyno_cell_has_hosts_in_every_az(region):
    spec, run = region
    azs_of = _subnet_azs(run)
    cells = run.of_type("bulkhead:runtime:DynoCell")
    assert len(cells) == spec.cells
    for cell in cells:
        groups = [r for r in run.children_of(cell) if r.type == "aws:autoscaling/group:Group"]
        assert sorted(azs_of[g.inputs["vpcZoneIdentifiers"][0]] for g in groups) == sorted(spec.availability_zones)
        assert all(g.inputs["desiredCapacity"] == spec.dyno_hosts_per_cell_az for g in groups)


def test_region_stack__one_postgres_and_etcd_member_per_az_at_fixed_addresses(region):
    spec, run = region
    hosts = sorted(run.of_type("aws:ec2/instance:Instance"), key=lambda i: i.inputs["availabilityZone"])
    assert [h.inputs["availabilityZone"] for h in hosts] == list(spec.availability_zones)
    assert [h.inputs["privateIp"] for h in hosts] == list(spec.database_members)
    # The first AZ's member initialises the cluster; Patroni decides who leads afterwards.
    assert [h.inputs["tags"]["bulkhead:postgres"] for h in hosts] == ["primary", "standby", "standby"]
    for host in hosts:
        assert _subnet_azs(run)[host.inputs["subnetId"]] == host.inputs["availabilityZone"]
        facts = _user_data_facts(host)
        assert facts["postgres_members"] == list(spec.database_members)
        assert facts["postgres_synchronous_mode"] is True
        assert facts["postgres_maximum_lag_on_failover"] == 1048576


def test_region_stack__etcd_and_patroni_reachable_only_from_members_dyno_hosts_and_routers(region):
    _, run = region
    groups = run.of_type("aws:ec2/securityGroup:SecurityGroup")
    (database,) = [g for g in groups if "PostgreSQL" in g.inputs.get("description", "")]
    rules = {(r["fromPort"], r["toPort"], bool(r.get("self")), bool(r.get("securityGroups")))
             for r in database.inputs["ingress"]}  # fmt: skip
    assert rules == {(5432, 5432, False, True), (8008, 8008, False, True), (2379, 2379, False, True),
                     (5432, 5432, True, False), (8008, 8008, True, False), (2379, 2380, True, False)}  # fmt: skip
    assert not any(r.get("cidrBlocks") for r in database.inputs["ingress"])
    # The route registry's client port: the routers watch it, the dyno hosts publish to it; no one else.
    (registry,) = [r for r in database.inputs["ingress"] if r["fromPort"] == 2379 and r.get("securityGroups")]
    routers = [g.id for g in groups if g.inputs.get("description", "").startswith("Bulkhead routers")]
    cells = [g.id for g in groups if g.inputs.get("description", "").startswith("Bulkhead dyno cell")]
    assert sorted(registry["securityGroups"]) == sorted(routers + cells) and len(routers) == 1 and cells


def _verdicts(project_dir, run: StackRun, rules: set[str]) -> dict[tuple[str, str], str]:
    """The policy rules (`bulkhead check`'s own) over one stack: (rule, resource) -> pass, fail or waived."""
    records = [Declared(run.stack, "?", r.type, r.id, r.inputs, r.state) for r in run.resources if r.custom]
    verdicts = policy_rules.evaluate(policy_model.declared(records), project_dir, rules=sorted(rules))
    return {(v.rule, v.resource): v.status for v in verdicts}


ARCHIVE_RULES = {"archive-kms-key", "archive-object-lock", "archive-lifecycle", "archive-access-logs",
                 "buckets-private-tls-only"}  # fmt: skip


def test_region_stack__archive_buckets_are_keyed_locked_logged_private_tls_only_and_expire(region, project_dir):
    spec, run = region
    verdicts = _verdicts(project_dir, run, ARCHIVE_RULES)
    for bucket in (spec.archive_bucket, spec.archive_bucket + "-replica"):
        for rule in ARCHIVE_RULES:
            assert verdicts[(rule, bucket)] == "pass", rule
    # Written down: retention 35 days, base backups daily, so objects expire after 36.
    lifecycles = run.of_type("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")
    (lifecycle,) = [r for r in lifecycles if r.name == spec.archive_bucket]
    assert lifecycle.inputs["rules"][0]["expiration"]["days"] == spec.archive_retention_days + 1


def test_region_stack__archive_replicates_to_a_bucket_in_the_partner_region(region):
    spec, run = region
    buckets = {b.inputs["bucket"]: b for b in run.of_type("aws:s3/bucket:Bucket")}
    archive, replica = buckets[spec.archive_bucket], buckets[spec.archive_bucket + "-replica"]
    (replication,) = run.of_type("aws:s3/bucketReplicationConfig:BucketReplicationConfig")
    assert replication.inputs["bucket"] == archive.id
    (rule,) = replication.inputs["rules"]
    assert rule["status"] == "Enabled" and rule["destination"]["bucket"] == replica.state["arn"]
    providers = {p.urn: p for p in run.of_type("pulumi:providers:aws")}
    assert providers[replica.provider.rsplit("::", 1)[0]].inputs["region"] == spec.partner_region
    assert archive.provider.rsplit("::", 1)[0] not in providers, "the archive stays in the stack's own region"


def test_region_stack__database_role_writes_only_its_own_prefix_and_destroys_nothing(region, project_dir):
    spec, run = region
    archive_arn = f"arn:aws:s3:::{spec.archive_bucket}"
    (db_policy,) = [p for p in run.of_type("aws:iam/rolePolicy:RolePolicy") if "s3:PutObject" in p.inputs["policy"]]
    writes = [s for s in _statements(db_policy.inputs["policy"]) if "s3:PutObject" in s["Action"]]
    assert [w["Resource"] for w in writes] == [[f"{archive_arn}/{spec.database_server}/*"]]
    verdicts = _verdicts(project_dir, run, {"archive-writes-confined", "hosts-cannot-destroy-backups"})
    assert verdicts[("archive-writes-confined", db_policy.inputs["role"])] == "pass"
    assert verdicts[("hosts-cannot-destroy-backups", db_policy.inputs["role"])] == "pass"
    assert set(verdicts.values()) == {"pass"}


def test_region_stack__only_the_balancer_admits_the_internet_and_only_on_80_and_443(region, project_dir):
    _, run = region
    verdicts = _verdicts(project_dir, run, {"world-ingress-http-only", "nacl-no-remote-admin", "nacl-tier-ports"})
    assert set(verdicts.values()) == {"pass"}
    (balancer,) = run.of_type("aws:lb/loadBalancer:LoadBalancer")
    open_groups = [g for g in run.of_type("aws:ec2/securityGroup:SecurityGroup")
                   if any("0.0.0.0/0" in r.get("cidrBlocks", []) for r in g.inputs.get("ingress", []))]  # fmt: skip
    assert [g.id for g in open_groups] == balancer.inputs["securityGroups"]


def test_region_stack__every_control_rod_is_a_parameter_at_its_normal_value(region):
    spec, run = region
    parameters = {p.inputs["name"]: p.inputs["value"] for p in run.of_type("aws:ssm/parameter:Parameter")}
    assert parameters == {
        f"/bulkhead/{spec.region}/rods/api-maintenance": "off",
        f"/bulkhead/{spec.region}/rods/app-management-lockdown": "off",
        f"/bulkhead/{spec.region}/rods/dyno-launch-rate": "30",
        f"/bulkhead/{spec.region}/rods/router-read-only": "off",
        # Not a rod: where the hosts' heartbeat goes, written down from Pulumi.global.yaml.
        f"/bulkhead/{spec.region}/heartbeat": '{"region": "ca-central-1", "roleArn": '
        '"arn:aws:iam::210987654321:role/bulkhead-heartbeat"}',
    }


def test_region_stack__every_alarm_notifies_the_topic(region):
    _, run = region
    (topic,) = run.of_type("aws:sns/topic:Topic")
    alarms = run.of_type("aws:cloudwatch/metricAlarm:MetricAlarm")
    assert {a.inputs["metricName"] for a in alarms} == {
        "Http5xx",
        "DynoBootSeconds",
        "WalArchiveLagSeconds",
        "EtcdUnhealthyMembers",
    }
    for alarm in alarms:
        assert alarm.inputs["alarmActions"] == [topic.state["arn"]]
        assert alarm.inputs["okActions"] == [topic.state["arn"]]


def test_region_stack__a_healthy_idle_platform_is_ok_and_a_stalled_archive_pages_within_two_minutes(region):
    _, run = region
    alarms = {a.inputs["metricName"]: a.inputs for a in run.of_type("aws:cloudwatch/metricAlarm:MetricAlarm")}
    # An idle platform publishes no requests and no boots: that silence must not page.
    assert {a["treatMissingData"] for a in alarms.values()} == {"notBreaching"}
    lag = alarms["WalArchiveLagSeconds"]
    assert (lag["threshold"], lag["period"], lag["evaluationPeriods"]) == (60, 60, 1)


def test_region_stack__the_alert_queue_hears_the_topic_and_only_it(region):
    _, run = region
    (topic,) = run.of_type("aws:sns/topic:Topic")
    (queue,) = run.of_type("aws:sqs/queue:Queue")
    (subscription,) = [s for s in run.of_type("aws:sns/topicSubscription:TopicSubscription")
                       if s.inputs["protocol"] == "sqs"]  # fmt: skip
    assert subscription.inputs["endpoint"] == queue.state["arn"]
    assert subscription.inputs["topic"] == topic.state["arn"]
    (policy,) = run.of_type("aws:sqs/queuePolicy:QueuePolicy")
    (statement,) = json.loads(policy.inputs["policy"])["Statement"]
    assert statement["Condition"] == {"ArnEquals": {"aws:SourceArn": topic.state["arn"]}}
    assert statement["Action"] == "sqs:SendMessage"


def test_region_stack__hosts_are_tagged_for_the_inventory_and_bootstrap_ansible(region):
    spec, run = region
    for group in run.of_type("aws:autoscaling/group:Group"):
        tags = _tags(group)
        assert tags["bulkhead:region"] == spec.region and tags["bulkhead:az"] in spec.availability_zones
        assert all(t["propagateAtLaunch"] for t in group.inputs["tags"])
    for instance in run.of_type("aws:ec2/instance:Instance"):
        assert instance.inputs["tags"]["bulkhead:role"] == "postgres"
        assert instance.inputs["tags"]["bulkhead:az"] == instance.inputs["availabilityZone"]
        assert "ansible-pull" in instance.inputs["userData"] and "roles/postgres.yml" in instance.inputs["userData"]
        # A first boot reads its tags from the metadata service, which needs them enabled.
        assert instance.inputs["metadataOptions"] == {
            "httpTokens": "required",
            "httpEndpoint": "enabled",
            "instanceMetadataTags": "enabled",
        }
    for template in run.of_type("aws:ec2/launchTemplate:LaunchTemplate"):
        assert template.inputs["metadataOptions"] == {
            "httpTokens": "required",
            "httpEndpoint": "enabled",
            "instanceMetadataTags": "enabled",
        }
        assert template.inputs["tagSpecifications"][0]["tags"]["bulkhead:role"] in {"router", "dyno_host"}


def test_region_stack__routers_bound_connections_per_backend(region):
    spec, run = region
    (template,) = [t for t in run.of_type("aws:ec2/launchTemplate:LaunchTemplate") if "router" in t.name]
    script = base64.b64decode(template.inputs["userData"]).decode()
    assert f'"router_max_connections_per_backend": {spec.max_connections_per_backend}' in script
