"""After `bulkhead local up`, boto3 against the endpoint sees what the program declares, per AZ."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bulkhead import project, s3compat, topology
from bulkhead.hosts import inventory
from bulkhead.hosts.sandbox import Sandboxes
from bulkhead.localcloud import cloud
from bulkhead.localcloud.aws import LocalAws, local_environment
from bulkhead.ops import check, policy_live, policy_rules

pytestmark = pytest.mark.moto

PROJECT_DIR = project.find(start=Path(__file__).parent)
REGIONS = [s for s in topology.stack_names(PROJECT_DIR) if s != topology.GLOBAL_STACK]
GLOBAL = topology.read_stack_config(PROJECT_DIR, "global")


def _config(region: str) -> dict:
    """The stack's file as written: the test's input, not a value the code under test computed."""
    return topology.read_stack_config(PROJECT_DIR, region)


def _running(clients, region: str, role: str) -> list[dict]:
    reservations = clients("ec2", region).describe_instances(
        Filters=[
            {"Name": "tag:bulkhead:role", "Values": [role]},
            {"Name": "instance-state-name", "Values": ["running"]},
        ]
    )["Reservations"]
    return [i for r in reservations for i in r["Instances"]]


@pytest.mark.parametrize("region", REGIONS)
def test_up__vpc_with_public_and_private_subnets_in_three_azs(deployed, region):
    _, clients, _ = deployed
    ec2 = clients("ec2", region)
    (vpc,) = ec2.describe_vpcs(Filters=[{"Name": "tag:bulkhead:stack", "Values": [region]}])["Vpcs"]
    assert vpc["CidrBlock"] == _config(region)["bulkhead:vpcCidr"]
    subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc["VpcId"]]}])["Subnets"]
    assert len(subnets) == 6
    assert {s["AvailabilityZone"] for s in subnets} == set(_config(region)["bulkhead:availabilityZones"])


@pytest.mark.parametrize("region", REGIONS)
def test_up__routers_and_dyno_hosts_really_run_in_every_az(deployed, region):
    _, clients, _ = deployed
    config = _config(region)
    zones = set(config["bulkhead:availabilityZones"])
    routers = _running(clients, region, "router")
    assert len(routers) == config["bulkhead:routersPerAz"] * 3
    assert {i["Placement"]["AvailabilityZone"] for i in routers} == zones
    dynos = _running(clients, region, "dyno_host")
    assert len(dynos) == config["bulkhead:cells"] * config["bulkhead:dynoHostsPerCellAz"] * 3
    for cell in range(1, config["bulkhead:cells"] + 1):
        in_cell = [i for i in dynos if {"Key": "bulkhead:cell", "Value": str(cell)} in i["Tags"]]
        assert {i["Placement"]["AvailabilityZone"] for i in in_cell} == zones
    for instance in routers + dynos:
        tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
        assert tags["bulkhead:az"] == instance["Placement"]["AvailabilityZone"]
        assert tags["bulkhead:region"] == region


@pytest.mark.parametrize("region", REGIONS)
def test_up__load_balancer_spans_three_azs_with_its_target_groups(deployed, region):
    _, clients, reports = deployed
    elb = clients("elbv2", region)
    (balancer,) = elb.describe_load_balancers()["LoadBalancers"]
    assert balancer["DNSName"] == reports[region].outputs["routerLbDnsName"]
    assert len({zone["ZoneName"] for zone in balancer["AvailabilityZones"]}) == 3
    listeners = elb.describe_listeners(LoadBalancerArn=balancer["LoadBalancerArn"])["Listeners"]
    assert sorted(listener["Port"] for listener in listeners) == [80, 443]
    groups = elb.describe_target_groups(LoadBalancerArn=balancer["LoadBalancerArn"])["TargetGroups"]
    assert sorted(g["Port"] for g in groups) == [80, 443]
    asg = clients("autoscaling", region)
    routers = [
        g for g in asg.describe_auto_scaling_groups()["AutoScalingGroups"]
        if {"router"} & {t["Value"] for t in g["Tags"] if t["Key"] == "bulkhead:role"}
    ]  # fmt: skip
    assert len(routers) == 3
    for group in routers:
        assert sorted(group["TargetGroupARNs"]) == sorted(g["TargetGroupArn"] for g in groups)
        warm = asg.describe_warm_pool(AutoScalingGroupName=group["AutoScalingGroupName"])["WarmPoolConfiguration"]
        assert warm["PoolState"] == "Stopped"


@pytest.mark.parametrize("region", REGIONS)
def test_up__a_database_member_runs_in_each_az_at_its_fixed_address(deployed, region):
    _, clients, _ = deployed
    hosts = sorted(_running(clients, region, "postgres"), key=lambda i: i["Placement"]["AvailabilityZone"])
    assert [i["Placement"]["AvailabilityZone"] for i in hosts] == _config(region)["bulkhead:availabilityZones"]
    # The 10th address from the top of each AZ's private /20: 143.245, 159.245, 175.245 of the VPC's /16.
    prefix = ".".join(_config(region)["bulkhead:vpcCidr"].split(".")[:2])
    assert [i["PrivateIpAddress"] for i in hosts] == [f"{prefix}.143.245", f"{prefix}.159.245", f"{prefix}.175.245"]


@pytest.mark.parametrize("region", REGIONS)
def test_up__archive_bucket_is_versioned_encrypted_and_replicated_to_the_partner(deployed, region):
    _, clients, reports = deployed
    outputs = reports[region].outputs
    s3 = clients("s3", region)
    bucket = outputs["archiveBucket"]
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    key = clients("kms", region).describe_key(KeyId=rules[0]["ApplyServerSideEncryptionByDefault"]["KMSMasterKeyID"])
    assert key["KeyMetadata"]["KeyManager"] == "CUSTOMER"
    lock = s3.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
    assert lock["Rule"]["DefaultRetention"]["Mode"] == "GOVERNANCE"
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert all(block.values())
    replication = s3.get_bucket_replication(Bucket=bucket)["ReplicationConfiguration"]
    assert replication["Rules"][0]["Destination"]["Bucket"] == f"arn:aws:s3:::{outputs['archiveReplicaBucket']}"
    partner = _config(region)["bulkhead:partnerRegion"]
    location = s3.get_bucket_location(Bucket=outputs["archiveReplicaBucket"])["LocationConstraint"]
    assert (location or "us-east-1") == partner


def test_up__global_zone_has_primary_and_secondary_records_with_health_checks(deployed):
    _, clients, reports = deployed
    route53 = clients("route53", "us-east-1")
    zone_id = reports["global"].outputs["zoneId"]
    records = route53.list_resource_record_sets(HostedZoneId=zone_id)["ResourceRecordSets"]
    checks = {c["Id"]: c for c in route53.list_health_checks()["HealthChecks"]}
    for service in GLOBAL["bulkhead:services"]:
        mine = [r for r in records if r["Name"].rstrip(".") == f"{service}.{GLOBAL['bulkhead:domain']}"]
        assert {r["Failover"] for r in mine} == {"PRIMARY", "SECONDARY"}
        for record in mine:
            region = GLOBAL["bulkhead:primaryRegion" if record["Failover"] == "PRIMARY" else "bulkhead:secondaryRegion"]
            assert record["ResourceRecords"] == [{"Value": reports[region].outputs["routerLbDnsName"]}]
            assert (
                checks[record["HealthCheckId"]]["HealthCheckConfig"]["FullyQualifiedDomainName"]
                == (reports[region].outputs["routerLbDnsName"])
            )


def test_up__status_site_lives_in_the_status_account_and_region_only(deployed):
    _, clients, reports = deployed
    role = clients("sts", "us-east-1").assume_role(RoleArn=GLOBAL["bulkhead:statusRoleArn"], RoleSessionName="test")
    credentials = role["Credentials"]
    status = {
        "aws_access_key_id": credentials["AccessKeyId"],
        "aws_secret_access_key": credentials["SecretAccessKey"],
        "aws_session_token": credentials["SessionToken"],
    }
    region = GLOBAL["bulkhead:statusRegion"]
    assert clients("sts", region, **status).get_caller_identity()["Account"] == "210987654321"
    s3 = clients("s3", region, **status)
    bucket = reports["global"].outputs["statusBucket"]
    assert s3.get_bucket_location(Bucket=bucket)["LocationConstraint"] == region
    page = s3.get_object(Bucket=bucket, Key="index.html")["Body"].read().decode()
    assert "<title>platform.example.net status</title>" in page
    distributions = clients("cloudfront", "us-east-1", **status).list_distributions()["DistributionList"]["Items"]
    assert [d["DomainName"] for d in distributions] == [reports["global"].outputs["statusUrl"][len("https://") :]]
    platform_buckets = [b["Name"] for b in clients("s3", "us-east-1").list_buckets()["Buckets"]]
    assert bucket not in platform_buckets
    assert clients("cloudfront", "us-east-1").list_distributions()["DistributionList"].get("Quantity", 0) == 0


def test_up__archive_accepts_objects_though_moto_cannot_evaluate_the_tls_condition(deployed):
    """moto ignores policy conditions: the TLS-only Deny stays declared but is not installed locally."""
    store, clients, reports = deployed
    s3 = clients("s3", "us-east-1")
    bucket = reports["us-east-1"].outputs["archiveBucket"]
    s3.put_object(Bucket=bucket, Key="pg-us-east-1/probe", Body=b"x")
    assert s3.get_object(Bucket=bucket, Key="pg-us-east-1/probe")["Body"].read() == b"x"
    (policy,) = [r for r in store.load("us-east-1").resources.values() if r.type == "aws:s3/bucketPolicy:BucketPolicy"
                 and r.inputs["bucket"] == bucket]  # fmt: skip
    assert "aws:SecureTransport" in policy.inputs["policy"] and policy.state["enforcedLocally"] == ""


def test_inventory__local_groups_are_the_ones_the_aws_ec2_plugin_makes_from_the_same_instances(deployed, tmp_path):
    """Playbooks target groups by name: the sandboxes' inventory must group hosts as the AWS one does."""
    store, clients, _ = deployed
    environment = {**os.environ, **local_environment(), **s3compat.environment(clients.endpoint),
                   "AWS_ENDPOINT_URL": clients.endpoint, "ANSIBLE_INVENTORY_ENABLED": "amazon.aws.aws_ec2"}  # fmt: skip
    listed = subprocess.run(
        [str(Path(sys.prefix) / "bin" / "ansible-inventory"), "-i", str(PROJECT_DIR / "roles/inventory/aws_ec2.yml"),
         "--list"],
        capture_output=True, text=True, env=environment, timeout=120, check=True,
    )  # fmt: skip
    aws = {name: set(group.get("hosts", [])) for name, group in json.loads(listed.stdout).items()}
    local: dict[str, set[str]] = {}
    for region in REGIONS:
        specs = inventory.local_hosts(region, store, PROJECT_DIR)
        address = {s.name: s.address for s in specs}
        document = inventory.inventory(specs, Sandboxes(tmp_path / region))
        for name, group in document["all"]["children"].items():
            local.setdefault(name, set()).update(address[h] for h in group["hosts"])
    assert {name: hosts for name, hosts in aws.items() if name not in ("all", "aws_ec2", "ungrouped", "_meta")} == local
    assert {"role_router", "role_dyno_host", "postgres_primary", "postgres_standby", "region_eu_west_1"} <= set(local)


def test_up__a_new_ansible_ref_updates_user_data_in_place_keeping_every_instance(deployed, project_dir):
    # Runs last: it changes the shared deployment (only the hosts' user data).
    local, clients, _ = deployed
    region = "eu-west-1"
    before = {i["InstanceId"]: i["PrivateIpAddress"] for i in _running(clients, region, "postgres")}
    cloud.up([region], local, project_dir=project_dir, ansible_ref="refs/heads/elsewhere")
    after = {i["InstanceId"]: i["PrivateIpAddress"] for i in _running(clients, region, "postgres")}
    assert after == before, "no database member was replaced"
    ec2 = clients("ec2", region)
    for instance_id in after:
        data = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")["UserData"]["Value"]
        assert "refs/heads/elsewhere" in base64.b64decode(data).decode()
    (template,) = [t for t in ec2.describe_launch_templates()["LaunchTemplates"] if "cell1" in t["LaunchTemplateName"]]
    assert template["LatestVersionNumber"] == 2 and template["DefaultVersionNumber"] == 2


# --- `bulkhead check --live` on this deployment: it passes, and a fault done through the AWS APIs fails its rule ---

TODAY = dt.date(2026, 11, 24)


def _verdicts(deployed, project_dir) -> list[policy_rules.Verdict]:
    store, clients, _ = deployed
    stacks = ["eu-west-1", "us-east-1", "us-west-2", "global"]
    declared = [d for s in stacks for d in policy_live.declared_from_state(s, store.load(s).resources.values())]
    reader = policy_live.Reader(LocalAws(clients.endpoint).client, declared)
    items = reader.read(check.scopes(topology.StackFiles(project_dir), stacks))
    return policy_rules.evaluate(items, project_dir, today=TODAY)


def _failures(verdicts) -> set[tuple[str, str]]:
    return {(v.rule, v.resource) for v in verdicts if v.status == "fail"}


def test_check_live__a_fresh_local_up_of_every_stack_passes(deployed, project_dir):
    verdicts = _verdicts(deployed, project_dir)
    assert _failures(verdicts) == set()
    judged = {v.rule for v in verdicts}
    assert judged >= {"imdsv2-required", "volumes-encrypted", "archive-object-lock", "nacl-no-remote-admin",
                      "trust-one-service", "service-alarm", "ebs-encryption-by-default"}  # fmt: skip
    # The Auto Scaling groups' instances are judged, not only their templates: EC2 carries the template's
    # metadata options and volumes onto them (the local cloud does as EC2 does).
    instances = [v for v in verdicts if v.rule == "imdsv2-required" and v.resource.startswith("i-")]
    assert len(instances) >= 12
    # What moto cannot hold is read from the local cloud's record, and the row says so.
    notes = [v.note for v in verdicts if v.rule == "buckets-private-tls-only"]
    assert notes and all("local cloud's record" in n for n in notes)


def test_check_live__a_world_open_22_and_an_imdsv1_instance_fail_their_rules(deployed, project_dir):
    _, clients, _ = deployed
    ec2 = clients("ec2", "us-west-2")
    (group,) = ec2.describe_security_groups(
        Filters=[{"Name": "tag:bulkhead:stack", "Values": ["us-west-2"]},
                 {"Name": "description", "Values": ["Bulkhead routers*"]}]
    )["SecurityGroups"]  # fmt: skip
    instance = ec2.describe_instances(Filters=[{"Name": "tag:bulkhead:role", "Values": ["dyno_host"]}])[
        "Reservations"][0]["Instances"][0]  # fmt: skip
    ssh = [{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]
    ec2.authorize_security_group_ingress(GroupId=group["GroupId"], IpPermissions=ssh)
    ec2.modify_instance_metadata_options(InstanceId=instance["InstanceId"], HttpTokens="optional")
    try:
        failures = _failures(_verdicts(deployed, project_dir))
    finally:
        ec2.revoke_security_group_ingress(GroupId=group["GroupId"], IpPermissions=ssh)
        ec2.modify_instance_metadata_options(InstanceId=instance["InstanceId"], HttpTokens="required")
    assert failures == {("world-ingress-http-only", group["GroupName"]), ("imdsv2-required", instance["InstanceId"])}


def test_check_cli__prints_a_row_per_rule_and_exits_zero_on_the_program(project_dir):
    done = subprocess.run([sys.executable, "-m", "bulkhead.cli", "check", "--stacks", "eu-west-1", "--json"],
                          capture_output=True, text=True, cwd=project_dir, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["counts"].get("fail", 0) == 0 and report["counts"]["pass"] > 50
    bad = subprocess.run([sys.executable, "-m", "bulkhead.cli", "check", "--stacks", "nowhere"],
                         capture_output=True, text=True, cwd=project_dir, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "unknown stack nowhere" in bad.stderr


def test_check_live__through_the_aws_path_reads_live_policies_and_sees_what_moto_dropped(
    deployed, project_dir, tmp_path
):
    # Given no local cloud for the checkout, `check --live` takes the AWS path: boto3's own credentials and
    # endpoint (here the same moto server, as AWS_ENDPOINT_URL), the status stack through its role, and no
    # record of what was declared
    _, clients, _ = deployed
    environment = {**os.environ, **local_environment(), "AWS_ENDPOINT_URL": clients.endpoint,
                   "BULKHEAD_LOCAL_DIR": str(tmp_path / "no-local-cloud")}  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "bulkhead.cli", "check", "--live", "--json"], cwd=project_dir,
                          env=environment, capture_output=True, text=True, timeout=300)  # fmt: skip
    report = json.loads(done.stdout)
    # Then it reads every stack, and the only failures are the TLS-only Denies that moto could not hold:
    # read live, as on AWS, they are missing, and the rule says so
    assert report["source"] == "the AWS account of the current credentials"
    failed = {(v["rule"], v["stack"]) for v in report["verdicts"] if v["status"] == "fail"}
    assert failed == {("buckets-private-tls-only", stack) for stack in REGIONS}
    assert done.returncode == 1
    assert {v["stack"] for v in report["verdicts"] if v["status"] == "pass"} == {*REGIONS, "global"}
