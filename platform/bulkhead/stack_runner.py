"""Evaluate the `infra/` program for one stack in-process, under Pulumi's mocks interface.

This is how Bulkhead runs its Pulumi program without the pulumi CLI: the policy tests and `bulkhead
plan` run it with `PlanMocks` (invented ids), the local cloud with mocks that create each resource in
moto. Either way the program, its config and its StackReferences are exactly what `pulumi up -s STACK`
would see; only the engine behind the resource monitor differs.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import runpy
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc
from pulumi.runtime.proto import resource_pb2
from pulumi.runtime.settings import SETTINGS, get_root_resource
from pulumi.runtime.sync_await import _sync_await

from bulkhead import topology

PROJECT = "bulkhead"
STACK_REFERENCE = "pulumi:pulumi:StackReference"
PROJECT_DIR = Path(__file__).resolve().parents[2]


class StackError(RuntimeError):
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
_registering = threading.local()


def current_urn() -> str:
    """The URN being registered on this thread: Pulumi's mocks are told the name, not the URN."""
    return _registering.urn


class _RecordingMonitor(pulumi_mocks.MockMonitor):
    """The stock mock monitor, plus a record of each registration's parent, provider and inputs."""

    def __init__(self, mocks: pulumi.runtime.Mocks, references: ReferenceResolver) -> None:
        super().__init__(mocks)
        self.declared: list[DeclaredResource] = []
        self._references = references

    def RegisterResource(self, request):
        _registering.urn = self.make_urn(request.parent, request.type, request.name)
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            registration = self.resources[response.urn]
            self.declared.append(
                DeclaredResource(
                    urn=response.urn,
                    type=request.type,
                    name=request.name,
                    parent=request.parent,
                    provider=request.provider,
                    custom=bool(request.custom),
                    inputs=_reveal(rpc.deserialize_properties(request.object)),
                    id=registration.id or "",
                    state=dict(registration.state),
                )
            )
        return response

    def ReadResource(self, request):
        # StackReference reads the referenced stack's outputs: answer them here, whichever mocks run.
        if request.type != STACK_REFERENCE:
            return super().ReadResource(request)
        name = request.id
        state = {"name": name, "outputs": dict(self._references(name)), "secretOutputNames": []}
        urn = self.make_urn(request.parent, request.type, request.name)
        self.resources[urn] = pulumi_mocks.MockMonitor.ResourceRegistration(urn, name, state)
        return resource_pb2.ReadResourceResponse(urn=urn, properties=_sync_await(rpc.serialize_properties(state, {})))


def _reveal(value: Any) -> Any:
    """Inputs with Pulumi's secret wrappers removed: the policy tests and the local cloud need the values."""
    if isinstance(value, dict):
        if value.get(rpc._special_sig_key) == rpc._special_secret_sig:
            return _reveal(value.get("value"))
        return {k: _reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_reveal(v) for v in value]
    return value


def config_strings(config: Mapping[str, Any]) -> dict[str, str]:
    """Stack config as the pulumi CLI hands it to a program: strings, with lists and maps as JSON."""
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in config.items()}


def evaluate_stack(
    stack: str,
    mocks: pulumi.runtime.Mocks,
    references: ReferenceResolver,
    project_dir: Path = PROJECT_DIR,
    config: Mapping[str, Any] | None = None,
) -> StackRun:
    """Run the program of `stack` under `mocks`; `references` answers StackReferences by stack name.

    `config` replaces the stack file's config (tests use it to try bad configs without touching files).
    Raises StackError with one line when the program stops, e.g. on a config error.
    """
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
    pulumi.runtime.set_all_config(config_strings(config))
    monitor = _RecordingMonitor(mocks, references)
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=False, monitor=monitor)
    main = project_dir / "infra"
    # As pulumi.runtime.test does: a run starts with no RPC or output left over from the one before.
    SETTINGS.rpc_manager.clear()
    SETTINGS.outputs.clear()
    try:
        _sync_await(pulumi.runtime.stack.run_pulumi_func(lambda: runpy.run_path(str(main), run_name="__main__")))
        root = get_root_resource()
        outputs = _sync_await(pulumi.Output.from_input(getattr(root, "outputs", {})).future()) or {}
    except BaseException as error:
        _settle()
        _raise_as_stack_error(stack, error)
    return StackRun(
        stack=stack,
        resources=monitor.declared,
        outputs=dict(outputs),
        seconds=time.perf_counter() - started,
    )


def _raise_as_stack_error(stack: str, error: BaseException) -> None:
    if isinstance(error, pulumi.RunError):
        raise StackError(str(error)) from None
    if isinstance(error, StackError | KeyboardInterrupt):
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
