"""The S3 side of an archive, behind one small adapter: listing, reading, copying, clear errors.

Decisions (which backup, is the WAL continuous) live in `decisions.py` and `wal.py`; this module only
talks to S3 and turns botocore's failures into one line that says what to fix.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import boto3
import botocore.config
import botocore.exceptions

from bulkhead import s3compat
from bulkhead.backup import wal
from bulkhead.backup.settings import Archive, BackupError

_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidClientTokenId", "AccessDenied", "403"}


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    etag: str


class ArchiveStore:
    """One archive's objects in S3."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        config = botocore.config.Config(
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=3,
            read_timeout=60,
            **s3compat.client_settings(archive.endpoint_url),
        )
        self.s3 = boto3.client("s3", endpoint_url=archive.endpoint_url, config=config)

    def explain(self, error: Exception) -> BackupError:
        """One line for an S3 failure, naming what to check."""
        where = self.archive.endpoint_url or "AWS S3"
        if isinstance(error, botocore.exceptions.EndpointConnectionError | botocore.exceptions.ConnectTimeoutError):
            return BackupError(f"cannot reach the S3 endpoint {where}; check --endpoint-url and the network")
        if isinstance(error, botocore.exceptions.NoCredentialsError):
            return BackupError("no AWS credentials found; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile")
        if isinstance(error, botocore.exceptions.ClientError):
            code = error.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchBucket", "404"):
                return BackupError(f"bucket {self.archive.bucket} does not exist at {where}; check --archive")
            if code in _AUTH_CODES:
                return BackupError(f"{where} refused the credentials ({code}); check the AWS access key and secret")
            return BackupError(f"S3 at {where} answered {code}: {error.response.get('Error', {}).get('Message', '')}")
        return BackupError(f"S3 at {where} failed: {error}")

    def check_access(self) -> None:
        """Fail fast, in one line, when the archive cannot be reached or read."""
        try:
            self.s3.head_bucket(Bucket=self.archive.bucket)
        except Exception as error:
            raise self.explain(error) from None

    def objects(self, below: str = "") -> Iterator[StoredObject]:
        """Every object under the server's prefix (and `below` it)."""
        try:
            pages = self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.archive.bucket, Prefix=self.archive.prefix + below
            )
            for page in pages:
                for item in page.get("Contents", []):
                    yield StoredObject(item["Key"], item["Size"], item["ETag"].strip('"'))
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
            raise self.explain(error) from None

    def wal_segments(self) -> dict[str, StoredObject]:
        """Archived WAL segments by name (compression suffix removed)."""
        segments = {}
        for item in self.objects("wals/"):
            name = item.key.rsplit("/", 1)[-1].split(".", 1)[0]
            if wal.is_segment(name):
                segments[name] = item
        return segments

    def read(self, key: str) -> bytes:
        try:
            return self.s3.get_object(Bucket=self.archive.bucket, Key=key)["Body"].read()
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
            raise self.explain(error) from None

    def readable_segment(self, item: StoredObject, segment_size: int) -> bool:
        """A segment is readable when it downloads and decompresses to a whole segment of `segment_size`."""
        try:
            data = decompress_wal(item.key, self.read(item.key))
        except (OSError, EOFError, RuntimeError, ValueError):
            return False
        return len(data) == segment_size

    def upload(self, key: str, body: bytes) -> None:
        try:
            self.s3.upload_fileobj(io.BytesIO(body), self.archive.bucket, key)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
            raise self.explain(error) from None


# The suffixes barman-cloud gives compressed WAL, and its names for the compressions.
_COMPRESSIONS = {"gz": "gzip", "bz2": "bzip2", "xz": "xz", "snappy": "snappy", "zst": "zstd", "lz4": "lz4"}


def decompress_wal(key: str, body: bytes) -> bytes:
    """An archived WAL file's content, decompressed by barman-cloud's own code as its suffix says."""
    from barman.clients.cloud_compression import decompress_to_file

    suffix = key.rsplit(".", 1)[-1]
    if suffix not in _COMPRESSIONS:
        return body
    content = io.BytesIO()
    decompress_to_file(io.BytesIO(body), content, _COMPRESSIONS[suffix])
    return content.getvalue()
