"""Which local-cloud instances get sandboxes, and the Ansible inventory that reaches them.

Groups are named as the `amazon.aws.aws_ec2` plugin names them from the same tags
(`roles/inventory/aws_ec2.yml`), so playbooks target `role_router` alike on AWS and here.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import yaml

from bulkhead import topology
from bulkhead.hosts.sandbox import HostSpec, Sandboxes
from bulkhead.localcloud import server
from bulkhead.localcloud.aws import LocalAws, LocalCloudError
from bulkhead.localcloud.state import Store
from bulkhead.stack_runner import PROJECT_DIR

TAG_GROUPS = (
    ("role", "bulkhead:role"),
    ("region", "bulkhead:region"),
    ("az", "bulkhead:az"),
    ("postgres", "bulkhead:postgres"),
)


def group_name(prefix: str, value: str) -> str:
    """The group the aws_ec2 plugin makes for a tag value (characters Ansible rejects become _)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", f"{prefix}_{value}")


def local_hosts(region: str, store: Store | None = None, project_dir: Path = PROJECT_DIR) -> list[HostSpec]:
    """The running instances of one region of the local cloud that carry a role, oldest first."""
    store = store or Store()
    info = server.running(store.directory)
    if info is None or store.outputs(region) is None:
        raise LocalCloudError(f"region {region} is not deployed locally; run `bulkhead local up --stacks {region}`")
    prefix = ipaddress.ip_network(topology.read_stack_config(project_dir, region)["bulkhead:vpcCidr"]).prefixlen
    ec2 = LocalAws(info.endpoint).client("ec2", region)
    reservations = ec2.describe_instances(
        Filters=[
            {"Name": "instance-state-name", "Values": ["running"]},
            {"Name": "tag-key", "Values": ["bulkhead:role"]},
        ]
    )["Reservations"]
    specs = []
    for instance in sorted((i for r in reservations for i in r["Instances"]), key=lambda i: i["LaunchTime"]):
        tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
        specs.append(
            HostSpec(
                name=instance["InstanceId"],
                role=tags["bulkhead:role"],
                region=region,
                az=instance["Placement"]["AvailabilityZone"],
                address=instance["PrivateIpAddress"],
                prefix_length=prefix,
                tags={k: v for k, v in tags.items() if k.startswith("bulkhead:")},
            )
        )
    return specs


def inventory(specs: list[HostSpec], sandboxes: Sandboxes) -> dict:
    """An Ansible YAML inventory: each sandbox through the chroot connection, grouped like aws_ec2."""
    groups: dict[str, dict] = {}
    hosts = {}
    for spec in specs:
        hosts[spec.name] = {
            "ansible_connection": "community.general.chroot",
            "ansible_host": str(sandboxes.root(spec)),
            "ansible_chroot_exe": str(sandboxes.chroot_wrapper),
            "ansible_python_interpreter": "/usr/bin/python3",
            "bulkhead_address": spec.address,
            "bulkhead_role": spec.role,
            "bulkhead_region": spec.region,
            "bulkhead_az": spec.az,
        }
        for prefix, tag in TAG_GROUPS:
            if tag in spec.tags:
                groups.setdefault(group_name(prefix, spec.tags[tag]), {"hosts": {}})["hosts"][spec.name] = None
    return {"all": {"hosts": hosts, "children": groups}}


def write_inventory(specs: list[HostSpec], sandboxes: Sandboxes) -> Path:
    path = sandboxes.directory / "inventory.yml"
    path.write_text(yaml.safe_dump(inventory(specs, sandboxes), sort_keys=True))
    return path
