"""Re-running `up`: nothing new when nothing changed; exactly the new cell when one is added."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
import yaml

from bulkhead import topology
from bulkhead.localcloud import cloud
from bulkhead.localcloud.aws import LOCAL_CREDENTIALS

pytestmark = pytest.mark.moto
STACK = "eu-west-1"


def _set_cells(project: Path, cells: int) -> None:
    path = project / f"Pulumi.{STACK}.yaml"
    document = yaml.safe_load(path.read_text())
    document["config"]["bulkhead:cells"] = cells
    path.write_text(yaml.safe_dump(document))


# One dyno cell is: a security group, a role with its policy and instance profile, a launch template,
# and an Auto Scaling group in each of the three AZs.
CELL_RESOURCES = 8


def test_up__second_run_creates_nothing(project, store):
    _, (first,) = cloud.up([STACK], store, project_dir=project)
    _, (second,) = cloud.up([STACK], store, project_dir=project)
    assert first.created > 50
    assert (second.created, second.updated, second.replaced, second.deleted) == (0, 0, 0, 0)
    assert second.unchanged == first.created
    assert second.outputs == first.outputs


def test_up__one_more_cell_creates_exactly_that_cell_and_removing_it_deletes_it(project, store):
    info, _ = cloud.up([STACK], store, project_dir=project)
    ec2 = boto3.client("ec2", endpoint_url=info.endpoint, region_name=STACK, **LOCAL_CREDENTIALS)

    def instances() -> set[str]:
        reservations = ec2.describe_instances(Filters=[{"Name": "instance-state-name", "Values": ["running"]}])
        return {i["InstanceId"] for r in reservations["Reservations"] for i in r["Instances"]}

    before = instances()
    _set_cells(project, 2)
    _, (grown,) = cloud.up([STACK], store, project_dir=project)
    assert grown.created == CELL_RESOURCES
    # The database admits the new cell by a rule change in place: its hosts are not replaced.
    assert (grown.replaced, grown.deleted, grown.updated) == (0, 0, 1)
    assert instances() > before and len(instances() - before) == 3
    _set_cells(project, 1)
    _, (shrunk,) = cloud.up([STACK], store, project_dir=project)
    assert (shrunk.created, shrunk.deleted, shrunk.updated) == (0, CELL_RESOURCES, 1)
    assert instances() == before


def test_up__reads_the_stacks_own_file_once(project, store, monkeypatch):
    """Validation reads the stack file; the deployment gets that config handed down and never reads it again."""
    reads: list[str] = []
    original = topology.read_stack_config

    def counting(project_dir, stack):
        reads.append(stack)
        return original(project_dir, stack)

    monkeypatch.setattr(topology, "read_stack_config", counting)
    cloud.up([STACK], store, project_dir=project)
    assert reads.count(STACK) == 1
    # The others are read for the checks that span stacks: once by validation, once by the program itself;
    # the global stack once for the status site's region (which the controller fronts too), and once by the
    # program for where the hosts' heartbeat goes.
    assert sorted(reads) == sorted([STACK, "us-east-1", "us-west-2", "us-east-1", "us-west-2", "global", "global"])
