"""What the local cloud remembers between runs, in `.bulkhead/local/`.

`<stack>.json` holds a stack's outputs (StackReferences read it); `<stack>.state.json` holds each
resource the stack owns in moto, so that a second `up` can tell what is new, changed or gone.
Every write is atomic (a temporary file renamed over the old one).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bulkhead import project
from bulkhead.files import write_json
from bulkhead.localcloud.aws import LocalCloudError

STATE_VERSION = 1


def state_dir(project_dir: Path) -> Path:
    """`.bulkhead/local` in the project, or `$BULKHEAD_LOCAL_DIR` (tests give each run its own)."""
    return Path(os.environ.get("BULKHEAD_LOCAL_DIR") or project.state_dir(project_dir, "local"))


@dataclass
class ResourceRecord:
    """One resource in moto: where it is, what it was declared with, what it answered."""

    urn: str
    type: str
    id: str
    region: str
    role_arn: str | None
    inputs: dict[str, Any]
    state: dict[str, Any]


@dataclass
class StackState:
    """A stack's resources in creation order, and old ones still to delete."""

    resources: dict[str, ResourceRecord] = field(default_factory=dict)
    pending_deletes: list[ResourceRecord] = field(default_factory=list)


class CorruptState(LocalCloudError):
    """A state file could not be read."""


class Store:
    """The files of one local cloud."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @classmethod
    def of_project(cls, project_dir: Path) -> Store:
        """The local cloud of a project checkout."""
        return cls(state_dir(project_dir))

    def _state_path(self, stack: str) -> Path:
        return self.directory / f"{stack}.state.json"

    def outputs_path(self, stack: str) -> Path:
        return self.directory / f"{stack}.json"

    def load(self, stack: str) -> StackState:
        path = self._state_path(stack)
        if not path.exists():
            return StackState()
        try:
            document = json.loads(path.read_text())
            if document.get("version") != STATE_VERSION:
                raise ValueError(f"version {document.get('version')!r}, expected {STATE_VERSION}")
            return StackState(
                resources={r["urn"]: ResourceRecord(**r) for r in document["resources"]},
                pending_deletes=[ResourceRecord(**r) for r in document.get("pending_deletes", [])],
            )
        except (ValueError, KeyError, TypeError) as error:
            aside = path.with_name(path.name + ".corrupt")
            os.replace(path, aside)
            raise CorruptState(f"state file {path} is corrupt ({error}); it was moved to {aside.name}") from None

    def save(self, stack: str, state: StackState) -> None:
        write_json(
            self._state_path(stack),
            {
                "version": STATE_VERSION,
                "resources": [asdict(r) for r in state.resources.values()],
                "pending_deletes": [asdict(r) for r in state.pending_deletes],
            },
        )

    def save_outputs(self, stack: str, outputs: dict[str, Any]) -> None:
        write_json(self.outputs_path(stack), outputs)

    def outputs(self, stack: str) -> dict[str, Any] | None:
        path = self.outputs_path(stack)
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except ValueError:
            return None

    def stacks(self) -> list[str]:
        """Stacks that have state here."""
        return sorted(p.name[: -len(".state.json")] for p in self.directory.glob("*.state.json"))

    def forget_stacks(self) -> None:
        """Drop every stack's state and outputs (the resources are gone with the server that held them)."""
        # The server's and the controller's records are not stacks: dropping them would orphan the processes.
        for path in [*self.directory.glob("*.state.json"), *self.directory.glob("*.json")]:
            if path.name not in ("server.json", "controller.json", "controller-config.json"):
                path.unlink(missing_ok=True)

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
