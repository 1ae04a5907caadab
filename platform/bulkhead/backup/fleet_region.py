"""A region's shared databases, as the operator's machine handles them: which host holds which database,
where its archive and its partner's replica are, and the fleet verbs run on the hosts themselves.

The buckets come from the region stacks' outputs; the verbs run on the database hosts as `bulkhead db
create-fleet|restore-fleet|stop-fleet`, reached the one way hosts are reached (`bulkhead.ha.reach`:
sandboxes here; SSM on AWS is not built yet, and is refused in one line).
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from bulkhead import s3compat
from bulkhead.backup.catalog import list_backups
from bulkhead.backup.copy import copy_archive
from bulkhead.backup.fleet import DEFAULT_BASE_PORT, DEFAULT_ROOT, Database
from bulkhead.backup.settings import Archive, BackupError
from bulkhead.backup.store import ArchiveStore
from bulkhead.ha.reach import Reach
from bulkhead.hosts.sandbox import HostSpec
from bulkhead.localcloud import controller, server
from bulkhead.localcloud.aws import local_environment
from bulkhead.localcloud.state import Store

HOST_BULKHEAD = "/opt/bulkhead/barman/bin/bulkhead"
PASSWORD_VARIABLE = "BULKHEAD_FLEET_PASSWORD"


@dataclass(frozen=True)
class Placement:
    """Where one database serves."""

    database: Database
    host: HostSpec

    @property
    def address(self) -> str:
        return self.host.address


class RegionFleet:
    """One region's database hosts and buckets, for the fleet verbs."""

    def __init__(self, project_dir: Path, region: str) -> None:
        self.region = region
        self.reach = Reach.of_project(project_dir, region)
        self.store = Store.of_project(project_dir)
        outputs = self.store.outputs(region)
        if outputs is None:
            raise BackupError(f"region {region} is not deployed locally; run `bulkhead local up --stacks {region}`")
        self.outputs = outputs
        if not self.reach.database_hosts:
            raise BackupError(f"region {region} has no database host up; run `bulkhead hosts up --region {region}`")

    def archive(self, prefix: str) -> str:
        return f"s3://{self.outputs['archiveBucket']}/{prefix}"

    def replica_of(self, source_region: str, prefix: str) -> str:
        """The replica, held in this region, of `source_region`'s archive; refused if that is not its partner."""
        source = self.store.outputs(source_region)
        if source is None:
            raise BackupError(f"region {source_region} is not deployed locally; its replica bucket is unknown")
        if source.get("partnerRegion") != self.region:
            raise BackupError(f"{source_region} replicates its archive to {source.get('partnerRegion')}, not "
                              f"{self.region}; restore it there")  # fmt: skip
        return f"s3://{source['archiveReplicaBucket']}/{prefix}"

    def placements(self, databases: list[Database], hosts: list[HostSpec] | None = None) -> list[Placement]:
        """Several databases to a host, round robin over the region's database hosts in plan order."""
        hosts = hosts or self.reach.database_hosts
        return [Placement(d, hosts[i % len(hosts)]) for i, d in enumerate(databases)]

    def _environment(self) -> dict[str, str]:
        info = server.recorded(self.store.directory)
        endpoint = info.endpoint if info else ""
        return {**local_environment(self.region), **s3compat.environment(endpoint or None)}

    def _endpoint(self) -> list[str]:
        # Inside a host, the local cloud's S3 answers at this address (its VPC endpoint relays to the front).
        info = server.recorded(self.store.directory)
        return ["--endpoint-url", info.endpoint] if info else []

    def run(self, host: HostSpec, verb: str, plan: Path, args: list[str], timeout: float,
            secret: str | None = None) -> dict | list:  # fmt: skip
        """Run `bulkhead db VERB --plan PLAN ... --json` on `host`; its JSON answer, or one line on failure."""
        inside = f"/tmp/bulkhead-plan-{os.getpid()}-{plan.name}"
        (self.reach.sandboxes.root(host) / inside.lstrip("/")).write_text(plan.read_text())
        environment = {**self._environment(), **({PASSWORD_VARIABLE: secret} if secret else {})}
        words = ["env", *(f"{k}={v}" for k, v in environment.items()), HOST_BULKHEAD, "db", verb, "--plan", inside,
                 *args, "--json"]  # fmt: skip
        result = self.reach.sandboxes.run(host, "/bin/sh", "-c", " ".join(map(shlex.quote, words)), timeout=timeout)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise BackupError(f"`bulkhead db {verb}` on {host.name} failed: {last.removeprefix('bulkhead: error: ')}")
        return json.loads(result.stdout)

    def create(self, plan: Path, databases: list[Database], prefix: str, password: str, archive_timeout: int,
               base_port: int = DEFAULT_BASE_PORT) -> list[dict]:  # fmt: skip
        """Make the plan's databases on this region's hosts, each host its share, the hosts side by side."""
        from concurrent.futures import ThreadPoolExecutor

        shares: dict[str, list[str]] = {}
        hosts = {}
        for placement in self.placements(databases):
            shares.setdefault(placement.host.name, []).append(placement.database.name)
            hosts[placement.host.name] = placement.host
        args = ["--archive", self.archive(prefix), *self._endpoint(), "--archive-timeout", str(archive_timeout),
                "--base-port", str(base_port)]  # fmt: skip

        def one(name: str) -> list[dict]:
            made = self.run(hosts[name], "create-fleet", plan, [*args, "--only", ",".join(shares[name])], 900, password)
            return [{**entry, "host": name, "address": hosts[name].address} for entry in made]

        with ThreadPoolExecutor(len(shares)) as pool:
            return [entry for made in pool.map(one, shares) for entry in made]

    def locate(self, name: str) -> HostSpec | None:
        """The database host on which `name` runs (its server's pid file is there)."""
        for host in self.reach.database_hosts:
            if (self.reach.sandboxes.root(host) / DEFAULT_ROOT.relative_to("/") / name / "postmaster.pid").exists():
                return host
        return None

    def restore(self, plan: Path, source_region: str, prefix: str, concurrency: int,
                base_port: int = DEFAULT_BASE_PORT, backup_after: bool = True, extra: list[str] | None = None,
                databases: list[Database] | None = None) -> dict:  # fmt: skip
        """Restore the plan's databases on one of this region's database hosts, from the replica of
        `source_region`'s archive (or this region's own archive when it is this region); a full restore then
        archives into this region's archive. A copy at a point in time is made beside the live database, on
        the host that runs it."""
        source = self.archive(prefix) if source_region == self.region else self.replica_of(source_region, prefix)
        host = self.reach.database_hosts[0]
        if extra and "--target-time" in extra and databases:
            host = self.locate(databases[0].name) or host
        args = ["--archive", source, *self._endpoint(), "--archive-to", self.archive(prefix), "--base-port",
                str(base_port), "--concurrency", str(concurrency), *([] if backup_after else ["--no-backup-after"]),
                *(extra or [])]  # fmt: skip
        results = self.run(host, "restore-fleet", plan, args, 3600)
        return {"host": host.name, "address": host.address, "databases": results}

    def stop(self, plan: Path, base_port: int = DEFAULT_BASE_PORT, drain: bool = True) -> list[str]:
        """Drain (the last WAL archived) and stop every database of the plan on this region's hosts."""
        stopped = []
        for host in self.reach.database_hosts:
            args = ["--base-port", str(base_port), *([] if drain else ["--no-drain"])]
            stopped += self.run(host, "stop-fleet", plan, args, 300)
        return stopped


def archive_state(databases: list[Database], base: str, endpoint: str | None) -> dict[str, dict]:
    """Per database, the newest finished base backup and the newest WAL segment an archive holds."""
    state = {}
    for database in databases:
        archive = Archive(base, database.name, endpoint)
        backups = [b for b in list_backups(archive) if b.status == "DONE"]
        segments = sorted(ArchiveStore(archive).wal_segments())
        state[database.name] = {"backup": backups[-1].backup_id if backups else None,
                                "newest_wal": segments[-1] if segments else None}  # fmt: skip
    return state


def _buckets(project_dir: Path, region: str, source_region: str) -> tuple[Store, dict]:
    store = Store.of_project(project_dir)
    if server.running(store.directory) is not None:
        # The local cloud's buckets answer to its own credentials (`bulkhead local env` prints them too).
        for key, value in local_environment(region).items():
            os.environ.setdefault(key, value)
    here, source = store.outputs(region), store.outputs(source_region)
    if here is None or source is None:
        raise BackupError(f"{region} and {source_region} must be deployed locally; run `bulkhead local up`")
    if source.get("partnerRegion") != region:
        raise BackupError(f"{source_region} replicates its archive to {source.get('partnerRegion')}, not {region}")
    return store, source


def copy_to_replica(project_dir: Path, region: str, source_region: str, prefix: str,
                    databases: list[Database]) -> dict[str, dict]:  # fmt: skip
    """Copy each database's archive from `source_region` into its replica in `region`, what replication has not
    yet delivered; the source region must answer."""
    store, source = _buckets(project_dir, region, source_region)
    copied = {}
    for database in databases:
        report = copy_archive(
            Archive(f"s3://{source['archiveBucket']}/{prefix}", database.name,
                    controller.front_endpoint(store.directory, source_region)),
            Archive(f"s3://{source['archiveReplicaBucket']}/{prefix}", database.name,
                    controller.front_endpoint(store.directory, region)),
        )  # fmt: skip
        copied[database.name] = {"copied": report.copied, "skipped": report.skipped, "bytes": report.bytes}
    return copied


def fleet_state(project_dir: Path, region: str, source_region: str, prefix: str,
                databases: list[Database]) -> dict[str, dict]:  # fmt: skip
    """What the replica of `source_region`'s archive (held in `region`) holds per database, beside what the
    source archive itself holds when its region answers (None when it does not)."""
    store, source = _buckets(project_dir, region, source_region)
    replica = archive_state(databases, f"s3://{source['archiveReplicaBucket']}/{prefix}",
                            controller.front_endpoint(store.directory, region))  # fmt: skip
    try:
        original = archive_state(databases, f"s3://{source['archiveBucket']}/{prefix}",
                                 controller.front_endpoint(store.directory, source_region))  # fmt: skip
    except BackupError:
        original = {}  # the source region does not answer: what the replica holds is all there is
    return {name: {"replica": entry, "source": original.get(name)} for name, entry in replica.items()}
