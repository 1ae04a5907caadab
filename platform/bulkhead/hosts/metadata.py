"""The instance metadata service (IMDSv2) at 169.254.169.254, answered from the local cloud.

`answer` is the whole protocol as EC2 documents it, a plain function of the request and the instance's
record: a PUT to /latest/api/token gives a token; every other request needs a valid one (the platform's
launch templates require tokens); tags are served only when the instance enables metadata tags.
`LocalInstances` fills the records from the local cloud's EC2, IAM and STS APIs, by the asking host's
private address: the instance's own user data, or for an Auto Scaling instance that of the launch
template version it was launched from, and credentials of its instance profile's role, from STS.
"""

from __future__ import annotations

import base64
import datetime
import json
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from bulkhead.localcloud.aws import LocalAws

METADATA_ADDRESS = "169.254.169.254"
TOKEN_TTL_MAX = 21600


@dataclass
class InstanceRecord:
    """What the metadata service knows of one instance."""

    instance_id: str
    region: str
    az: str
    private_ip: str
    instance_type: str
    ami_id: str
    user_data: bytes
    tags: dict[str, str]
    tags_in_metadata: bool
    role_name: str | None
    credentials: Callable[[], dict[str, str]] = field(repr=False, default=dict)


@dataclass
class Tokens:
    """Session tokens handed out, with their expiry."""

    issued: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def issue(self, ttl: int, now: float) -> str:
        token = secrets.token_urlsafe(32)
        with self.lock:
            self.issued = {t: expiry for t, expiry in self.issued.items() if expiry > now}
            self.issued[token] = now + ttl
        return token

    def valid(self, token: str | None, now: float) -> bool:
        with self.lock:
            return token is not None and self.issued.get(token, 0) > now


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str = "text/plain"


def answer(method: str, path: str, headers: dict[str, str], instance: InstanceRecord | None, tokens: Tokens,
           now: float) -> Answer:  # fmt: skip
    """The metadata service's answer to one request, as EC2 gives it with IMDSv2 required."""
    headers = {k.lower(): v for k, v in headers.items()}
    if path == "/latest/api/token":
        if method != "PUT":
            return Answer(405, b"")
        try:
            ttl = int(headers.get("x-aws-ec2-metadata-token-ttl-seconds", ""))
        except ValueError:
            return Answer(400, b"")
        if not 1 <= ttl <= TOKEN_TTL_MAX:
            return Answer(400, b"")
        return Answer(200, tokens.issue(ttl, now).encode())
    if method != "GET":
        return Answer(405, b"")
    if not tokens.valid(headers.get("x-aws-ec2-metadata-token"), now):
        return Answer(401, b"")
    if instance is None:
        return Answer(404, b"")
    value = _lookup(path.rstrip("/") if path != "/latest/meta-data/" else path, instance)
    if value is None:
        return Answer(404, b"")
    if isinstance(value, bytes):
        return Answer(200, value, "application/octet-stream")
    return Answer(200, value.encode())


def _lookup(path: str, instance: InstanceRecord) -> str | bytes | None:
    if path == "/latest/user-data":
        return instance.user_data if instance.user_data else None
    meta = {
        "instance-id": instance.instance_id,
        "instance-type": instance.instance_type,
        "ami-id": instance.ami_id,
        "local-ipv4": instance.private_ip,
        "placement/availability-zone": instance.az,
        "placement/region": instance.region,
        "hostname": f"ip-{instance.private_ip.replace('.', '-')}.{instance.region}.compute.internal",
    }
    if instance.role_name:
        meta["iam/security-credentials"] = instance.role_name
    if instance.tags_in_metadata:
        meta["tags/instance"] = "\n".join(sorted(instance.tags))
        meta.update({f"tags/instance/{key}": value for key, value in instance.tags.items()})
    key = path.removeprefix("/latest/meta-data").strip("/")
    if key in meta:
        return meta[key]
    if instance.role_name and key == f"iam/security-credentials/{instance.role_name}":
        return json.dumps(instance.credentials())
    if key == "" or key in {"placement", "iam", "tags"}:
        children = sorted({k.removeprefix(key + "/" if key else "").split("/")[0] for k in meta
                           if not key or k.startswith(key + "/")})  # fmt: skip
        return "\n".join(children)
    return None


class LocalInstances:
    """Instance records from the local cloud, by region and private address (cached: they do not change)."""

    def __init__(self, aws: LocalAws) -> None:
        self.aws = aws
        self._records: dict[tuple[str, str], InstanceRecord | None] = {}
        self._lock = threading.Lock()

    def by_address(self, region: str, address: str) -> InstanceRecord | None:
        with self._lock:
            if (region, address) not in self._records:
                self._records[(region, address)] = self._load(region, address)
            return self._records[(region, address)]

    def _load(self, region: str, address: str) -> InstanceRecord | None:
        ec2 = self.aws.client("ec2", region)
        found = [
            i
            for r in ec2.describe_instances(
                Filters=[
                    {"Name": "private-ip-address", "Values": [address]},
                    {"Name": "instance-state-name", "Values": ["running", "pending"]},
                ]
            )["Reservations"]
            for i in r["Instances"]
        ]
        if not found:
            return None
        instance = found[0]
        tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
        user_data, options, profile = self._launch_data(region, instance)
        role_name = self._role_name(region, profile)
        return InstanceRecord(
            instance_id=instance["InstanceId"],
            region=region,
            az=instance["Placement"]["AvailabilityZone"],
            private_ip=address,
            instance_type=instance["InstanceType"],
            ami_id=instance["ImageId"],
            user_data=user_data,
            tags=tags,
            tags_in_metadata=options.get("InstanceMetadataTags") == "enabled",
            role_name=role_name,
            credentials=(lambda: self._credentials(region, role_name, instance["InstanceId"])) if role_name else dict,
        )

    def _launch_data(self, region: str, instance: dict) -> tuple[bytes, dict, str]:
        """User data, metadata options and instance profile ARN, as EC2 gives them to the instance.

        An Auto Scaling instance has its launch template version's (moto does not copy them onto the
        instance); any other instance has its own.
        """
        ec2 = self.aws.client("ec2", region)
        groups = self.aws.client("autoscaling", region).describe_auto_scaling_instances(
            InstanceIds=[instance["InstanceId"]]
        )["AutoScalingInstances"]
        template = groups[0].get("LaunchTemplate") if groups else None
        if template:
            (version,) = ec2.describe_launch_template_versions(
                LaunchTemplateId=template["LaunchTemplateId"], Versions=[str(template.get("Version") or "$Latest")]
            )["LaunchTemplateVersions"]
            data = version["LaunchTemplateData"]
            return (
                base64.b64decode(data.get("UserData") or ""),
                dict(data.get("MetadataOptions") or {}),
                (data.get("IamInstanceProfile") or {}).get("Arn", ""),
            )
        own = ec2.describe_instance_attribute(InstanceId=instance["InstanceId"], Attribute="userData")
        return (
            base64.b64decode(own.get("UserData", {}).get("Value") or ""),
            dict(instance.get("MetadataOptions") or {}),
            (instance.get("IamInstanceProfile") or {}).get("Arn", ""),
        )

    def _role_name(self, region: str, profile_arn: str) -> str | None:
        if not profile_arn:
            return None
        name = profile_arn.rsplit("/", 1)[-1]
        roles = self.aws.client("iam", region).get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
        return roles["Roles"][0]["RoleName"] if roles["Roles"] else None

    def _credentials(self, region: str, role_name: str, instance_id: str) -> dict[str, str]:
        iam, sts = self.aws.client("iam", region), self.aws.client("sts", region)
        arn = iam.get_role(RoleName=role_name)["Role"]["Arn"]
        granted = sts.assume_role(RoleArn=arn, RoleSessionName=instance_id, DurationSeconds=3600)["Credentials"]
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        expiry = granted["Expiration"]
        return {
            "Code": "Success",
            "LastUpdated": stamp,
            "Type": "AWS-HMAC",
            "AccessKeyId": granted["AccessKeyId"],
            "SecretAccessKey": granted["SecretAccessKey"],
            "Token": granted["SessionToken"],
            "Expiration": expiry.strftime("%Y-%m-%dT%H:%M:%SZ") if hasattr(expiry, "strftime") else str(expiry),
        }
