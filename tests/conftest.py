"""Shared fixtures: the project checkout, and the Pulumi program evaluated once per session under the plan mocks."""

from __future__ import annotations

from pathlib import Path

import pytest

from bulkhead import plan, project
from bulkhead.stack_runner import StackRun


@pytest.fixture(scope="session")
def project_dir() -> Path:
    """This checkout, found as the CLI finds it: the nearest directory with a Pulumi.yaml."""
    return project.find(start=Path(__file__).parent)


@pytest.fixture(scope="session")
def planned(project_dir) -> dict[str, StackRun]:
    """Every stack of the repository, evaluated in deployment order."""
    return plan.evaluate_all(project_dir)
