"""The roles on real sandbox hosts, checked with testinfra through the same chroot-and-namespace path Ansible uses."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from pathlib import Path

import boto3
import pytest
import yaml

from bulkhead.backup.settings import Archive, archive_command
from bulkhead.hosts import converge, inventory
from bulkhead.hosts.sandbox import Sandboxes, fabric_netns
from bulkhead.localcloud import server
from bulkhead.localcloud.aws import LOCAL_CREDENTIALS

pytestmark = pytest.mark.hosts


def _psql(host, sql: str) -> str:
    return host.check_output(f'runuser -u postgres -- psql -h /var/run/postgresql -v ON_ERROR_STOP=1 -tAc "{sql}"')


def test_postgres__listens_on_the_sandbox_address(site):
    for spec in site.of_role("postgres"):
        assert site.host(spec).socket(f"tcp://{spec.address}:5432").is_listening


def test_postgres__the_standby_streams_what_the_primary_writes(site):
    (primary,) = site.of_role("postgres", postgres="primary")
    (standby,) = site.of_role("postgres", postgres="standby")
    assert primary.az != standby.az
    _psql(
        site.host(primary),
        "CREATE TABLE IF NOT EXISTS probe (v text); INSERT INTO probe VALUES ('written on the primary')",
    )
    standby_host = site.host(standby)
    assert _psql(standby_host, "SELECT pg_is_in_recovery()") == "t"
    deadline = time.monotonic() + 30
    while _psql(standby_host, "SELECT count(*) FROM probe WHERE v = 'written on the primary'") != "1":
        if time.monotonic() > deadline:
            pytest.fail("the row written on the primary did not reach the standby within 30 s")
        time.sleep(0.2)


def test_postgres__archive_command_is_the_one_bulkhead_db_defines(site):
    (primary,) = site.of_role("postgres", postgres="primary")
    endpoint = server.running(site.store.directory).endpoint
    outputs = site.store.outputs(primary.region)
    expected = archive_command(Archive(f"s3://{outputs['archiveBucket']}", outputs["databaseServer"], endpoint))
    assert _psql(site.host(primary), "SHOW archive_command") == expected
    assert _psql(site.host(primary), "SHOW archive_mode") == "on"


def test_postgres__the_primary_archives_its_wal_into_the_local_clouds_bucket(site):
    (primary,) = site.of_role("postgres", postgres="primary")
    host = site.host(primary)
    _psql(host, "CREATE TABLE IF NOT EXISTS archived (v int); INSERT INTO archived VALUES (1)")
    segment = _psql(host, "SELECT pg_walfile_name(pg_switch_wal())")
    deadline = time.monotonic() + 30
    while True:
        archived, failed = _psql(host, "SELECT archived_count, failed_count FROM pg_stat_archiver").split("|")
        if int(archived) > 0 and _psql(host, "SELECT last_archived_wal FROM pg_stat_archiver") >= segment:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"{segment} was not archived in 30 s (archived {archived}, failed {failed}); see the log")
        time.sleep(0.3)
    info = server.running(site.store.directory)
    s3 = boto3.client("s3", endpoint_url=info.endpoint, region_name=primary.region, **LOCAL_CREDENTIALS)
    outputs = site.store.outputs(primary.region)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=outputs["archiveBucket"]).get("Contents", [])]
    assert any(key.startswith(f"{outputs['databaseServer']}/wals/") and segment in key for key in keys)


def test_router__answers_on_80_and_443_and_reaches_apps_in_other_azs(site):
    for router in site.of_role("router"):
        host = site.host(router)
        assert host.check_output(f"curl -sf http://{router.address}/healthz") == "ok"
        zones = set()
        for scheme in ("http", "https") * 3:
            answer = json.loads(host.check_output(f"curl -sfk {scheme}://{router.address}/"))
            assert answer["app"] == "sample"
            zones.add(answer["az"])
        assert zones - {router.az}, f"router in {router.az} reached only its own AZ"


def test_logs__are_one_json_object_per_line(site):
    checks = {"router": "/var/log/bulkhead/router.log", "dyno_host": "/var/log/bulkhead/app-sample.log",
              "postgres": "/var/log/bulkhead/postgresql/postgresql.json"}  # fmt: skip
    for role, path in checks.items():
        spec = site.of_role(role)[0]
        lines = site.host(spec).check_output(f"tail -n 5 {path}").splitlines()
        assert lines, f"{path} on {spec.name} is empty"
        for line in lines:
            json.loads(line)


def test_ssh__sshd_runs_and_refuses_passwords(site):
    for spec in site.specs:
        host = site.host(spec)
        assert host.socket(f"tcp://{spec.address}:22").is_listening
        effective = host.check_output("/usr/sbin/sshd -T")
        assert re.search(r"^passwordauthentication no$", effective, re.M)
        assert re.search(r"^kbdinteractiveauthentication no$", effective, re.M)


def test_site__a_second_run_changes_nothing(site):
    again = site.converge()
    assert again.succeeded, again.failures
    assert sum(site.first_run.changed.values()) > 0
    assert {name: n for name, n in again.changed.items() if n} == {}


def test_configure__a_standby_without_a_primary_fails_naming_host_and_variable(site):
    (standby,) = site.of_role("postgres", postgres="standby")
    (primary,) = site.of_role("postgres", postgres="primary")
    result = site.converge(playbook="postgres.yml", extra={"postgres_primary_address": ""})
    assert result.failures == [
        f"host {standby.name} failed at 'Ensure a standby knows its primary': host {standby.name}: "
        "postgres_primary_address is empty; a standby needs its primary (put a host in group postgres_primary "
        "or set postgres_primary_address)"
    ]
    assert result.changed.get(primary.name, 0) == 0, "the primary is unharmed"
    assert _psql(site.host(primary), "SELECT 1") == "1"


def test_configure__an_unreachable_host_is_named_and_the_others_converge(site, tmp_path):
    document = yaml.safe_load(Path(site.inventory_path).read_text())
    document["all"]["hosts"]["i-gone"] = {**next(iter(document["all"]["hosts"].values())),
                                          "ansible_host": str(tmp_path / "no-such-root")}  # fmt: skip
    document["all"]["children"]["role_router"]["hosts"]["i-gone"] = None
    broken = tmp_path / "inventory.yml"
    broken.write_text(yaml.safe_dump(document))
    result = converge.converge(site.sandboxes, broken, site.extra_vars(), site.project_dir, playbook="router.yml")
    # The chroot connection reports a missing root as a failure to gather facts, naming the host.
    assert len(result.failures) == 1 and result.failures[0].startswith("host i-gone ")
    assert "no-such-root is not a directory" in result.failures[0]
    assert all(result.ok.get(r.name, 0) > 0 for r in site.of_role("router"))


def test_hosts_down__leaves_no_mount_namespace_or_process(site, tmp_path):
    # Given: a set of sandboxes of its own, of the routers the site left out (the site stays up for the tests
    # that run after this one, and a host's namespace is named for its instance)
    sandboxes = Sandboxes(tmp_path / "own-hosts")
    taken = {s.name for s in site.specs}
    specs = [s for s in inventory.local_hosts(site.store_region, site.store, site.project_dir) if s.name not in taken]
    assert len(specs) == 2
    directory = sandboxes.directory
    namespaces = {s.netns for s in specs} | {fabric_netns(site.store_region, directory)}
    try:
        sandboxes.up(specs, s3_port=server.running(site.store.directory).port)
        assert all(sandboxes.alive(s) for s in specs)
        running = subprocess.run(["ip", "netns", "pids", specs[0].netns], capture_output=True, text=True, check=True)
        assert running.stdout.split(), "its init runs inside its namespace"
    except BaseException:
        sandboxes.down()
        raise
    # When: they are taken down; Then: nothing of them is left, the region's bridge included
    assert sandboxes.down() == len(specs)
    mounts = Path("/proc/self/mounts").read_text()
    assert str(directory) not in mounts
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not namespaces & {line.split()[0] for line in listed.splitlines() if line}
    roots = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                roots.append(str(Path(f"/proc/{proc.name}/root").readlink()))
    assert not [r for r in roots if r.startswith(str(directory))]
    assert not directory.exists()
