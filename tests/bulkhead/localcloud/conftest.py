"""Fixtures of the local-cloud tests: each starts its own moto server on a free loopback port."""

from __future__ import annotations

import shutil
from pathlib import Path

import boto3
import pytest

from bulkhead.localcloud import cloud, controller, server
from bulkhead.localcloud.aws import LOCAL_CREDENTIALS
from bulkhead.localcloud.state import Store


def copy_project(source: Path, destination: Path) -> Path:
    """The Pulumi project (program and stack files) copied, so a test may edit its config."""
    destination.mkdir(parents=True, exist_ok=True)
    for path in source.glob("Pulumi*.yaml"):
        shutil.copy(path, destination / path.name)
    shutil.copytree(source / "infra", destination / "infra", ignore=shutil.ignore_patterns("__pycache__"))
    return destination


class Clients:
    """boto3 clients against one local cloud."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def __call__(self, service: str, region: str, **credentials):
        return boto3.client(
            service, endpoint_url=self.endpoint, region_name=region, **(credentials or LOCAL_CREDENTIALS)
        )


@pytest.fixture
def project(project_dir, tmp_path) -> Path:
    """A copy of the Pulumi project this test may change."""
    return copy_project(project_dir, tmp_path / "project")


@pytest.fixture
def store(tmp_path) -> Store:
    """An empty local cloud; its server, if a test starts one, is stopped afterwards."""
    local = Store(tmp_path / "local")
    yield local
    controller.stop(local.directory)
    server.stop(local.directory)


@pytest.fixture(scope="session")
def deployed(project_dir, tmp_path_factory):
    """Every stack of the repository deployed once into one local cloud, shared by the modules that read it
    (test_local_alerting, test_local_up); a test that changes it puts it back."""
    local = Store(tmp_path_factory.mktemp("deployed") / "local")
    stacks = ["eu-west-1", "us-east-1", "us-west-2", "global"]
    info, reports = cloud.up(stacks, local, project_dir=project_dir)
    yield local, Clients(info.endpoint), {r.stack: r for r in reports}
    controller.stop(local.directory)
    server.stop(local.directory)
