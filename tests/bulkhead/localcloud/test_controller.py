"""The local cloud's controller does what AWS does and moto does not: replication with a lag, one front
per region that a drill can take off the air, and Route 53's TestDNSAnswer from real health probes."""

from __future__ import annotations

import socket
import time

import boto3
import botocore.exceptions
import pytest
from moto import mock_aws

from bulkhead import dns
from bulkhead.localcloud import cloud, controller, server
from bulkhead.localcloud.aws import LOCAL_CREDENTIALS
from bulkhead.localcloud.replication import Replicator
from bulkhead.localcloud.state import Store

pytestmark = pytest.mark.moto
LAG = 1.5


@pytest.fixture(scope="module")
def local(project_dir, tmp_path_factory):
    """us-east-1, its partner us-west-2 and the global stack, with a replication lag of LAG seconds."""
    base = tmp_path_factory.mktemp("controlled")
    store = Store(base / "local")
    info, _ = cloud.up(["us-east-1", "us-west-2", "global"], store, project_dir=project_dir, replication_lag=LAG,
                       hosts=base / "hosts")  # fmt: skip
    yield store, info
    controller.stop(store.directory)
    server.stop(store.directory)


def _s3(endpoint: str, region: str):
    return boto3.client("s3", endpoint_url=endpoint, region_name=region, **LOCAL_CREDENTIALS)


def _buckets(store: Store) -> tuple[str, str]:
    outputs = store.outputs("us-east-1")
    return outputs["archiveBucket"], outputs["archiveReplicaBucket"]


def _wait_for(predicate, timeout: float, pause: float = 0.1) -> float | None:
    """Seconds until `predicate()` held, or None if it never did within `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(pause)
    return None


def _has(client, bucket: str, key: str) -> bool:
    try:
        client.head_object(Bucket=bucket, Key=key)
        return True
    except botocore.exceptions.ClientError:
        return False


def test_replication__a_new_object_reaches_the_partner_bucket_after_the_lag(local):
    store, _ = local
    source, replica = _buckets(store)
    east, west = (_s3(controller.front_endpoint(store.directory, r), r) for r in ("us-east-1", "us-west-2"))
    east.put_object(Bucket=source, Key="lagged/one", Body=b"wal bytes")
    seconds = _wait_for(lambda: _has(west, replica, "lagged/one"), timeout=LAG + 10)
    assert seconds is not None, "the object never reached the partner region"
    assert seconds >= LAG - 0.2
    copied = west.get_object(Bucket=replica, Key="lagged/one")
    assert copied["Body"].read() == b"wal bytes"
    [listed] = west.list_objects_v2(Bucket=replica, Prefix="lagged/one")["Contents"]
    assert listed["StorageClass"] == "STANDARD_IA"  # as the rule's destination says
    status = controller.request(controller.running(store.directory), "GET", "/status")["replication"]
    assert status["copied"] >= 1 and status["last_lag_s"] >= LAG - 0.2


def test_replication__a_key_rewritten_within_a_second_ends_with_its_newest_version(local):
    """barman-cloud-backup writes backup.info as STARTED, then as DONE: the replica must say DONE."""
    store, _ = local
    source, replica = _buckets(store)
    east, west = (_s3(controller.front_endpoint(store.directory, r), r) for r in ("us-east-1", "us-west-2"))
    east.put_object(Bucket=source, Key="rewritten/backup.info", Body=b"status=STARTED")
    east.put_object(Bucket=source, Key="rewritten/backup.info", Body=b"status=DONE")

    def replica_says_done() -> bool:
        return _has(west, replica, "rewritten/backup.info") and west.get_object(
            Bucket=replica, Key="rewritten/backup.info")["Body"].read() == b"status=DONE"  # fmt: skip

    assert _wait_for(replica_says_done, timeout=LAG + 10) is not None
    time.sleep(LAG + 1)  # and it stays so: the older version never lands on top
    assert west.get_object(Bucket=replica, Key="rewritten/backup.info")["Body"].read() == b"status=DONE"


def test_replication__delete_markers_follow_the_rule(local):
    store, _ = local
    source, replica = _buckets(store)
    east, west = (_s3(controller.front_endpoint(store.directory, r), r) for r in ("us-east-1", "us-west-2"))
    east.put_object(Bucket=source, Key="marked/kept", Body=b"x")
    assert _wait_for(lambda: _has(west, replica, "marked/kept"), timeout=LAG + 10) is not None
    # The archive's rule leaves delete markers behind: a delete in the source never empties the replica.
    east.delete_object(Bucket=source, Key="marked/kept")
    time.sleep(LAG + 2)
    assert _has(west, replica, "marked/kept")
    assert west.list_object_versions(Bucket=replica, Prefix="marked/kept").get("DeleteMarkers", []) == []


def test_replication__a_rule_that_replicates_delete_markers_carries_the_delete_over():
    """moto answers every rule with DeleteMarkerReplication Disabled, whatever was put; here the rule is read
    as AWS would return it, and the copying is real (an in-process moto)."""
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        for bucket in ("source-bucket", "replica-bucket"):
            s3.create_bucket(Bucket=bucket)
            s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        rule = {
            "ID": "all",
            "Status": "Enabled",
            "Priority": 1,
            "Filter": {"Prefix": ""},
            "DeleteMarkerReplication": {"Status": "Enabled"},
            "Destination": {"Bucket": "arn:aws:s3:::replica-bucket"},
        }
        s3.put_bucket_replication(
            Bucket="source-bucket",
            ReplicationConfiguration={"Role": "arn:aws:iam::123456789012:role/r", "Rules": [rule]},
        )

        class AsAws:
            def __getattr__(self, name):
                return getattr(s3, name)

            def get_bucket_replication(self, **kwargs):
                answer = s3.get_bucket_replication(**kwargs)
                answer["ReplicationConfiguration"]["Rules"] = [rule]
                return answer

        replicator = Replicator(lambda region: AsAws(), lag=0, reachable=lambda region: True)
        s3.put_object(Bucket="source-bucket", Key="k", Body=b"v")
        replicator.tick()
        assert s3.get_object(Bucket="replica-bucket", Key="k")["Body"].read() == b"v"
        s3.delete_object(Bucket="source-bucket", Key="k")
        replicator.tick()
        assert not _has(s3, "replica-bucket", "k")
        assert replicator.figures.as_json()["delete_markers"] == 1
        # A version deleted for good (by its id) is never replicated, as on AWS.
        s3.put_object(Bucket="source-bucket", Key="v", Body=b"w")
        replicator.tick()
        [version] = s3.list_object_versions(Bucket="source-bucket", Prefix="v")["Versions"]
        s3.delete_object(Bucket="source-bucket", Key="v", VersionId=version["VersionId"])
        replicator.tick()
        assert _has(s3, "replica-bucket", "v")


def test_fronts__a_region_off_the_air_refuses_and_replicates_nothing_until_it_returns(local):
    store, info = local
    running = controller.running(store.directory)
    source, replica = _buckets(store)
    port = running.fronts["us-east-1"]
    direct = _s3(info.endpoint, "us-east-1")  # what the region itself holds, behind its own front
    west = _s3(controller.front_endpoint(store.directory, "us-west-2"), "us-west-2")
    controller.request(running, "POST", "/regions/us-east-1/off-air")
    try:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2)
        direct.put_object(Bucket=source, Key="stranded/one", Body=b"written as the region went down")
        time.sleep(LAG + 2)
        assert not _has(west, replica, "stranded/one")
        assert west.list_buckets()["Buckets"]  # the partner region still answers
    finally:
        controller.request(running, "POST", "/regions/us-east-1/on-air")
    assert controller.running(store.directory).fronts["us-east-1"] == port
    assert _wait_for(lambda: _has(west, replica, "stranded/one"), timeout=LAG + 10) is not None


def test_dns__test_dns_answer_comes_from_the_controller_with_the_record_it_chose(local, project_dir):
    store, _ = local
    running = controller.running(store.directory)
    route53 = boto3.client("route53", endpoint_url=running.endpoint, region_name="us-east-1", **LOCAL_CREDENTIALS)
    # No router of either region answers here: Route 53 answers PRIMARY when every record is unhealthy.
    assert _wait_for(lambda: all(not c["healthy"] for c in controller.request(running, "GET", "/status")
                                 ["health_checks"].values()), timeout=45, pause=1) is not None  # fmt: skip
    answer = dns.answer(route53, "apps.platform.example.net")
    assert (answer.region, answer.role) == ("us-east-1", "PRIMARY")
    assert answer.value == store.outputs("us-east-1")["routerLbDnsName"]
    with pytest.raises(dns.DnsError, match=r"no hosted zone holds apps\.elsewhere\.org"):
        dns.answer(route53, "apps.elsewhere.org")


def test_status__shows_the_controller_and_down_stops_it(project_dir, tmp_path):
    store = Store(tmp_path / "local")
    try:
        cloud.up(["eu-west-1"], store, project_dir=project_dir, hosts=tmp_path / "hosts")
        report = cloud.status(store)
        assert report["controller"]["replication"]["lag_s"] == controller.DEFAULT_REPLICATION_LAG
        assert set(report["controller"]["regions"]) >= {"eu-west-1", "us-east-1", "us-west-2", "ca-central-1"}
        pid = controller.recorded(store.directory).pid
    finally:
        cloud.down(store)
    assert controller.running(store.directory) is None
    assert _wait_for(lambda: not _alive(pid), timeout=10) is not None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except OSError:
        return False
