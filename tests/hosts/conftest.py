"""One region of the local cloud with real sandbox hosts, every one of its instances, configured once for
the session: the role checks (test_sandbox_hosts), the agents' drills (test_sandbox_hosts_agents) and the
failover drills (test_sandbox_hosts_failover) share it, in that order.

testinfra reaches a sandbox exactly as Ansible's connection does (`community.general.chroot` with the
sandboxes' chroot wrapper as its `chroot_exe`: enter the namespace, then the root), without starting
an `ansible` process for every check.
"""

from __future__ import annotations

import time

import pytest
import testinfra.host
from testinfra.backend.base import CommandResult
from testinfra.backend.chroot import ChrootBackend

from bulkhead.ha.reach import Reach
from bulkhead.hosts import converge
from bulkhead.hosts.sandbox import Sandboxes
from bulkhead.hosts.site import region_site
from bulkhead.localcloud.state import Store

REGION = "eu-west-1"


class SandboxBackend(ChrootBackend):
    """testinfra's chroot backend, through the wrapper that also enters the sandbox's network namespace."""

    NAME = "sandbox"

    def __init__(self, sandboxes: Sandboxes, spec) -> None:
        self.wrapper = str(sandboxes.chroot_wrapper)
        super().__init__(str(sandboxes.root(spec)))

    def run(self, command: str, *args: str, **kwargs) -> CommandResult:
        shell = self.get_command(command, *args)
        result = self.run_local("%s %s /bin/sh -c %s", self.wrapper, self.name, shell)
        result.command = self.encode(shell)
        return result


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
        self._hosts: dict[str, testinfra.host.Host] = {}

    def of_role(self, role: str, **tags: str):
        return [
            s for s in self.specs if s.role == role and all(s.tags.get(f"bulkhead:{k}") == v for k, v in tags.items())
        ]

    def host(self, spec) -> testinfra.host.Host:
        if spec.name not in self._hosts:
            backend = SandboxBackend(self.sandboxes, spec)
            self._hosts[spec.name] = host = testinfra.host.Host(backend)
            backend.set_host(host)
        return self._hosts[spec.name]

    def extra_vars(self, specs=None) -> dict:
        return converge.extra_vars(specs or self.specs, self.sandboxes, self.store, self.project_dir)

    @property
    def reach(self) -> Reach:
        return Reach(self.sandboxes, self.store_region)

    def converge(self, **kwargs):
        extra = {**self.extra_vars(), **kwargs.pop("extra", {})}
        return converge.converge(self.sandboxes, self.inventory_path, extra, self.project_dir, **kwargs)


@pytest.fixture(scope="session")
def site(project_dir, tmp_path_factory):
    # Two dyno cells, so that the boot-storm drill can slow one and watch the other. Every stack (without hosts
    # beyond this region's): the global one holds the status region's heartbeat alarms, and needs the others.
    # Every host: a router, two dyno hosts (one per cell) and a database member (with etcd) in each AZ, so that
    # any AZ can be lost while the others serve.
    base = tmp_path_factory.mktemp("site")
    started = time.monotonic()
    with region_site(project_dir, base, REGION, config={"bulkhead:cells": "2"}) as made:
        SET_UP.update(seconds=time.monotonic() - started, converge=made.first_run)
        assert made.first_run.succeeded, made.first_run.failures
        yield Site(project_dir, made.store, made.sandboxes, made.inventory_path, made.first_run)


# How long the shared site took to make, and its converge's slowest tasks: printed at the end of the run, where
# CI's output shows where the suite's time went.
SET_UP: dict = {}


def pytest_terminal_summary(terminalreporter):
    if not SET_UP:
        return
    first = SET_UP["converge"]
    terminalreporter.section("the shared site")
    terminalreporter.write_line(f"made in {SET_UP['seconds']:.0f} s, its first converge {first.seconds:.0f} s; "
                                "the slowest tasks (seconds summed over hosts):")  # fmt: skip
    for name, seconds in sorted(first.task_seconds.items(), key=lambda kv: -kv[1])[:15]:
        terminalreporter.write_line(f"  {seconds:7.1f}  {name}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """A failed test on the site shows the end of every member's Patroni, backup and PostgreSQL logs beside its
    traceback."""
    report = yield
    site = item.funcargs.get("site") if report.when == "call" and report.failed else None
    if isinstance(site, Site):
        for spec in site.of_role("postgres"):
            for name in ("patroni.log", "base-backup.log", "postgresql.json"):
                path = site.sandboxes.root(spec) / "var/log/bulkhead/postgresql" / name
                try:
                    lines = [line for line in path.read_text(errors="replace").splitlines() if "no action" not in line]
                except OSError as error:
                    lines = [str(error)]
                tail = "\n".join(line[:400] for line in lines[-25:])
                report.sections.append((f"{name} of {spec.name} ({spec.az})", tail))
    return report
