"""The images CreateImage makes in the local cloud: a stopped instance's disk, taken from its sandbox.

An image sandbox's root is an overlay: the image's layers below, the instance's own upper layer on disk
(`bulkhead.hosts.sandbox`). Taking an image copies that upper layer, whiteouts and extended attributes with it,
into `<cache>/amis/<image id>/layer` (this machine's, beyond any one local cloud: an AMI outlives the stacks
that use it), and records the layers the image stands on (the new layer over its source instance's own) and
what DescribeImages says of it, so that every later local cloud's moto has it in its region. A sandbox booted
from the image mounts that stack as its lower layers, so what the source instance installed is there, and
nothing it did after its disk was taken.

moto keeps such an image `pending` until the mark `available` (or `failed`) is here (`moto_gaps`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bulkhead.files import write_json

log = logging.getLogger("bulkhead.local.images")
RECORD = "image.json"


@dataclass(frozen=True)
class TakenImage:
    image_id: str
    region: str
    source_instance: str
    # overlayfs lower directories, topmost first, as `lowerdir=` takes them.
    lower: str
    taken_at: float
    seconds: float
    # What DescribeImages gave when it was taken, for the next local cloud's moto.
    name: str = ""
    description: str = ""
    owner_id: str = ""
    created_at: str = ""
    root_device_name: str = "/dev/xvda"
    encrypted: bool = False
    tags: dict = field(default_factory=dict)


def images_dir() -> Path:
    """Where this machine keeps the images its local clouds took (as every moto server is told):
    `$BULKHEAD_IMAGES_DIR`, or `amis` in the machine's cache."""
    from bulkhead.hosts.image import cache_dir

    return Path(os.environ.get("BULKHEAD_IMAGES_DIR") or cache_dir() / "amis")


def taken(directory: Path, image_id: str) -> TakenImage | None:
    """The image, if the local cloud took it and it is whole."""
    base = directory / image_id
    try:
        if not (base / "available").exists():
            return None
        return TakenImage(**json.loads((base / RECORD).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def lower_layers(directory: Path, image_id: str, base_root: str) -> str:
    """What a sandbox of an instance launched from `image_id` stands on: the taken image's layers, or the base
    image's root for any other image (the Debian AMIs the program looks up)."""
    found = taken(directory, image_id)
    return found.lower if found else base_root


def take(directory: Path, region: str, image: dict, upper: Path, source_lower: str) -> TakenImage:
    """Copy a stopped instance's upper layer into the image (`image` as DescribeImages gives it) and mark it
    available; a failure marks it failed."""
    image_id, source_instance = image["ImageId"], image.get("SourceInstanceId", "")
    base = directory / image_id
    started = time.monotonic()
    partial = base / "layer.partial"
    try:
        shutil.rmtree(partial, ignore_errors=True)
        base.mkdir(parents=True, exist_ok=True)
        # cp -a keeps what overlayfs needs: whiteouts (0/0 character devices) and its trusted.* xattrs.
        copied = subprocess.run(["cp", "-a", "--preserve=all", f"{upper}/.", str(partial)], capture_output=True,
                                text=True, check=False, timeout=1800)  # fmt: skip
        if copied.returncode != 0:
            raise OSError(copied.stderr.strip().splitlines()[-1:] or "cp failed")
        partial.rename(base / "layer")
        mappings = image.get("BlockDeviceMappings") or [{}]
        record = TakenImage(
            image_id, region, source_instance, f"{base / 'layer'}:{source_lower}", time.time(),
            round(time.monotonic() - started, 1), name=image.get("Name", ""), description=image.get("Description", ""),
            owner_id=image.get("OwnerId", ""), created_at=image.get("CreationDate", ""),
            root_device_name=image.get("RootDeviceName", "/dev/xvda"),
            encrypted=bool(mappings[0].get("Ebs", {}).get("Encrypted")),
            tags={t["Key"]: t["Value"] for t in image.get("Tags", [])},
        )  # fmt: skip
        write_json(base / RECORD, asdict(record))
        (base / "available").touch()
        log.info("image taken", extra={"image": image_id, "instance": source_instance, "seconds": record.seconds})
        return record
    except (OSError, subprocess.TimeoutExpired) as error:
        base.mkdir(parents=True, exist_ok=True)
        (base / "failed").write_text(f"{error}\n")
        log.error("image could not be taken", extra={"image": image_id, "instance": source_instance,
                                                      "error": str(error)})  # fmt: skip
        raise
