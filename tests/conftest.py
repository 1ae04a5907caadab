"""Shared fixtures: the Pulumi program evaluated once per session under the plan mocks."""

from __future__ import annotations

import pytest

from bulkhead import plan
from bulkhead.stack_runner import StackRun


@pytest.fixture(scope="session")
def planned() -> dict[str, StackRun]:
    """Every stack of the repository, evaluated in deployment order."""
    return plan.evaluate_all()
