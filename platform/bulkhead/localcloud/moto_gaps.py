"""What AWS does that moto does not, applied to the moto server the local cloud starts.

As S3 does, and moto 5 does not: an object completed by a multipart upload into a bucket with a
default retention gets that retention, as a single PUT does (barman's base backups are multipart).

As EC2 does, and moto 5 does not:
- an instance launched from a launch template (an Auto Scaling group's) gets the template's metadata
  options, so a template that requires IMDSv2 yields instances that require it;
- the root volume sits at the image's root device name, and a template's mapping of that device is
  the root volume (moto adds a second, default one at /dev/sda1);
- with EBS encryption by default on in a region, every new volume there is encrypted; and a
  template's `Encrypted: false` is false (moto reads the string "false" as true);
- an image made by CreateImage is `pending` until its disk is taken (moto names the instance it came from,
  `SourceInstanceId`, as EC2 does). The local cloud's controller takes it from the instance's sandbox
  (`bulkhead.localcloud.images`) and leaves a mark in `$BULKHEAD_IMAGES_DIR/<image>/`: `available`, or `failed`;
  its snapshot is encrypted when the instance's root volume was, and says so;
- an image outlives the local cloud that made it, as an AMI outlives its stacks: each new moto server loads the
  images taken on this machine into their region, and DeregisterImage removes one for good.
Only launch and upload completion are touched; every API answer is moto's own. `bulkhead check --live` reads what this
produces, so that what is checked is what EC2 would have launched.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Any

# Where the controller keeps the images CreateImage made: on this machine, beyond any one local cloud.
IMAGES_DIR_VARIABLE = "BULKHEAD_IMAGES_DIR"  # as `images.images_dir` reads it


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


def apply() -> None:
    """Patch moto's models in this process (the moto server's)."""
    _apply_ec2()
    _apply_images()
    _apply_s3()


def _apply_images() -> None:
    import json

    from moto.ec2.models import amis

    directory = Path(os.environ.get(IMAGES_DIR_VARIABLE) or "/nonexistent")
    create = amis.AmiBackend.create_image
    load = amis.AmiBackend._load_amis

    def create_image(self, instance_id: str, *args: Any, **kwargs: Any):
        image = create(self, instance_id, *args, **kwargs)  # moto names its SourceInstanceId already
        image.taken_from_sandbox = True
        # The image boots from the instance's root device, and its snapshot is encrypted as the instance's root
        # volume was (moto's image says /dev/sda1, and is never encrypted).
        instance = self.get_instance(instance_id)
        image.root_device_name = instance.root_device_name
        root = dict(instance.get_block_device_mapping).get(instance.root_device_name)
        volume = self.get_volume(root.volume_id) if root is not None and root.volume_id else None
        image.ebs_snapshot.encrypted = bool(volume is not None and volume.encrypted)
        return image

    def load_taken(self) -> None:
        """The account's images taken on this machine by earlier local clouds, in the region they were made in:
        an AMI outlives the stacks that used it, as on AWS."""
        load(self)
        for record in sorted(directory.glob("ami-*/image.json")):
            try:
                taken = json.loads(record.read_text())
            except (OSError, ValueError):
                continue
            if taken.get("region") != self.region_name or not (record.parent / "available").exists():
                continue
            image = amis.Ami(self, taken["image_id"], name=taken["name"], description=taken.get("description"),
                             owner_id=taken.get("owner_id"), architecture="x86_64", virtualization_type="hvm",
                             root_device_type="ebs", root_device_name=taken.get("root_device_name", "/dev/xvda"),
                             creation_date=amis.parse_timestamp(taken["created_at"]) if taken.get("created_at")
                             else None, region_name=self.region_name,
                             tags=taken.get("tags") or {})  # fmt: skip
            image.taken_from_sandbox = True
            image.ebs_snapshot.encrypted = bool(taken.get("encrypted"))
            self.amis[image.id] = image

    def state(self) -> str:
        if not getattr(self, "taken_from_sandbox", False):
            return self.__dict__.get("_state", "available")
        for mark in ("available", "failed"):
            if (directory / self.id / mark).exists():
                return mark
        return "pending"

    def set_state(self, value: str) -> None:
        self.__dict__["_state"] = value

    def block_device_mappings(self) -> list[dict[str, Any]]:
        mappings = original_mappings.fget(self)
        for mapping in mappings:
            mapping["Ebs"]["Encrypted"] = bool(getattr(self.ebs_snapshot, "encrypted", False))
        return mappings

    deregister = amis.AmiBackend.deregister_image

    def deregister_image(self, ami_id: str) -> None:
        """An image deregistered is gone for every later local cloud too, its disk with it."""
        deregister(self, ami_id)
        if amis.AmiBackend.AMI_REGEX.fullmatch(ami_id) and (directory / ami_id).is_dir():
            # Out of the way at once, removed after the answer: a layer is a GB of small files.
            gone = directory / f".deregistered-{ami_id}"
            (directory / ami_id).rename(gone)
            threading.Thread(target=shutil.rmtree, args=(gone,), kwargs={"ignore_errors": True}, daemon=True).start()

    original_mappings = amis.Ami.block_device_mappings
    amis.AmiBackend.deregister_image = deregister_image
    amis.AmiBackend.create_image = create_image
    amis.AmiBackend._load_amis = load_taken
    amis.Ami.state = property(state, set_state)
    amis.Ami.block_device_mappings = property(block_device_mappings)


def _apply_s3() -> None:
    from moto.s3.models import S3Backend

    complete = S3Backend.complete_multipart_upload

    def complete_with_retention(self, bucket_name: str, multipart_id: str, body: Any):
        key = complete(self, bucket_name, multipart_id, body)
        bucket = self.get_bucket(bucket_name)
        if key is not None and not key.lock_mode and bucket.default_lock_mode:
            key.lock_mode = bucket.default_lock_mode
            key.lock_until = bucket.default_retention()
        return key

    S3Backend.complete_multipart_upload = complete_with_retention


def _apply_ec2() -> None:
    from moto.ec2.models import elastic_block_store, instances

    instance_init = instances.Instance.__init__

    def init(self, ec2_backend, image_id, user_data, security_groups, **kwargs):
        template = kwargs.get("launch_template")
        mapped: set[str] = set()
        if template:
            data = ec2_backend._get_template_from_args(template).data
            if data.get("MetadataOptions") and not kwargs.get("metadata_options"):
                kwargs["metadata_options"] = data["MetadataOptions"]
            mapped = {m.get("DeviceName") for m in data.get("BlockDeviceMappings") or []}
        mapped |= {m.get("DeviceName") for m in kwargs.get("block_device_mappings") or []}
        self._bulkhead_mapped_devices = mapped
        instance_init(self, ec2_backend, image_id, user_data, security_groups, **kwargs)

    def setup_defaults(self) -> None:
        if self.root_device_name in getattr(self, "_bulkhead_mapped_devices", set()):
            return  # the template's or the request's mapping of the root device is the root volume
        volume = self.ec2_backend.create_volume(size=8, zone_name=self._placement.zone)
        self.ec2_backend.attach_volume(volume.id, self.id, self.root_device_name, True)

    create_volume = elastic_block_store.EBSBackend.create_volume

    def create(self, *args: Any, **kwargs: Any):
        encrypted = _truthy(kwargs.get("encrypted", False)) or bool(getattr(self, "ebs_encryption_by_default", False))
        kwargs["encrypted"] = encrypted
        return create_volume(self, *args, **kwargs)

    instances.Instance.__init__ = init
    instances.Instance.setup_defaults = setup_defaults
    elastic_block_store.EBSBackend.create_volume = create


def main() -> None:
    """moto's server, with EC2's launch behaviour applied."""
    apply()
    from moto.server import main as moto_main

    moto_main()
