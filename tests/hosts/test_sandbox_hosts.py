"""The roles on real sandbox hosts, checked with testinfra through the same chroot-and-namespace path Ansible uses."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import subprocess
import time
from pathlib import Path

import boto3
import pytest
import yaml

from bulkhead.backup.settings import Archive, archive_command
from bulkhead.hosts import converge
from bulkhead.hosts.sandbox import Sandboxes, fabric_netns
from bulkhead.localcloud import server
from bulkhead.localcloud.aws import LOCAL_CREDENTIALS, LocalAws
from bulkhead.ops import secret_scan

pytestmark = pytest.mark.hosts


def _psql(host, sql: str) -> str:
    return host.check_output(f'runuser -u postgres -- psql -h /var/run/postgresql -v ON_ERROR_STOP=1 -tAc "{sql}"')


def test_postgres__listens_on_the_sandbox_address(site):
    for spec in site.of_role("postgres"):
        assert site.host(spec).socket(f"tcp://{spec.address}:5432").is_listening


def _leader_and_replicas(site):
    found = site.reach.cluster()
    (leader,) = [s for s in site.of_role("postgres") if s.name in {m.host for m in found if m.role == "leader"}]
    return leader, [s for s in site.of_role("postgres") if s.name != leader.name]


def test_postgres__one_member_per_az_under_patroni_and_the_replicas_stream_what_the_leader_writes(site):
    leader, replicas = _leader_and_replicas(site)
    assert sorted(s.az for s in site.of_role("postgres")) == ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
    assert len(replicas) == 2
    for spec in site.of_role("postgres"):
        assert "RUNNING" in site.host(spec).check_output("supervisorctl status patroni etcd").splitlines()[0]
    _psql(site.host(leader), "CREATE TABLE IF NOT EXISTS probe (v text); INSERT INTO probe VALUES ('on the leader')")
    deadline = time.monotonic() + 30
    for replica in replicas:
        host = site.host(replica)
        assert _psql(host, "SELECT pg_is_in_recovery()") == "t"
        while _psql(host, "SELECT count(*) FROM probe WHERE v = 'on the leader'") != "1":
            if time.monotonic() > deadline:
                pytest.fail(f"the row written on the leader did not reach {replica.name} within 30 s")
            time.sleep(0.2)


def test_postgres__synchronous_mode_keeps_one_synchronous_replica(site):
    found = site.reach.cluster()
    assert site.reach.dynamic_config()["synchronous_mode"] is True
    assert sum(m.synchronous for m in found) == 1


def test_postgres__archive_command_is_the_one_bulkhead_db_defines(site):
    leader, _ = _leader_and_replicas(site)
    endpoint = server.running(site.store.directory).endpoint
    outputs = site.store.outputs(leader.region)
    expected = archive_command(Archive(f"s3://{outputs['archiveBucket']}", outputs["databaseServer"], endpoint))
    assert _psql(site.host(leader), "SHOW archive_command") == expected
    assert _psql(site.host(leader), "SHOW archive_mode") == "on"


def test_postgres__the_leader_archives_its_wal_into_the_local_clouds_bucket(site):
    primary, _ = _leader_and_replicas(site)
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


def test_postgres__network_connections_and_replication_use_tls_and_plain_ones_are_refused(site):
    leader, replicas = _leader_and_replicas(site)
    host = site.host(leader)
    # Both replicas stream over TLS
    streams = _psql(host, "SELECT count(*) FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) WHERE s.ssl")
    assert streams == str(len(replicas))
    # A client over the network without TLS is turned away by pg_hba (hostssl only)
    plain = host.run(
        f"runuser -u postgres -- psql 'host={leader.address} dbname=postgres sslmode=disable' -tAc 'SELECT 1'"
    )
    assert plain.rc != 0 and "no pg_hba.conf entry" in plain.stderr and "no encryption" in plain.stderr


def test_secrets__no_password_is_in_user_data_state_outputs_or_any_log_and_a_leak_is_found(site):
    local = LocalAws(server.running(site.store.directory).endpoint)

    def scan():
        return secret_scan.scan([site.store.directory], site.sandboxes, [site.store_region],
                                lambda r: local.client("ssm", r), lambda r: local.client("ec2", r))  # fmt: skip

    clean = scan()
    # The site's passwords (replication, superuser, app) are looked for, in every host's logs among the rest
    assert len(clean.secrets) >= 3 and clean.places > 20
    assert clean.findings == []
    # And a password that did reach a log is found, by name and place
    name, value = next(iter(clean.secrets.items()))
    leak = site.store.directory / "leak-test.log"
    leak.write_text(f'{{"event": "connect", "dsn": "postgresql://app:{value}@db/app"}}\n')
    try:
        assert [(f.secret, f.place) for f in scan().findings] == [(name, str(leak))]
    finally:
        leak.unlink()


def test_router__answers_health_on_80_redirects_the_rest_and_reaches_apps_in_other_azs(site):
    for router in site.of_role("router"):
        host = site.host(router)
        assert host.check_output(f"curl -sf http://{router.address}/healthz") == "ok"
        redirect = host.check_output(
            f"curl -s -o /dev/null -w '%{{http_code}} %{{redirect_url}}' http://{router.address}/x"
        )
        assert redirect == f"301 https://{router.address}/x"
        zones = set()
        for _ in range(6):
            answer = json.loads(host.check_output(f"curl -sfk https://{router.address}/"))
            assert answer["app"] == "sample"
            zones.add(answer["az"])
        assert zones - {router.az}, f"router in {router.az} reached only its own AZ"


def test_logs__are_one_json_object_per_line(site):
    checks = {"router": "/var/log/bulkhead/router.log", "dyno_host": "/var/log/bulkhead/dyno-manager.log",
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


def test_site__a_second_run_leaves_every_host_whose_inputs_are_unchanged(site):
    # Given: the site converged once, each host recording its inputs; When: it converges again, nothing changed
    again = site.converge()
    # Then: no host runs a task, and each one is reported as left unchanged
    assert again.succeeded, again.failures
    assert sorted(again.unchanged) == sorted(s.name for s in site.specs)
    assert again.processed == [] and again.ok == {}


def test_site__a_changed_input_converges_its_hosts_again_and_a_forced_run_changes_nothing(site):
    router, dyno = site.of_role("router")[0], site.of_role("dyno_host")[0]
    standby = site.of_role("postgres", postgres="standby")[0]
    # When: a router's run gets a variable more (one that no role reads)
    changed = site.converge(limit=router.name, extra={"bulkhead_probe": "1"})
    # Then: that router converges, and changes nothing
    assert changed.succeeded, changed.failures
    assert changed.processed == [router.name] and changed.unchanged == []
    # When: a dyno host and a database member are forced with their inputs unchanged; Then: nothing changes
    forced = site.converge(limit=f"{dyno.name},{standby.name}", force=True)
    assert forced.succeeded, forced.failures
    assert forced.processed == sorted([dyno.name, standby.name])
    assert sum(site.first_run.changed.values()) > 0, "the first run's counter counts changes"
    assert {name: n for name, n in {**changed.changed, **forced.changed}.items() if n} == {}


def test_configure__a_member_list_without_the_host_fails_naming_host_and_variable(site):
    leader, _ = _leader_and_replicas(site)
    members = site.of_role("postgres")
    result = site.converge(playbook="postgres.yml", extra={"postgres_members": ["10.30.143.1"]})
    assert sorted(result.failures) == sorted(
        f"host {m.name} failed at 'Ensure the cluster has an odd number of members, this host among them': "
        f"host {m.name}: etcd_members is ['10.30.143.1'] and this host's address is {m.address}; give 1, 3 or 5 "
        "member addresses that include this host's (the region stack's postgres_members)"
        for m in members
    )
    assert all(result.changed.get(m.name, 0) == 0 for m in members), "no member was touched"
    assert _psql(site.host(leader), "SELECT 1") == "1"


def test_configure__an_unreachable_host_is_named_and_the_others_converge(site, tmp_path):
    document = yaml.safe_load(Path(site.inventory_path).read_text())
    document["all"]["hosts"]["i-gone"] = {**next(iter(document["all"]["hosts"].values())),
                                          "ansible_host": str(tmp_path / "no-such-root")}  # fmt: skip
    document["all"]["children"]["role_router"]["hosts"]["i-gone"] = None
    broken = tmp_path / "inventory.yml"
    broken.write_text(yaml.safe_dump(document))
    # Beside one real router (one is enough to show the others go on; each costs a whole router converge)
    router = site.of_role("router")[0]
    result = converge.converge(site.sandboxes, broken, site.extra_vars(), site.project_dir, playbook="router.yml",
                               limit=f"{router.name},i-gone")  # fmt: skip
    # The chroot connection reports a missing root as a failure to gather facts, naming the host.
    assert len(result.failures) == 1 and result.failures[0].startswith("host i-gone ")
    assert "no-such-root is not a directory" in result.failures[0]
    assert result.ok.get(router.name, 0) > 0 and result.processed == sorted([router.name, "i-gone"])


def test_hosts_down__leaves_no_mount_namespace_or_process(site, tmp_path):
    # Given: a set of sandboxes of its own, for two made-up instances beside the site's (which stays up for the
    # tests after this one; a host's namespace is named for its instance)
    sandboxes = Sandboxes(tmp_path / "own-hosts")
    routers = site.of_role("router")[:2]
    specs = [
        dataclasses.replace(r, name=f"i-down{i:013d}", address=f"10.30.{200 + i}.9") for i, r in enumerate(routers)
    ]
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
