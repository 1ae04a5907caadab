"""The policy rules on the real program under mocks: the program passes, and each broken variant fails
exactly the rule that guards it, on exactly the resource that was broken."""

from __future__ import annotations

import copy
import datetime as dt
import json
import shutil

import pytest

from bulkhead.ops import policy_model, policy_rules
from bulkhead.ops.policy_model import Declared

pytestmark = pytest.mark.unit
TODAY = dt.date(2026, 11, 24)


@pytest.fixture(scope="module")
def records(planned) -> list[Declared]:
    """Every stack's declared resources, as `bulkhead check` reads them."""
    return [
        Declared(stack, "?", r.type, r.id, r.inputs, r.state)
        for stack, run in planned.items()
        for r in run.resources
        if r.custom
    ]


def _failures(records, root, waivers=None) -> set[tuple[str, str]]:
    """The failing (rule, resource) pairs; the checkout's own waivers apply unless others are given."""
    verdicts = policy_rules.evaluate(policy_model.declared(records), root, waivers, today=TODAY)
    return {(v.rule, v.resource) for v in verdicts if v.status == "fail"}


def _changed(records, type_token: str, match, change) -> tuple[list[Declared], Declared]:
    """The records with the first of a type that `match`es replaced by `change(copy of its inputs)`."""
    out, changed = [], None
    for record in records:
        if changed is None and record.type == type_token and match(record):
            inputs = copy.deepcopy(dict(record.inputs))
            change(inputs)
            record = Declared(record.stack, record.region, record.type, record.id, inputs, record.state)
            changed = record
        out.append(record)
    assert changed is not None, f"no {type_token} matched"
    return out, changed


def _archive(stack: str):
    return lambda r: r.stack == stack and r.inputs.get("bucket") == f"bulkhead-{stack}-archive"


def test_program__passes_every_rule_with_only_the_recorded_waivers(records, project_dir):
    verdicts = policy_rules.evaluate(policy_model.declared(records), project_dir, today=TODAY)
    assert [v for v in verdicts if v.status == "fail"] == []
    assert {(v.rule, v.resource) for v in verdicts if v.status == "waived"} == {("service-tls", "etcd")}
    # Every rule judged something: a rule that matches nothing would pass for ever.
    assert {v.rule for v in verdicts} == set(policy_rules.RULES) - {"passwords-are-secure-strings"}


def test_unencrypted_root_volume__fails_volumes_encrypted_for_that_template(records, project_dir):
    def unencrypt(inputs):
        inputs["blockDeviceMappings"][0]["ebs"]["encrypted"] = "false"

    broken, template = _changed(records, "aws:ec2/launchTemplate:LaunchTemplate", lambda r: True, unencrypt)
    assert _failures(broken, project_dir) == {("volumes-encrypted", template.id)}


def test_world_open_port_22__fails_the_security_group_rule(records, project_dir):
    def open_ssh(inputs):
        inputs["ingress"].append({"protocol": "tcp", "fromPort": 22, "toPort": 22, "cidrBlocks": ["0.0.0.0/0"]})

    broken, group = _changed(records, "aws:ec2/securityGroup:SecurityGroup", lambda r: "router" in r.id, open_ssh)
    assert _failures(broken, project_dir) == {("world-ingress-http-only", group.inputs.get("name") or group.id)}


def test_acl_allowing_22_before_its_deny__fails_remote_admin_and_tier_ports(records, project_dir):
    def allow_ssh(inputs):
        inputs["ingress"].append({"ruleNo": 5, "action": "allow", "protocol": "tcp", "fromPort": 22, "toPort": 22,
                                  "cidrBlock": "0.0.0.0/0"})  # fmt: skip

    broken, acl = _changed(records, "aws:ec2/networkAcl:NetworkAcl", lambda r: True, allow_ssh)
    assert _failures(broken, project_dir) == {("nacl-no-remote-admin", acl.id), ("nacl-tier-ports", acl.id)}


def test_archive_bucket_without_object_lock__fails_the_lock_rule(records, project_dir):
    locks = "aws:s3/bucketObjectLockConfiguration:BucketObjectLockConfiguration"
    (bucket,) = [r for r in records if r.type == "aws:s3/bucket:Bucket" and _archive("us-east-1")(r)]
    broken = [r for r in records if not (r.type == locks and r.inputs["bucket"] == bucket.id)]
    assert _failures(broken, project_dir) == {("archive-object-lock", "bulkhead-us-east-1-archive")}


def test_missing_owner_tag__fails_the_service_checklist_for_that_service_and_stack(records, project_dir):
    def untag(inputs):
        for spec in inputs["tagSpecifications"]:
            spec["tags"].pop("bulkhead:owner")

    router = lambda r: r.stack == "eu-west-1" and "router" in r.id  # noqa: E731
    broken, _ = _changed(records, "aws:ec2/launchTemplate:LaunchTemplate", router, untag)
    assert _failures(broken, project_dir) == {("service-owner", "router")}


def test_expired_waiver__fails_like_the_finding_it_waived(records, project_dir):
    expired = policy_rules.Waiver("service-tls", "etcd", "CA pending", TODAY - dt.timedelta(days=1))
    assert _failures(records, project_dir, [expired]) == {("service-tls", "etcd")}
    live = policy_rules.Waiver("service-tls", "etcd", "CA pending", TODAY + dt.timedelta(days=1))
    assert _failures(records, project_dir, [live]) == set()


def test_host_role_allowed_to_delete_archived_objects__fails(records, project_dir):
    def allow_delete(inputs):
        document = json.loads(inputs["policy"])
        document["Statement"][2]["Action"].append("s3:DeleteObject*")
        inputs["policy"] = json.dumps(document)

    database = lambda r: r.stack == "us-west-2" and "PutObject" in r.inputs["policy"]  # noqa: E731
    broken, policy = _changed(records, "aws:iam/rolePolicy:RolePolicy", database, allow_delete)
    assert _failures(broken, project_dir) == {("hosts-cannot-destroy-backups", policy.inputs["role"])}


def test_service_trust_without_source_account__fails(records, project_dir):
    def drop_condition(inputs):
        document = json.loads(inputs["assumeRolePolicy"])
        document["Statement"][0].pop("Condition")
        inputs["assumeRolePolicy"] = json.dumps(document)

    replication = lambda r: "s3.amazonaws.com" in r.inputs["assumeRolePolicy"]  # noqa: E731
    broken, role = _changed(records, "aws:iam/role:Role", replication, drop_condition)
    assert _failures(broken, project_dir) == {("trust-one-service", role.id)}


def test_imds_optional__fails_imdsv2(records, project_dir):
    def optional(inputs):
        inputs["metadataOptions"]["httpTokens"] = "optional"

    broken, instance = _changed(records, "aws:ec2/instance:Instance", lambda r: True, optional)
    assert _failures(broken, project_dir) == {("imdsv2-required", instance.inputs["tags"]["Name"])}


def test_password_in_user_data__fails_the_secret_rule(records, project_dir):
    def leak(inputs):
        inputs["userData"] = inputs["userData"] + "\nexport PGPASSWORD=hunter2hunter2\n"

    broken, instance = _changed(records, "aws:ec2/instance:Instance", lambda r: True, leak)
    assert _failures(broken, project_dir) == {("no-secrets-in-user-data", instance.inputs["tags"]["Name"])}


def test_repository_without_redirect_or_runbook__fails_tls_and_runbook_for_that_service(project_dir, tmp_path, records):
    root = tmp_path / "checkout"
    for part in ("roles", "runbooks"):
        shutil.copytree(project_dir / part, root / part)
    shutil.copy(project_dir / policy_rules.WAIVERS_FILE, root)
    template = root / "roles/router/templates/haproxy.cfg.j2"
    template.write_text(template.read_text().replace("redirect scheme https", "# no redirect"))
    for runbook in (root / "runbooks").glob("*.md"):
        runbook.write_text(runbook.read_text().replace("status_site", ""))
    failures = _failures(records, root)
    assert {rule for rule, _ in failures} == {"service-tls", "service-runbook"}
    assert {resource for rule, resource in failures if rule == "service-tls"} == {"router"}
    assert {resource for rule, resource in failures if rule == "service-runbook"} == {"status_site"}


def test_waivers_file__an_entry_without_a_reason_is_refused_in_one_line(tmp_path):
    (tmp_path / policy_rules.WAIVERS_FILE).write_text(
        '[[waiver]]\nrule = "service-tls"\nresource = "etcd"\nexpires = 2027-01-01\n'
    )
    with pytest.raises(policy_rules.UsageError, match="waiver 1 lacks reason"):
        policy_rules.load_waivers(tmp_path)


def test_acl_evaluation__the_lowest_numbered_match_decides_and_nothing_matching_denies():
    entries = [
        {"rule": 20, "action": "deny", "protocol": "tcp", "from": 22, "to": 22, "cidr": "0.0.0.0/0"},
        {"rule": 100, "action": "allow", "protocol": "-1", "from": 0, "to": 0, "cidr": "0.0.0.0/0"},
        {"rule": 10, "action": "allow", "protocol": "-1", "from": 0, "to": 0, "cidr": "10.0.0.0/16"},
    ]
    assert not policy_rules.admits(entries, "tcp", 22)
    assert policy_rules.admits(entries, "tcp", 23)
    assert policy_rules.admits(entries, "tcp", 22, source=policy_rules.ipaddress.ip_address("10.0.0.5"))
    assert not policy_rules.admits([], "tcp", 443)


@pytest.mark.parametrize(
    ("removed", "rules", "count"),
    [
        ("aws:ebs/encryptionByDefault:EncryptionByDefault", {"ebs-encryption-by-default"}, 1),
        ("aws:ec2/flowLog:FlowLog", {"vpc-flow-logs"}, 3),
        ("aws:s3/bucketLogging:BucketLogging", {"archive-access-logs"}, 6),
        ("aws:kms/key:Key", {"archive-kms-key"}, 6),
        ("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration", {"archive-lifecycle"}, 6),
        ("aws:s3/bucketPolicy:BucketPolicy", {"buckets-private-tls-only"}, 12),
        ("aws:ec2/defaultSecurityGroup:DefaultSecurityGroup", {"default-security-group-empty"}, 3),
        ("aws:ec2/defaultNetworkAcl:DefaultNetworkAcl", {"nacl-no-remote-admin", "nacl-tier-ports"}, 6),
        ("aws:cloudwatch/metricAlarm:MetricAlarm", {"service-alarm"}, 5),
    ],
)
def test_a_protection_left_out__fails_its_rule_on_every_resource_it_protected(records, project_dir, removed, rules,
                                                                                count):  # fmt: skip
    # Written down, as distinct (rule, resource) pairs: 3 VPCs, 6 archive buckets (archive and replica per region),
    # 6 log buckets, 5 services (router, dyno_host, postgres, etcd, status_site); the test names every region "?".
    failures = _failures([r for r in records if r.type != removed], project_dir)
    assert {rule for rule, _ in failures} == rules
    assert len(failures) == count


def test_endpoint_policy_for_any_bucket_and_a_plain_string_password__fail_their_rules(records, project_dir):
    def any_bucket(inputs):
        inputs["policy"] = json.dumps({"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:*",
                                                      "Resource": "*"}]})  # fmt: skip

    broken, endpoint = _changed(records, "aws:ec2/vpcEndpoint:VpcEndpoint", lambda r: True, any_bucket)
    leaked = Declared("us-east-1", "us-east-1", "aws:ssm/parameter:Parameter", "p",
                      {"name": "/bulkhead/us-east-1/postgres/pg/app-password", "type": "String"}, {})  # fmt: skip
    assert _failures([*broken, leaked], project_dir) == {
        ("s3-endpoint-platform-buckets", endpoint.id),
        ("passwords-are-secure-strings", "/bulkhead/us-east-1/postgres/pg/app-password"),
    }
