"""One region of the local cloud with real sandbox hosts, configured once for the whole module."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import testinfra

from bulkhead.hosts import converge, inventory
from bulkhead.hosts.sandbox import Sandboxes
from bulkhead.localcloud import cloud, server
from bulkhead.localcloud.state import Store

REGION = "eu-west-1"


class Site:
    """The configured sandboxes, and testinfra hosts for them."""

    def __init__(self, project_dir, store: Store, sandboxes: Sandboxes, inventory_path, first_run) -> None:
        self.project_dir = project_dir
        self.store = store
        self.store_region = REGION
        self.sandboxes = sandboxes
        self.inventory_path = inventory_path
        self.first_run = first_run
        self.specs = sandboxes.recorded()

    def of_role(self, role: str, **tags: str):
        return [
            s for s in self.specs if s.role == role and all(s.tags.get(f"bulkhead:{k}") == v for k, v in tags.items())
        ]

    def host(self, spec):
        return testinfra.get_host(f"ansible://{spec.name}?ansible_inventory={self.inventory_path}&force_ansible=True")

    def extra_vars(self, specs=None) -> dict:
        return converge.extra_vars(specs or self.specs, self.sandboxes, self.store, self.project_dir)

    def converge(self, **kwargs):
        extra = {**self.extra_vars(), **kwargs.pop("extra", {})}
        return converge.converge(self.sandboxes, self.inventory_path, extra, self.project_dir, **kwargs)


@pytest.fixture(scope="module")
def site(project_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("site")
    store = Store(base / "local")
    sandboxes = Sandboxes(base / "hosts")
    # testinfra's ansible backend runs the `ansible` command: this venv's, for this module only.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", f"{Path(sys.prefix) / 'bin'}:{os.environ['PATH']}")
        try:
            cloud.up([REGION], store, project_dir=project_dir)
            everything = inventory.local_hosts(REGION, store, project_dir)
            # Both databases, a dyno host in every AZ, one router: every check, fewer hosts to converge.
            specs = [s for s in everything if s.role != "router"] + [s for s in everything if s.role == "router"][:1]
            sandboxes.up(specs, s3_port=server.running(store.directory).port)
            path = inventory.write_inventory(specs, sandboxes, store)
            extra = converge.extra_vars(specs, sandboxes, store, project_dir)
            first = converge.converge(sandboxes, path, extra, project_dir)
            assert first.succeeded, first.failures
            yield Site(project_dir, store, sandboxes, path, first)
        finally:
            sandboxes.down()
            server.stop(store.directory)
