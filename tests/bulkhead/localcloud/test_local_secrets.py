"""The local cloud's state keeps a hash of each Pulumi secret, never its value."""

from __future__ import annotations

import json

import pytest

from bulkhead.localcloud import engine, server
from bulkhead.localcloud.aws import LocalAws
from bulkhead.localcloud.state import Store

pytestmark = pytest.mark.moto
SECRET = "hunter2-" + "x" * 16
PROGRAM = f"""
import pulumi
import pulumi_aws as aws

parameter = aws.ssm.Parameter("login", name="/bulkhead/test/login", type="SecureString",
                              value=pulumi.Output.secret({SECRET!r}))
pulumi.export("parameterName", parameter.name)
pulumi.export("login", pulumi.Output.secret({SECRET!r}))
"""


@pytest.fixture
def cloud(tmp_path):
    info = server.start(tmp_path / "moto")
    yield LocalAws(info.endpoint)
    server.stop(tmp_path / "moto")


def test_local_state__holds_a_hash_of_each_secret_and_a_rerun_still_sees_no_change(cloud, tmp_path):
    project = tmp_path / "project"
    (project / "infra").mkdir(parents=True)
    (project / "infra" / "__main__.py").write_text(PROGRAM)
    store = Store(tmp_path / "local")
    config = {"aws:region": "eu-west-1"}

    first = engine.deploy_stack("eu-west-1", config, cloud, store, lambda name: {}, project)
    second = engine.deploy_stack("eu-west-1", config, cloud, store, lambda name: {}, project)

    on_disk = "".join(path.read_text() for path in store.directory.glob("*.json"))
    assert SECRET not in on_disk
    assert "secret:sha256:" in on_disk
    assert json.loads(store.outputs_path("eu-west-1").read_text())["login"].startswith("secret:sha256:")
    assert (first.created, second.created, second.updated, second.unchanged) == (1, 0, 0, 1)
    # The resource itself holds the real value: only what the local cloud remembers is hashed.
    answer = cloud.client("ssm", "eu-west-1").get_parameter(Name="/bulkhead/test/login", WithDecryption=True)
    assert answer["Parameter"]["Value"] == SECRET
