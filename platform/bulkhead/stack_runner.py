"""Evaluate the `infra/` program for one stack in-process, under Pulumi's mocks interface.

This is how Bulkhead runs its Pulumi program without the pulumi CLI: the policy tests and `bulkhead
plan` run it with `PlanMocks` (invented ids), the local cloud with mocks that create each resource in
moto. Either way the program, its config and its StackReferences are exactly what `pulumi up -s STACK`
would see; only the engine behind the resource monitor differs.
"""

from __future__ import annotations

import asyncio
import contextvars
import runpy
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi

from bulkhead import pulumi_sdk, topology
from bulkhead.errors import BulkheadError

PROJECT = "bulkhead"


class StackError(BulkheadError):
    """A stack could not be evaluated; the message is one line, prefixed with the stack."""


@dataclass
class DeclaredResource:
    """One resource the program declared, as the mocks answered it."""

    urn: str
    type: str
    name: str
    parent: str
    provider: str
    custom: bool
    inputs: dict[str, Any]
    id: str
    state: dict[str, Any]


@dataclass
class StackRun:
    """What evaluating one stack produced."""

    stack: str
    resources: list[DeclaredResource]
    outputs: dict[str, Any]
    seconds: float

    def of_type(self, type_token: str) -> list[DeclaredResource]:
        """The resources of one type token, e.g. `aws:ec2/subnet:Subnet`, in declaration order."""
        return [r for r in self.resources if r.type == type_token]

    def children_of(self, parent: DeclaredResource) -> list[DeclaredResource]:
        """The resources declared with `parent` as their parent."""
        return [r for r in self.resources if r.parent == parent.urn]


ReferenceResolver = Callable[[str], Mapping[str, Any]]


def evaluate_stack(
    stack: str,
    mocks: pulumi.runtime.Mocks,
    references: ReferenceResolver,
    project_dir: Path,
    config: Mapping[str, Any] | None = None,
) -> StackRun:
    """Run the program of `stack` under `mocks`; `references` answers StackReferences by stack name.

    `config` is the stack's config as already read (the stack file is read when it is not given; tests
    pass a changed one to try bad configs without touching files). A config error raises `ConfigError`,
    any other stop `StackError`, each with one line.
    """
    pulumi_sdk.require()
    stack_config = topology.read_stack_config(project_dir, stack) if config is None else dict(config)
    # A fresh context per stack: Pulumi keeps its root resource and config in context variables.
    return contextvars.Context().run(_evaluate, stack, stack_config, mocks, references, project_dir)


def _evaluate(
    stack: str,
    config: Mapping[str, Any],
    mocks: pulumi.runtime.Mocks,
    references: ReferenceResolver,
    project_dir: Path,
) -> StackRun:
    started = time.perf_counter()
    declared: list[DeclaredResource] = []
    pulumi.runtime.set_all_config(topology.config_strings(config))
    monitor = pulumi_sdk.RecordingMonitor(mocks, lambda **r: declared.append(DeclaredResource(**r)), references)
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=False, monitor=monitor)
    main = project_dir / "infra"
    pulumi_sdk.reset_run_state()
    try:
        outputs = pulumi_sdk.run_program(lambda: runpy.run_path(str(main), run_name="__main__"))
    except BaseException as error:
        _settle()
        _raise_as_stack_error(stack, error)
    return StackRun(stack=stack, resources=declared, outputs=outputs, seconds=time.perf_counter() - started)


def _raise_as_stack_error(stack: str, error: BaseException) -> None:
    if isinstance(error, pulumi.RunError):
        # The program stops with RunError (one line under the pulumi CLI); a Bulkhead error behind it,
        # such as a ConfigError, keeps its type and so its exit code.
        if isinstance(error.__cause__, BulkheadError):
            raise error.__cause__ from None
        raise StackError(str(error)) from None
    if isinstance(error, BulkheadError | KeyboardInterrupt):
        raise error
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise StackError(f"stack {stack}: {message}") from error


def _settle(timeout: float = 30.0) -> None:
    """Let what a failed program left queued run out before the next program shares Pulumi's loop.

    Pulumi stops waiting at the first error, but the other registrations are still queued; mocks
    refuse work once a run has failed, so they end quickly. Cancelling instead is not enough: work
    already handed to Pulumi's executor threads would report into the next run.
    """
    loop = asyncio.get_event_loop()
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    if pending:
        loop.run_until_complete(asyncio.wait(pending, timeout=timeout))


def reference_stack_name(reference: str) -> str:
    """`organization/bulkhead/us-east-1` -> `us-east-1`."""
    return reference.rsplit("/", 1)[-1]
