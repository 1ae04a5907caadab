"""Continuous backup into an object-locked archive, as the program now lays it out (governance mode)."""

from __future__ import annotations

import shutil
import uuid

import boto3
import pytest
from botocore.config import Config

from bulkhead import s3compat
from bulkhead.backup import base_backup
from bulkhead.backup.settings import Archive
from bulkhead.localcloud.aws import LOCAL_CREDENTIALS

pytestmark = pytest.mark.postgres


@pytest.fixture
def locked_archive(s3, s3_endpoint) -> Archive:
    """An empty archive in a versioned bucket with a governance-mode default retention."""
    bucket = f"locked-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_object_lock_configuration(
        Bucket=bucket,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 35}},
        },
    )
    return Archive(f"s3://{bucket}/pg", "pg-test", s3_endpoint)


def _client(endpoint: str, **settings: str):
    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", config=Config(**settings), **LOCAL_CREDENTIALS
    )


def test_locked_archive__an_upload_without_a_checksum_is_refused_and_bulkheads_settings_send_one(
    locked_archive, s3_endpoint
):
    bucket = locked_archive.bucket
    bare = _client(s3_endpoint, request_checksum_calculation="when_required")
    with pytest.raises(bare.exceptions.ClientError) as refused:
        bare.put_object(Bucket=bucket, Key="pg/probe", Body=b"wal")
    assert refused.value.response["Error"]["Code"] == "MissingUploadObjectWithObjectLockHeaders"
    ours = _client(s3_endpoint, **s3compat.client_settings(s3_endpoint))
    answer = ours.put_object(Bucket=bucket, Key="pg/probe", Body=b"wal")
    assert answer["VersionId"]


def test_locked_archive__base_backup_and_wal_land_locked_and_restore_every_row(servers, locked_archive, s3, restored):
    # Given a primary archiving into a locked bucket, with a base backup and rows after it
    pg = servers("primary")
    pg.init(locked_archive, 60)
    pg.start()
    with pg.connect() as connection:
        connection.execute("CREATE TABLE ledger (id bigserial PRIMARY KEY, note text)")
        connection.execute("INSERT INTO ledger (note) SELECT md5(g::text) FROM generate_series(1, 500) g")
    base_backup.backup(locked_archive, "127.0.0.1", pg.port, "postgres", jobs=2, timeout=300)
    with pg.connect() as connection:
        connection.execute("INSERT INTO ledger (note) SELECT md5(g::text) FROM generate_series(1, 500) g")
    segment = pg.switch_and_wait_archived()
    with pg.connect() as connection:
        expected = connection.execute("SELECT count(*), max(id) FROM ledger").fetchone()
    # Then what barman-cloud wrote is under the bucket's retention: WAL and the base backup alike
    listed = s3.list_objects_v2(Bucket=locked_archive.bucket, Prefix="pg/")["Contents"]
    wal = [o["Key"] for o in listed if "/wals/" in o["Key"] and segment in o["Key"]]
    # The base backup's data tar is a multipart upload: S3 gives it the default retention as well.
    data = [o["Key"] for o in listed if "/base/" in o["Key"] and "/data.tar" in o["Key"]]
    assert wal and data, f"expected the segment {segment} and a base backup in {[o['Key'] for o in listed]}"
    for key in (wal[0], data[0]):
        head = s3.head_object(Bucket=locked_archive.bucket, Key=key)
        assert head.get("ObjectLockMode") == "GOVERNANCE", key
        # And a delete of that version without bypassing governance is refused
        with pytest.raises(s3.exceptions.ClientError) as refused:
            s3.delete_object(Bucket=locked_archive.bucket, Key=key, VersionId=head["VersionId"])
        assert refused.value.response["Error"]["Code"] == "AccessDenied"
    # When the disk is lost, the restore from the locked archive has every row
    pg.kill()
    shutil.rmtree(pg.data_dir)
    with restored(locked_archive).connect() as connection:
        assert connection.execute("SELECT count(*), max(id) FROM ledger").fetchone() == expected == (1000, 1000)
