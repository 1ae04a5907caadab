"""The baker's side of `bulkhead image bake`, against a moto server: what it skips, what it makes, and that it
removes what it made when a bake fails. The instance's side (the bake's user data, the image taken from its disk)
runs in the first-boot module; here the test tags the instance as its user data would."""

from __future__ import annotations

import threading
import time

import boto3
import pytest

from bulkhead import bake, bootstrap
from bulkhead.localcloud import server
from bulkhead.localcloud.aws import LOCAL_CREDENTIALS

pytestmark = pytest.mark.moto
REGION = "eu-west-1"
PLAN = bake.Plan(REGION, "router", "git://relay/bulkhead.git", "0" * 40, "0123456789ab", "136693071363",
                 "debian-12-amd64-*", "c6i.large")  # fmt: skip


@pytest.fixture(scope="module")
def clients(tmp_path_factory):
    directory = tmp_path_factory.mktemp("moto")
    info = server.start(directory)
    made = {name: boto3.client(name, endpoint_url=info.endpoint, region_name=REGION, **LOCAL_CREDENTIALS)
            for name in ("ec2", "iam")}  # fmt: skip
    yield made
    server.stop(directory)


def _answer_as_the_instance(ec2, value: str) -> threading.Thread:
    """Tags the bake's instance `bulkhead:bake` = value once it is launched, as its user data's end does."""

    def answer() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            wanted = [{"Name": f"tag:{bootstrap.BAKE_TAG}", "Values": ["running"]},
                      {"Name": "instance-state-name", "Values": ["running"]}]  # fmt: skip
            found = ec2.describe_instances(Filters=wanted)
            for instance in (i for r in found["Reservations"] for i in r["Instances"]):
                ec2.create_tags(Resources=[instance["InstanceId"]], Tags=[{"Key": bootstrap.BAKE_TAG, "Value": value}])
                return
            time.sleep(0.2)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return thread


def _bake_leftovers(ec2, iam) -> dict:
    groups = [g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"]
              if g["GroupName"].startswith(f"{PLAN.name}-bake-")]  # fmt: skip
    roles = [r["RoleName"] for r in iam.list_roles()["Roles"] if r["RoleName"].startswith(f"{PLAN.name}-bake-")]
    found = ec2.describe_instances(Filters=[{"Name": "tag:bulkhead:installDigest", "Values": [PLAN.digest]}])
    alive = [i["InstanceId"] for r in found["Reservations"] for i in r["Instances"]
             if i["State"]["Name"] not in ("terminated", "shutting-down")]  # fmt: skip
    return {"groups": groups, "roles": roles, "instances": alive}


def test_bake__a_failed_install_part_is_reported_and_what_the_bake_made_is_removed(clients):
    ec2, iam = clients["ec2"], clients["iam"]
    # Given: the instance's user data fails (its exit trap tags it `failed`)
    answering = _answer_as_the_instance(ec2, "failed")
    # When: the bake runs; Then: it fails naming the instance and where to look
    with pytest.raises(bake.BakeError, match=r"the bake on i-[0-9a-f]+ failed: see its console output"):
        bake.bake(ec2, iam, PLAN, timeout=60)
    answering.join()
    # And: its instance, security group, role and profile are gone; no image was registered
    assert _bake_leftovers(ec2, iam) == {"groups": [], "roles": [], "instances": []}
    assert iam.list_instance_profiles()["InstanceProfiles"] == []
    assert bake.find(ec2, PLAN.name) is None


def test_bake__the_instance_is_the_base_image_encrypted_and_may_only_tag_itself(clients):
    ec2, iam = clients["ec2"], clients["iam"]
    seen: dict = {}

    def inspect(step: str) -> None:
        if step.startswith("instance ") and not seen:
            instance_id = step.split()[1]
            (reservation,) = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
            seen["instance"] = reservation["Instances"][0]
            profile = iam.list_instance_profiles()["InstanceProfiles"][0]
            role = profile["Roles"][0]["RoleName"]
            seen["policy"] = iam.get_role_policy(RoleName=role, PolicyName="tag-own-instance")["PolicyDocument"]
            volumes = [m["Ebs"]["VolumeId"] for m in seen["instance"]["BlockDeviceMappings"]]
            seen["volumes"] = ec2.describe_volumes(VolumeIds=volumes)["Volumes"]

    answering = _answer_as_the_instance(ec2, "failed")
    with pytest.raises(bake.BakeError):
        bake.bake(ec2, iam, PLAN, on_step=inspect, timeout=60)
    answering.join()
    instance = seen["instance"]
    assert instance["ImageId"] == "ami-0d3b4e5f6a7b8c9d0"  # the newest debian-12-amd64-* of Debian's account
    assert instance["MetadataOptions"]["HttpTokens"] == "required"
    (volume,) = seen["volumes"]
    assert volume["Encrypted"] is True
    (statement,) = seen["policy"]["Statement"]
    assert statement["Action"] == "ec2:CreateTags"
    assert statement["Condition"]["StringEquals"] == {"aws:ARN": "${ec2:SourceInstanceARN}"}
    assert statement["Condition"]["ForAllValues:StringEquals"] == {"aws:TagKeys": [bootstrap.BAKE_TAG]}


def test_bake__an_image_of_the_same_install_inputs_means_nothing_to_do(clients):
    ec2, iam = clients["ec2"], clients["iam"]
    # Given: this account has the tier's image of these inputs
    registered = ec2.register_image(Name=PLAN.name, Architecture="x86_64", RootDeviceName="/dev/xvda")["ImageId"]
    launched_before = len(ec2.describe_instances()["Reservations"])
    # When: the bake runs; Then: it returns that image and launches nothing
    baked = bake.bake(ec2, iam, PLAN, timeout=60)
    assert (baked.image_id, baked.fresh) == (registered, False)
    assert len(ec2.describe_instances()["Reservations"]) == launched_before
