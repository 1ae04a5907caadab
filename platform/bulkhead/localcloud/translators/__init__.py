"""One small translator per resource type the program uses: create it in moto, delete it, maybe update it.

A translator receives the resource's inputs exactly as the Pulumi program declared them (camelCase
keys, ids of other resources already resolved) and returns the id and attributes the real provider
would: ids, ARNs, DNS names. A type with no translator is an error that names it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bulkhead.errors import BulkheadError
from bulkhead.localcloud.aws import LocalAws


@dataclass
class Target:
    """Where a resource lives: the region and, for another account, the role to assume."""

    aws: LocalAws
    region: str
    role_arn: str | None
    urn: str
    name: str

    def client(self, service: str):
        """A boto3 client for this resource's region and account."""
        return self.aws.client(service, self.region, self.role_arn)

    def physical_name(self, limit: int = 64) -> str:
        """Pulumi-style autoname: the logical name plus a suffix stable for this URN."""
        suffix = hashlib.sha256(self.urn.encode()).hexdigest()[:7]
        return f"{self.name[: limit - 8]}-{suffix}"


Inputs = Mapping[str, Any]
State = dict[str, Any]
Create = Callable[[Target, Inputs], tuple[str, State]]
Delete = Callable[[Target, str, State], None]
Update = Callable[[Target, str, Inputs, Inputs, State], State]


@dataclass(frozen=True)
class Translator:
    """How one resource type is created, deleted and, where it can be, updated in place."""

    create: Create
    delete: Delete
    update: Update | None = None


class ReplaceRequired(Exception):
    """Raised by an update that cannot be done in place: the engine replaces the resource instead."""


REGISTRY: dict[str, Translator] = {}


def register(type_token: str, create: Create, delete: Delete, update: Update | None = None) -> None:
    """Add the translator of one type token."""
    if type_token in REGISTRY:
        raise ValueError(f"{type_token} already has a translator")
    REGISTRY[type_token] = Translator(create, delete, update)


class UnknownResourceType(BulkheadError):
    """The program declares a resource type the local cloud cannot create."""


def lookup(type_token: str) -> Translator:
    """The translator of a type, or an error naming the type."""
    _load_all()
    try:
        return REGISTRY[type_token]
    except KeyError:
        raise UnknownResourceType(
            f"the local cloud has no translator for {type_token}; add one in bulkhead/localcloud/translators/"
        ) from None


def aws_tags(inputs: Inputs) -> list[dict[str, str]]:
    """The `tags` input as boto3's Key/Value list."""
    return [{"Key": k, "Value": str(v)} for k, v in (inputs.get("tags") or {}).items()]


def _load_all() -> None:
    # Importing the modules registers their translators.
    from bulkhead.localcloud.translators import edge, network, ops, security, storage  # noqa: F401
