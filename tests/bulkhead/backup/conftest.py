"""A real PostgreSQL 15 and a moto S3, both started by the tests on free loopback ports."""

from __future__ import annotations

import shutil
import uuid

import boto3
import pytest

from bulkhead.backup.local_postgres import PgServer, postgres_workdir
from bulkhead.backup.settings import Archive
from bulkhead.localcloud import server
from bulkhead.localcloud.aws import LOCAL_CREDENTIALS, local_environment


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """A moto server for the archives."""
    directory = tmp_path_factory.mktemp("moto")
    info = server.start(directory)
    yield info.endpoint
    server.stop(directory)


@pytest.fixture
def s3(s3_endpoint):
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", **LOCAL_CREDENTIALS)


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch):
    for key, value in local_environment().items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def archive(s3, s3_endpoint) -> Archive:
    """An empty archive in a new bucket."""
    bucket = f"archive-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    return Archive(f"s3://{bucket}/pg", "pg-test", s3_endpoint)


@pytest.fixture
def workdir():
    """A directory the postgres user may write in (pytest's tmp_path is root's only)."""
    path = postgres_workdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def servers(workdir):
    """Make PostgreSQL servers in `workdir`; every one is stopped at the end."""
    from bulkhead.localcloud.server import free_port

    made: list[PgServer] = []

    def make(name: str) -> PgServer:
        pg = PgServer(workdir / name, free_port())
        made.append(pg)
        return pg

    yield make
    for pg in made:
        pg.stop()


@pytest.fixture
def restored(servers, workdir):
    """Restore an archive's latest state into a new directory of `workdir` and start a server there."""
    from bulkhead.backup import restore

    def make(archive: Archive, name: str = "restored") -> PgServer:
        target = workdir / name
        restore.restore(archive, target)
        pg = servers(name)
        pg.data_dir = target
        pg.start()
        pg.wait_until_primary()
        return pg

    return make
