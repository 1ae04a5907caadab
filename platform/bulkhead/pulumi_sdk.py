"""Every use of the Pulumi SDK's internals, in one place.

Running the `infra/` program in-process without the pulumi CLI needs a few names the SDK does not
promise to keep: its event-loop bridge, the RPC manager it clears between runs, the secret marker,
and the mock monitor's bookkeeping. They are reached only here. `missing_internals()` lists any an
SDK upgrade has moved, and `require()` turns that into one line naming the SDK version, so an upgrade
fails clearly (tests/bulkhead/test_pulumi_sdk.py is the contract test) instead of deep in a run.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import importlib.metadata
import json
import threading
from collections.abc import Callable, Mapping
from typing import Any

import pulumi
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc

from bulkhead.errors import BulkheadError

# (module, attribute) of each private or undocumented name used below.
INTERNALS = (
    ("pulumi.runtime.sync_await", "_sync_await"),
    ("pulumi.runtime.rpc", "_special_sig_key"),
    ("pulumi.runtime.rpc", "_special_secret_sig"),
    ("pulumi.runtime.rpc", "serialize_properties"),
    ("pulumi.runtime.rpc", "deserialize_properties"),
    ("pulumi.runtime.settings", "SETTINGS"),
    ("pulumi.runtime.settings", "get_root_resource"),
    ("pulumi.runtime.stack", "run_pulumi_func"),
    ("pulumi.runtime.proto.resource_pb2", "ReadResourceResponse"),
    ("pulumi.runtime.mocks", "MockMonitor"),
)
# Attributes of objects that the names above hold.
MEMBERS = (
    ("pulumi.runtime.settings", "SETTINGS", "rpc_manager"),
    ("pulumi.runtime.settings", "SETTINGS", "outputs"),
    ("pulumi.runtime.mocks", "MockMonitor", "make_urn"),
    ("pulumi.runtime.mocks", "MockMonitor", "ResourceRegistration"),
    ("pulumi.runtime.mocks", "MockMonitor", "RegisterResource"),
    ("pulumi.runtime.mocks", "MockMonitor", "ReadResource"),
)


def sdk_version() -> str:
    return importlib.metadata.version("pulumi")


def _lookup(module: str, name: str) -> Any:
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def missing_internals() -> list[str]:
    """The internal names this module needs that the installed SDK lacks (empty when all is well)."""
    missing = [f"{module}.{name}" for module, name in INTERNALS if _lookup(module, name) is None]
    for module, holder, member in MEMBERS:
        owner = _lookup(module, holder)
        if owner is not None and not hasattr(owner, member):
            missing.append(f"{module}.{holder}.{member}")
    return missing


def require() -> None:
    """Fail in one line, naming the SDK version, when an upgrade moved what Bulkhead relies on."""
    missing = missing_internals()
    if missing:
        raise BulkheadError(
            f"pulumi {sdk_version()} lacks {', '.join(missing)}, which bulkhead/pulumi_sdk.py uses; "
            "install the pulumi version pyproject.toml allows, or adapt pulumi_sdk.py"
        )


def sync_await(awaitable: Any) -> Any:
    """Run a coroutine or future on the SDK's own event loop and return its result."""
    return _lookup("pulumi.runtime.sync_await", "_sync_await")(awaitable)


def reset_run_state() -> None:
    """As `pulumi.runtime.test` does: a run starts with no RPC or output left over from the one before."""
    settings = _lookup("pulumi.runtime.settings", "SETTINGS")
    settings.rpc_manager.clear()
    settings.outputs.clear()


def run_program(program: Callable[[], Any]) -> dict[str, Any]:
    """Run a Pulumi program function to completion and return its stack outputs."""
    run_pulumi_func = _lookup("pulumi.runtime.stack", "run_pulumi_func")
    sync_await(run_pulumi_func(program))
    root = _lookup("pulumi.runtime.settings", "get_root_resource")()
    declared = dict(getattr(root, "outputs", {}) or {})
    values = dict(sync_await(pulumi.Output.from_input(declared).future()) or {})
    # A secret output is kept as its hash: outputs are written to disk (`.bulkhead/local/<stack>.json`).
    for name, output in declared.items():
        if isinstance(output, pulumi.Output) and sync_await(output.is_secret()):
            values[name] = secret_hash(values.get(name))
    return values


SECRET_PREFIX = "secret:sha256:"


def secret_hash(value: Any) -> str:
    """What the local cloud keeps of a secret: enough to tell whether it changed, never the value."""
    return SECRET_PREFIX + hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def secret_paths(value: Any, path: tuple = ()) -> list[tuple]:
    """Where a deserialized property tree holds secrets (Pulumi's secret wrappers), as key paths."""
    if isinstance(value, dict):
        if value.get(rpc._special_sig_key) == rpc._special_secret_sig:
            return [path]
        return [found for key, item in value.items() for found in secret_paths(item, (*path, key))]
    if isinstance(value, list):
        return [found for index, item in enumerate(value) for found in secret_paths(item, (*path, index))]
    return []


def hide_secrets(value: Any, paths: list[tuple]) -> Any:
    """A copy of `value` with what sits at each of `paths` replaced by its hash (absent paths are skipped)."""
    if not paths:
        return value
    hidden = copy.deepcopy(value)
    for path in paths:
        holder = hidden
        for key in path[:-1]:
            try:
                holder = holder[key]
            except (KeyError, IndexError, TypeError):
                holder = None
                break
        if path and holder is not None:
            with contextlib.suppress(KeyError, IndexError, TypeError):
                holder[path[-1]] = secret_hash(holder[path[-1]])
    return hidden


def current_secret_paths() -> list[tuple]:
    """The secret inputs of the resource being registered on this thread."""
    return getattr(_registering, "secret_paths", [])


def reveal(value: Any) -> Any:
    """A deserialized value with Pulumi's secret wrappers removed."""
    if isinstance(value, dict):
        if value.get(rpc._special_sig_key) == rpc._special_secret_sig:
            return reveal(value.get("value"))
        return {k: reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [reveal(v) for v in value]
    return value


Registered = Callable[..., None]
_registering = threading.local()


def current_urn() -> str:
    """The URN being registered on this thread: Pulumi's mocks are told the name, not the URN."""
    return _registering.urn


class RecordingMonitor(pulumi_mocks.MockMonitor):
    """The stock mock monitor, telling `on_register` of each resource and answering StackReferences.

    `on_register(urn, type, name, parent, provider, custom, inputs, id, state)` sees every resource but
    the stack itself; `references(name)` gives a referenced stack's outputs.
    """

    stack_reference = "pulumi:pulumi:StackReference"

    def __init__(
        self,
        mocks: pulumi.runtime.Mocks,
        on_register: Registered,
        references: Callable[[str], Mapping[str, Any]],
    ) -> None:
        super().__init__(mocks)
        self._on_register = on_register
        self._references = references

    def RegisterResource(self, request):
        _registering.urn = self.make_urn(request.parent, request.type, request.name)
        _registering.secret_paths = secret_paths(rpc.deserialize_properties(request.object))
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            registration = self.resources[response.urn]
            self._on_register(
                urn=response.urn,
                type=request.type,
                name=request.name,
                parent=request.parent,
                provider=request.provider,
                custom=bool(request.custom),
                inputs=reveal(rpc.deserialize_properties(request.object)),
                id=registration.id or "",
                state=dict(registration.state),
            )
        return response

    def ReadResource(self, request):
        # StackReference reads the referenced stack's outputs: answer them here, whichever mocks run.
        if request.type != self.stack_reference:
            return super().ReadResource(request)
        response_type = _lookup("pulumi.runtime.proto.resource_pb2", "ReadResourceResponse")
        name = request.id
        state = {"name": name, "outputs": dict(self._references(name)), "secretOutputNames": []}
        urn = self.make_urn(request.parent, request.type, request.name)
        self.resources[urn] = pulumi_mocks.MockMonitor.ResourceRegistration(urn, name, state)
        return response_type(urn=urn, properties=sync_await(rpc.serialize_properties(state, {})))
