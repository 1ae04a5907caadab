"""Re-running `up`: nothing new when nothing changed; exactly the new cell when one is added."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
import yaml

from bulkhead import plan
from bulkhead.localcloud import cloud

pytestmark = pytest.mark.moto
STACK = "eu-west-1"


def _set_cells(project: Path, cells: int) -> None:
    path = project / f"Pulumi.{STACK}.yaml"
    document = yaml.safe_load(path.read_text())
    document["config"]["bulkhead:cells"] = cells
    path.write_text(yaml.safe_dump(document))


def _cell_size(project: Path) -> int:
    """How many resources one dyno cell declares, from the program itself."""
    (run,) = plan.evaluate_all(project, [STACK]).values()
    cell = next(r for r in run.resources if r.type == "bulkhead:runtime:DynoCell")
    return len([r for r in run.resources if r.custom and r.urn.split("::")[2].startswith(cell.type) and
                r.name.startswith(cell.name)])  # fmt: skip


def test_up__second_run_creates_nothing(project, store):
    _, (first,) = cloud.up([STACK], store, project_dir=project)
    _, (second,) = cloud.up([STACK], store, project_dir=project)
    assert first.created > 50
    assert (second.created, second.updated, second.replaced, second.deleted) == (0, 0, 0, 0)
    assert second.unchanged == first.created
    assert second.outputs == first.outputs


def test_up__one_more_cell_creates_exactly_that_cell_and_removing_it_deletes_it(project, store):
    info, _ = cloud.up([STACK], store, project_dir=project)
    ec2 = boto3.client(
        "ec2", endpoint_url=info.endpoint, region_name=STACK, aws_access_key_id="t", aws_secret_access_key="t"
    )

    def instances() -> set[str]:
        reservations = ec2.describe_instances(Filters=[{"Name": "instance-state-name", "Values": ["running"]}])
        return {i["InstanceId"] for r in reservations["Reservations"] for i in r["Instances"]}

    before = instances()
    _set_cells(project, 2)
    cell_size = _cell_size(project)
    _, (grown,) = cloud.up([STACK], store, project_dir=project)
    assert grown.created == cell_size
    # The database admits the new cell by a rule change in place: its hosts are not replaced.
    assert (grown.replaced, grown.deleted, grown.updated) == (0, 0, 1)
    assert instances() > before and len(instances() - before) == 3
    _set_cells(project, 1)
    _, (shrunk,) = cloud.up([STACK], store, project_dir=project)
    assert (shrunk.created, shrunk.deleted, shrunk.updated) == (0, cell_size, 1)
    assert instances() == before
