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

    def __init__(self, store: Store, sandboxes: Sandboxes, inventory_path, first_run) -> None:
        self.store = store
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

    def converge(self, **kwargs):
        extra = {**converge.extra_vars(self.specs, self.sandboxes, self.store), **kwargs.pop("extra", {})}
        return converge.converge(self.sandboxes, self.inventory_path, extra, **kwargs)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    # testinfra's ansible backend runs the `ansible` command: this venv's.
    os.environ["PATH"] = f"{Path(sys.prefix) / 'bin'}:{os.environ['PATH']}"
    base = tmp_path_factory.mktemp("site")
    store = Store(base / "local")
    sandboxes = Sandboxes(base / "hosts")
    try:
        cloud.up([REGION], store)
        everything = inventory.local_hosts(REGION, store)
        # Both databases, a dyno host in every AZ, one router: every check, fewer hosts to converge.
        specs = [s for s in everything if s.role != "router"] + [s for s in everything if s.role == "router"][:1]
        sandboxes.up(specs, s3_port=server.running(store.directory).port)
        path = inventory.write_inventory(specs, sandboxes)
        first = converge.converge(sandboxes, path, converge.extra_vars(specs, sandboxes, store))
        assert first.succeeded, first.failures
        yield Site(store, sandboxes, path, first)
    finally:
        sandboxes.down()
        server.stop(store.directory)
