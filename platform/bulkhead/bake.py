"""`bulkhead image bake`: a tier's install part made into an AMI, the way Packer's amazon-ebs builder makes one.

1. The AMI's name says what it holds: `bulkhead-<tier>-<digest of the install inputs>` at the commit the hosts
   will pull (`bulkhead.install_inputs`). An AMI of that name that is available already: nothing to do.
2. A temporary security group (no ingress) in the region's default VPC and a temporary instance profile whose
   only right is to tag its own instance `bulkhead:bake`.
3. RunInstances of the base AMI (the one the program would pick), its root volume encrypted, with the bake's
   user data (`bootstrap.bake_user_data`): the install part of the tier's playbook, and nothing of the instance.
4. The bake's end is the instance's tag `bulkhead:bake`: `done <digest>`, or `failed`.
5. StopInstances, CreateImage with the tier's tags, and wait for the image to be `available`.
6. The instance, the security group and the profile are removed whatever happened.

Every step is an EC2 or IAM call; the local cloud answers them as AWS would (it boots the instance, and takes the
image from its disk).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from bulkhead import bootstrap, install_inputs
from bulkhead.errors import BulkheadError

ROOT_VOLUME_GIB = 20
DONE, FAILED = "done", "failed"
BAKE_TIMEOUT = 1800.0
POLL = 2.0


class BakeError(BulkheadError):
    """A bake could not be made; the message names the step and what to look at."""


@dataclass(frozen=True)
class Plan:
    """What to bake: decided before any call."""

    region: str
    tier: str
    repo: str
    commit: str
    digest: str
    image_owner: str
    image_name_pattern: str
    instance_type: str

    @property
    def name(self) -> str:
        return install_inputs.image_name(self.tier, self.digest)

    def tags(self) -> list[dict[str, str]]:
        return [{"Key": "bulkhead:tier", "Value": self.tier}, {"Key": "bulkhead:installDigest", "Value": self.digest},
                {"Key": "bulkhead:commit", "Value": self.commit}]  # fmt: skip


@dataclass(frozen=True)
class Baked:
    image_id: str
    name: str
    fresh: bool
    seconds: float
    instance_id: str = ""


def commit_of(project_dir: Path, ref: str) -> str:
    """The commit `ref` names in this checkout (its install inputs are read from here)."""
    found = subprocess.run(["git", "-C", str(project_dir), "rev-parse", "--verify", "-q", f"{ref}^{{commit}}"],
                           capture_output=True, text=True, check=False)  # fmt: skip
    if found.returncode != 0:
        raise BakeError(f"ref {ref} is not in the checkout at {project_dir}, so its install inputs are unknown: "
                        "`git fetch` it, or bake another --ref")  # fmt: skip
    return found.stdout.strip()


def digests_at(project_dir: Path, commit: str, tiers: Iterable[str]) -> dict[str, str]:
    """Each tier's install digest at `commit`, read from the checkout's history (not its working tree): one
    archive of the commit for every tier."""
    archive = subprocess.run(["git", "-C", str(project_dir), "archive", "--format=tar", commit, "roles", "platform",
                              "pyproject.toml"], capture_output=True, check=False)  # fmt: skip
    if archive.returncode != 0:
        raise BakeError(f"commit {commit} lacks roles/, platform/ or pyproject.toml: {archive.stderr.decode().strip()}")
    with tempfile.TemporaryDirectory(prefix="bulkhead-bake-") as scratch:
        with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
            tar.extractall(scratch, filter="data")
        return {tier: install_inputs.digest(Path(scratch), tier) for tier in tiers}


def find(ec2, name: str) -> dict | None:
    """This account's image of that name (its newest), if any."""
    images = ec2.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])["Images"]
    return max(images, key=lambda i: i.get("CreationDate", "")) if images else None


def bake(ec2, iam, plan: Plan, on_step: Callable[[str], None] = lambda _: None,
         timeout: float = BAKE_TIMEOUT) -> Baked:  # fmt: skip
    """Make the plan's AMI unless it exists; returns it (raises `BakeError`, having removed what it made)."""
    started = time.monotonic()
    existing = find(ec2, plan.name)
    if existing and existing["State"] in ("available", "pending"):
        on_step(f"{plan.name} exists already ({existing['ImageId']}, {existing['State']})")
        image = _wait_image(ec2, existing["ImageId"], timeout, on_step)
        return Baked(image["ImageId"], plan.name, False, round(time.monotonic() - started, 1))
    base = _base_image(ec2, plan)
    on_step(f"baking {plan.name} from {base['ImageId']} ({base['Name']}) at commit {plan.commit[:12]}")
    made: dict[str, str] = {}
    try:
        subnet = _default_subnet(ec2, plan.region)
        made["group"] = ec2.create_security_group(
            GroupName=f"{plan.name}-bake-{int(time.time())}", VpcId=subnet["VpcId"],
            Description=f"bulkhead bake of {plan.name}: no ingress",
        )["GroupId"]  # fmt: skip
        made["profile"] = _profile(iam, plan, made)
        instance_id = _run(ec2, plan, base, subnet, made, timeout)
        made["instance"] = instance_id
        on_step(f"instance {instance_id} installing the {plan.tier} tier's install part")
        _wait_signal(ec2, instance_id, plan, timeout, on_step)
        on_step(f"install part done on {instance_id}: stopping it")
        ec2.stop_instances(InstanceIds=[instance_id])
        _wait_instance(ec2, instance_id, "stopped", 600)
        image_id = ec2.create_image(
            InstanceId=instance_id, Name=plan.name,
            Description=f"bulkhead {plan.tier} tier, install part at {plan.commit}",
            TagSpecifications=[{"ResourceType": "image", "Tags": [*plan.tags(), {"Key": "Name", "Value": plan.name}]}],
        )["ImageId"]  # fmt: skip
        on_step(f"image {image_id} being taken from {instance_id}")
        _wait_image(ec2, image_id, timeout, on_step)
        on_step(f"{plan.name} available: {image_id}")
        return Baked(image_id, plan.name, True, round(time.monotonic() - started, 1), instance_id)
    finally:
        _clean(ec2, iam, made)


def _base_image(ec2, plan: Plan) -> dict:
    wanted = [{"Name": "name", "Values": [plan.image_name_pattern]}, {"Name": "architecture", "Values": ["x86_64"]}]
    images = ec2.describe_images(Owners=[plan.image_owner], Filters=wanted)["Images"]
    if not images:
        raise BakeError(f"no base image in {plan.region} named {plan.image_name_pattern} of owner {plan.image_owner}: "
                        "check bulkhead:imageOwner and bulkhead:imageNamePattern")  # fmt: skip
    return max(images, key=lambda i: i.get("CreationDate", ""))


def _default_subnet(ec2, region: str) -> dict:
    subnets = ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"]
    if not subnets:
        raise BakeError(f"region {region} has no default VPC subnet to bake in: create one with "
                        "`aws ec2 create-default-vpc --region {region}`")  # fmt: skip
    return sorted(subnets, key=lambda s: s["AvailabilityZone"])[0]


def _profile(iam, plan: Plan, made: dict[str, str]) -> str:
    """A role and instance profile that may tag its own instance `bulkhead:bake`, and nothing else."""
    name = f"{plan.name}-bake-{int(time.time())}"[:64]
    trust = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}  # fmt: skip
    policy = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": "ec2:CreateTags", "Resource": "arn:aws:ec2:*:*:instance/*",
        "Condition": {"StringEquals": {"aws:ARN": "${ec2:SourceInstanceARN}"},
                      "ForAllValues:StringEquals": {"aws:TagKeys": [bootstrap.BAKE_TAG]}},
    }]}  # fmt: skip
    iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))
    made["role"] = name
    iam.put_role_policy(RoleName=name, PolicyName="tag-own-instance", PolicyDocument=json.dumps(policy))
    arn = iam.create_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Arn"]
    iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    return arn


def _run(ec2, plan: Plan, base: dict, subnet: dict, made: dict[str, str], timeout: float) -> str:
    request = dict(
        ImageId=base["ImageId"], InstanceType=plan.instance_type, MinCount=1, MaxCount=1, SubnetId=subnet["SubnetId"],
        SecurityGroupIds=[made["group"]], IamInstanceProfile={"Arn": made["profile"]},
        UserData=bootstrap.bake_user_data(plan.tier, plan.region, plan.repo, plan.commit),
        MetadataOptions={"HttpTokens": "required", "HttpEndpoint": "enabled", "InstanceMetadataTags": "enabled"},
        BlockDeviceMappings=[{"DeviceName": base.get("RootDeviceName") or "/dev/xvda", "Ebs": {
            "Encrypted": True, "VolumeType": "gp3", "VolumeSize": ROOT_VOLUME_GIB, "DeleteOnTermination": True}}],
        TagSpecifications=[{"ResourceType": "instance", "Tags": [*plan.tags(), {"Key": bootstrap.BAKE_TAG,
                            "Value": "running"}, {"Key": "Name", "Value": f"{plan.name}-bake"}]}],
    )  # fmt: skip
    deadline = time.monotonic() + min(timeout, 60)
    while True:
        try:
            return ec2.run_instances(**request)["Instances"][0]["InstanceId"]
        except ec2.exceptions.ClientError as error:
            # A new instance profile takes seconds to be usable by EC2 (IAM is eventually consistent).
            if "iamInstanceProfile" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(POLL)


def _tags(ec2, instance_id: str) -> tuple[str, dict[str, str]]:
    (reservation,) = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    instance = reservation["Instances"][0]
    return instance["State"]["Name"], {t["Key"]: t["Value"] for t in instance.get("Tags", [])}


def _wait_signal(ec2, instance_id: str, plan: Plan, timeout: float, on_step: Callable[[str], None]) -> None:
    started = time.monotonic()
    said = started
    while True:
        state, tags = _tags(ec2, instance_id)
        signal = tags.get(bootstrap.BAKE_TAG, "")
        if signal == f"{DONE} {plan.digest}":
            return
        if signal.startswith(DONE):
            raise BakeError(f"instance {instance_id} baked install inputs {signal.split()[-1]}, not {plan.digest}: "
                            "the repository's commit differs from this checkout's")  # fmt: skip
        if signal == FAILED:
            raise BakeError(f"the bake on {instance_id} failed: see its console output (`aws ec2 "
                            "get-console-output`, or /var/log/cloud-init-output.log in its sandbox)")  # fmt: skip
        if state not in ("pending", "running"):
            raise BakeError(f"instance {instance_id} went {state} before its bake ended")
        if time.monotonic() - started > timeout:
            raise BakeError(f"the bake on {instance_id} did not end within {timeout:.0f} s")
        if time.monotonic() - said >= 30:
            said = time.monotonic()
            on_step(f"still installing on {instance_id} ({time.monotonic() - started:.0f} s)")
        time.sleep(POLL)


def _wait_instance(ec2, instance_id: str, wanted: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (state := _tags(ec2, instance_id)[0]) != wanted:
        if time.monotonic() > deadline:
            raise BakeError(f"instance {instance_id} is {state}, not {wanted}, after {timeout:.0f} s")
        time.sleep(POLL)


def _wait_image(ec2, image_id: str, timeout: float, on_step: Callable[[str], None]) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        (image,) = ec2.describe_images(ImageIds=[image_id])["Images"]
        if image["State"] == "available":
            return image
        if image["State"] in ("failed", "error", "invalid", "deregistered"):
            reason = (image.get("StateReason") or {}).get("Message", "no reason given")
            raise BakeError(f"image {image_id} is {image['State']}: {reason}")
        if time.monotonic() > deadline:
            raise BakeError(f"image {image_id} is still {image['State']} after {timeout:.0f} s")
        time.sleep(POLL)


def _clean(ec2, iam, made: dict[str, str]) -> None:
    """Remove what the bake made, each part on its own: one failure leaves the others removed."""
    if "instance" in made:
        with contextlib.suppress(Exception):
            ec2.terminate_instances(InstanceIds=[made["instance"]])
            _wait_instance(ec2, made["instance"], "terminated", 600)
    if "group" in made:
        with contextlib.suppress(Exception):
            ec2.delete_security_group(GroupId=made["group"])
    if "role" in made:
        name = made["role"]
        for call in (lambda: iam.remove_role_from_instance_profile(InstanceProfileName=name, RoleName=name),
                     lambda: iam.delete_instance_profile(InstanceProfileName=name),
                     lambda: iam.delete_role_policy(RoleName=name, PolicyName="tag-own-instance"),
                     lambda: iam.delete_role(RoleName=name)):  # fmt: skip
            with contextlib.suppress(Exception):
                call()
