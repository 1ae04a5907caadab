"""A whole region of sandbox hosts, made and removed as one: a fresh local cloud under a directory of its
own, every instance of one region as a sandbox host, configured once (roles/site.yml). The hosts tests
share one for their session; the benchmarks measure on one.

It is removed however it ends: the sandboxes (processes, mounts, namespaces), then the local cloud's
controller and moto server.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from bulkhead import topology
from bulkhead.hosts import converge, inventory
from bulkhead.hosts.sandbox import Sandboxes
from bulkhead.localcloud import cloud, controller, server
from bulkhead.localcloud.state import Store


@dataclass(frozen=True)
class RegionSite:
    """What `region_site` made."""

    project_dir: Path
    region: str
    store: Store
    sandboxes: Sandboxes
    inventory_path: Path
    first_run: converge.Converged


@contextlib.contextmanager
def region_site(project_dir: Path, base: Path, region: str, stacks: list[str] | None = None,
                config: Mapping[str, str] | None = None,
                on_event: Callable[[str, str, str], None] | None = None) -> Iterator[RegionSite]:  # fmt: skip
    """Deploy `stacks` (default: every stack of the project) into a local cloud under `base`, make every
    instance of `region` a sandbox host and configure them all. The first run's report is handed over as it
    is: the caller decides whether a failed host is fatal."""
    store, sandboxes = Store(base / "local"), Sandboxes(base / "hosts")
    try:
        cloud.up(stacks or topology.stack_names(project_dir), store, project_dir=project_dir,
                 hosts=sandboxes.directory, config=config)  # fmt: skip
        specs = inventory.local_hosts(region, store, project_dir)
        sandboxes.up(specs, s3_port=server.running(store.directory).port, fronts=controller.fronts_of(store.directory))
        path = inventory.write_inventory(specs, sandboxes, store)
        extra = converge.extra_vars(specs, sandboxes, store, project_dir)
        first = converge.converge(sandboxes, path, extra, project_dir, on_event=on_event)
        yield RegionSite(project_dir, region, store, sandboxes, path, first)
    finally:
        sandboxes.down()
        controller.stop(store.directory)
        server.stop(store.directory)
