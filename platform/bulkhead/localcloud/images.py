"""The images CreateImage makes in the local cloud: a stopped instance's disk, taken from its sandbox.

An image sandbox's root is an overlay: the image's layers below, the instance's own upper layer on disk
(`bulkhead.hosts.sandbox`). Taking an image copies that upper layer, whiteouts and extended attributes with it,
into `images/<image id>/layer` beside the moto server, and records the layers the image stands on: the new
layer over its source instance's own. A sandbox booted from the image mounts that stack as its lower layers,
so what the source instance installed is there, and nothing it did after its disk was taken.

moto keeps such an image `pending` until the mark `available` (or `failed`) is here (`moto_gaps`).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bulkhead.files import write_json

log = logging.getLogger("bulkhead.local.images")
RECORD = "image.json"


@dataclass(frozen=True)
class TakenImage:
    image_id: str
    source_instance: str
    # overlayfs lower directories, topmost first, as `lowerdir=` takes them.
    lower: str
    taken_at: float
    seconds: float


def images_dir(store_directory: Path) -> Path:
    """Where the local cloud at `store_directory` keeps its images (as the moto server is told)."""
    return store_directory / "images"


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


def take(directory: Path, image_id: str, source_instance: str, upper: Path, source_lower: str) -> TakenImage:
    """Copy a stopped instance's upper layer into the image and mark it available; a failure marks it failed."""
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
        record = TakenImage(image_id, source_instance, f"{base / 'layer'}:{source_lower}", time.time(),
                            round(time.monotonic() - started, 1))  # fmt: skip
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
