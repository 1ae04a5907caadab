"""Copying an archive to another bucket (the partner region), incrementally."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from bulkhead.backup.settings import Archive
from bulkhead.backup.store import ArchiveStore

log = logging.getLogger("bulkhead.db")


@dataclass(frozen=True)
class CopyReport:
    copied: int
    skipped: int
    bytes: int
    seconds: float


def copy_archive(source: Archive, destination: Archive, on_object: Callable[[str], None] | None = None) -> CopyReport:
    """Copy every object of the server's archive that the destination lacks or holds differently."""
    started = time.perf_counter()
    source_store, destination_store = ArchiveStore(source), ArchiveStore(destination)
    source_store.check_access()
    destination_store.check_access()
    present = {o.key[len(destination.prefix) :]: o for o in destination_store.objects()}
    copied = skipped = size = 0
    for item in source_store.objects():
        relative = item.key[len(source.prefix) :]
        existing = present.get(relative)
        # Archived files never change once written: the same key and size means already copied.
        # (ETags cannot be compared: multipart uploads give the same bytes different ETags.)
        if existing is not None and existing.size == item.size:
            skipped += 1
            continue
        destination_store.upload(destination.prefix + relative, source_store.read(item.key))
        copied += 1
        size += item.size
        if on_object:
            on_object(relative)
    report = CopyReport(copied, skipped, size, time.perf_counter() - started)
    log.info("archive copied", extra={"server": source.server, "to": destination.url, "copied": copied,
                                      "skipped": skipped, "bytes": size})  # fmt: skip
    return report
