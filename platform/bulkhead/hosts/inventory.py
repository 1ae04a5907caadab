"""Which local-cloud instances get sandboxes, and the Ansible inventory that reaches them.

Groups are named as the `amazon.aws.aws_ec2` plugin names them from the same tags
(`roles/inventory/aws_ec2.yml`), so playbooks target `role_router` alike on AWS and here.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml

from bulkhead import topology
from bulkhead.hosts.sandbox import HostSpec, Sandboxes
from bulkhead.localcloud import server
from bulkhead.localcloud.aws import LocalAws, LocalCloudError
from bulkhead.localcloud.state import Store

TAG_GROUPS = (
    ("role", "bulkhead:role"),
    ("region", "bulkhead:region"),
    ("az", "bulkhead:az"),
    ("postgres", "bulkhead:postgres"),
)


def group_name(prefix: str, value: str) -> str:
    """The group the aws_ec2 plugin makes for a tag value (characters Ansible rejects become _)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", f"{prefix}_{value}")


def local_hosts(region: str, store: Store, project_dir: Path) -> list[HostSpec]:
    """The running instances of one region of the local cloud that carry a role, oldest first."""
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
                ami=instance["ImageId"],
            )
        )
    return specs


def region_facts(store: Store, regions: Iterable[str]) -> dict[str, dict[str, str]]:
    """What a region stack tells its hosts, from its outputs: on AWS the user data carries the same facts."""
    facts = {}
    for region in sorted(set(regions)):
        outputs = store.outputs(region)
        if outputs is None:
            raise LocalCloudError(f"region {region} is not deployed locally; run `bulkhead local up --stacks {region}`")
        facts[region] = {
            "postgres_archive_bucket": outputs["archiveBucket"],
            "postgres_server_name": outputs["databaseServer"],
        }
    return facts


def inventory(
    specs: list[HostSpec], sandboxes: Sandboxes, facts: Mapping[str, Mapping[str, str]] | None = None
) -> dict:
    """An Ansible YAML inventory: each sandbox through the chroot connection, grouped like aws_ec2.

    `facts` maps a region to the variables each of its hosts gets (see `region_facts`).
    """
    groups: dict[str, dict] = {}
    hosts = {}
    for spec in specs:
        hosts[spec.name] = {
            **(facts or {}).get(spec.region, {}),
            "ansible_connection": "community.general.chroot",
            "ansible_host": str(sandboxes.root(spec)),
            "ansible_chroot_exe": str(sandboxes.chroot_wrapper),
            "ansible_python_interpreter": "/usr/bin/python3",
            "bulkhead_address": spec.address,
            "bulkhead_role": spec.role,
            "bulkhead_region": spec.region,
            "bulkhead_az": spec.az,
            "bulkhead_cell": spec.tags.get("bulkhead:cell", ""),
        }
        for prefix, tag in TAG_GROUPS:
            if tag in spec.tags:
                groups.setdefault(group_name(prefix, spec.tags[tag]), {"hosts": {}})["hosts"][spec.name] = None
    return {"all": {"hosts": hosts, "children": groups}}


def write_inventory(specs: list[HostSpec], sandboxes: Sandboxes, store: Store) -> Path:
    """The inventory of `specs` with their regions' facts, written beside the sandboxes."""
    path = sandboxes.directory / "inventory.yml"
    facts = region_facts(store, (s.region for s in specs))
    path.write_text(yaml.safe_dump(inventory(specs, sandboxes, facts), sort_keys=True))
    return path
