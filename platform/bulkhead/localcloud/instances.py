"""What EC2 does with the instances the local cloud runs by itself: boot them, stop them, image them, end them.

Two cores cannot run a whole region of image hosts, so `bulkhead hosts up` makes the sandboxes a site asks
for. The instances nobody asks for, because they are launched by an API call as on AWS and must simply run,
the controller runs itself: a bake's (tagged `bulkhead:bake` at launch, as `bulkhead image bake` does). For them,
as EC2 would:
- a launched instance gets an image sandbox, booted from its AMI (a taken image's layers, else the base image)
  through its own user data;
- a stopped instance's sandbox is powered off, its disk kept;
- a pending image of a stopped, powered-off instance is taken from its disk (`images.take`);
- a terminated instance's sandbox is removed.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from pathlib import Path

from bulkhead.localcloud import images

log = logging.getLogger("bulkhead.local.instances")
RUN_TAG = "bulkhead:bake"


class Instances:
    def __init__(self, client: Callable, regions: list[str], hosts_dir: Path, project_dir: Path | None,
                 images_directory: Path, cloud_port: int, reachable: Callable[[str], bool]) -> None:  # fmt: skip
        from bulkhead.hosts.sandbox import Sandboxes

        self.client = client
        self.regions = regions
        self.sandboxes = Sandboxes(hosts_dir)
        self.project_dir = project_dir
        self.images_directory = images_directory
        self.cloud_port = cloud_port
        self.reachable = reachable

    def tick(self) -> None:
        for region in self.regions:
            if self.reachable(region):
                self._region(region)

    def _region(self, region: str) -> None:
        ec2 = self.client("ec2", region)
        found = [i for r in ec2.describe_instances(Filters=[{"Name": "tag-key", "Values": [RUN_TAG]}])["Reservations"]
                 for i in r["Instances"]]  # fmt: skip
        recorded = {s.name: s for s in self.sandboxes.recorded()}
        for instance in found:
            state, spec = instance["State"]["Name"], recorded.get(instance["InstanceId"])
            if state in ("pending", "running") and spec is None:
                self._launch(ec2, region, instance)
            elif state in ("stopping", "stopped") and spec is not None and self.sandboxes.powered(spec):
                self.sandboxes.power_off(spec)
            elif state in ("shutting-down", "terminated") and spec is not None:
                self.sandboxes.remove(spec)
                log.info("instance terminated: sandbox removed", extra={"instance": spec.name})
        stopped = {i["InstanceId"] for i in found if i["State"]["Name"] == "stopped"}
        if not stopped:  # only a stopped instance's image is ever taken: no call to make on every other tick
            return
        pending = ec2.describe_images(Owners=["self"], Filters=[{"Name": "state", "Values": ["pending"]}])["Images"]
        for image in pending:
            source = image.get("SourceInstanceId", "")
            spec = recorded.get(source)
            if source in stopped and spec is not None and not self.sandboxes.powered(spec):
                images.take(self.images_directory, region, image, self.sandboxes.upper(spec), spec.image)

    def _launch(self, ec2, region: str, instance: dict) -> None:
        from bulkhead.hosts import fabric, image
        from bulkhead.hosts.sandbox import BAKE_ROLE, HostSpec

        settings = image.default_settings()
        base = image.image_for(settings)
        problem = base.problem()
        if problem:
            log.error("cannot run instance: %s; run `bulkhead image build`", problem,
                      extra={"instance": instance["InstanceId"]})  # fmt: skip
            return
        if self.project_dir is None:
            log.error("cannot run instance: the controller was started without a project to serve",
                      extra={"instance": instance["InstanceId"]})  # fmt: skip
            return
        (vpc,) = ec2.describe_vpcs(VpcIds=[instance["VpcId"]])["Vpcs"]
        tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
        spec = HostSpec(
            name=instance["InstanceId"],
            role=BAKE_ROLE,
            region=region,
            az=instance["Placement"]["AvailabilityZone"],
            address=instance["PrivateIpAddress"],
            prefix_length=ipaddress.ip_network(vpc["CidrBlock"]).prefixlen,
            tags={k: v for k, v in tags.items() if k.startswith("bulkhead:")},
            image=images.lower_layers(self.images_directory, instance["ImageId"], str(base.root)),
            ami=instance["ImageId"],
        )
        services = fabric.ensure_services(self.sandboxes, self.project_dir, image.cache_dir(), settings.mirror_hosts)
        self.sandboxes.up([spec])
        fabric.ensure_daemon(self.sandboxes, services, self.cloud_port)
        self.sandboxes.boot(spec)
        log.info("instance launched: sandbox booting", extra={"instance": spec.name, "image": spec.ami})
