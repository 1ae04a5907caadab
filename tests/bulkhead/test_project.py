"""Finding the project checkout as the CLI does: from the working directory upwards, or from --project."""

from __future__ import annotations

import pytest

from bulkhead import project
from bulkhead.errors import EXIT_USAGE, UsageError

pytestmark = pytest.mark.unit


def test_find__from_a_directory_deep_inside_the_project(tmp_path):
    (tmp_path / "Pulumi.yaml").write_text("name: bulkhead\n")
    deep = tmp_path / "infra" / "components"
    deep.mkdir(parents=True)
    assert project.find(start=deep) == tmp_path.resolve()


def test_find__an_explicit_directory_wins_over_the_working_directory(tmp_path):
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    (elsewhere / "Pulumi.yaml").write_text("name: bulkhead\n")
    (tmp_path / "Pulumi.yaml").write_text("name: bulkhead\n")
    assert project.find(explicit=elsewhere, start=tmp_path) == elsewhere.resolve()


def test_find__no_project_anywhere_above_is_a_usage_error_naming_the_fix(tmp_path):
    with pytest.raises(UsageError) as failure:
        project.find(start=tmp_path)
    assert str(failure.value) == (
        f"no Pulumi.yaml in {tmp_path.resolve()} or above it; run bulkhead inside the project or pass --project DIR"
    )
    assert failure.value.exit_code == EXIT_USAGE == 2


def test_find__an_explicit_directory_without_pulumi_yaml_is_refused(tmp_path):
    with pytest.raises(UsageError, match=r"^--project .* has no Pulumi\.yaml; point it at a Bulkhead checkout$"):
        project.find(explicit=tmp_path)
