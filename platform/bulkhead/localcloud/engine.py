"""Deploy stacks into the local cloud: Pulumi mocks whose `new_resource` creates the resource in moto.

Per stack: each declared resource is compared with what the state remembers under its URN. Same
inputs: reused, nothing is called. Changed: updated in place where the translator can, otherwise
replaced (created anew, the old one deleted at the end). Gone from the program: deleted, newest
first. State is saved even when a run fails part-way, so the next `up` knows what exists.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi

from bulkhead import pulumi_sdk, stack_runner
from bulkhead.localcloud import translators
from bulkhead.localcloud.aws import LocalAws, LocalCloudError, is_unreachable
from bulkhead.localcloud.state import ResourceRecord, StackState, Store

log = logging.getLogger("bulkhead.local")
PROVIDER = "pulumi:providers:aws"


@dataclass
class StackReport:
    """What one `up` of one stack did."""

    stack: str
    created: int = 0
    updated: int = 0
    replaced: int = 0
    unchanged: int = 0
    deleted: int = 0
    seconds: float = 0.0
    outputs: dict[str, Any] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.replaced or self.deleted)


def _normalized(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


Action = str  # "create", "unchanged", "update" or "replace"


def choose_action(
    old: ResourceRecord | None, type_token: str, region: str, role_arn: str | None, inputs: dict, updatable: bool
) -> Action:
    """What to do with one declared resource, given what the state remembers under its URN.

    Nothing remembered: create. Same type, place and inputs: leave it. Changed inputs: update in place
    when the type's translator can (it may still refuse a change and ask for a replacement), else
    replace. A resource that moved to another region or account, or changed type, is always replaced.
    """
    if old is None:
        return "create"
    if old.type != type_token or (old.region, old.role_arn) != (region, role_arn):
        return "replace"
    if old.inputs == inputs:
        return "unchanged"
    return "update" if updatable else "replace"


class MotoMocks(pulumi.runtime.Mocks):
    """Pulumi mocks that make every declared resource real in moto (or reuse it from the state)."""

    def __init__(
        self,
        aws: LocalAws,
        region: str,
        previous: StackState,
        report: StackReport,
        on_resource: Callable[[str, str], None] | None = None,
    ) -> None:
        self.aws = aws
        self.region = region
        self.previous = previous
        self.report = report
        self.current = StackState()
        self.on_resource = on_resource or (lambda urn, action: None)
        self.fault: BaseException | None = None
        self._providers: dict[str, tuple[str, str | None]] = {}
        # One call into moto at a time: Pulumi registers from many threads, and ordering keeps runs repeatable.
        self._lock = threading.Lock()

    # --- the mocks interface ---

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        if not args.custom:
            return "", {}
        urn = pulumi_sdk.current_urn()
        with self._lock:
            if self.fault is not None:
                # The run has failed: registrations still queued must not touch moto any more.
                raise LocalCloudError(f"not creating {args.name}: an earlier resource failed")
            try:
                # Translators get plain values: Pulumi hands the mocks secrets still wrapped.
                inputs = _normalized(pulumi_sdk.reveal(args.inputs))
                return self._apply(urn, args.typ, args.name, inputs, args.provider)
            except BaseException as error:
                self.fault = self._explain(error, urn)
                raise self.fault from error

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
            region, role = self._target_of(args.provider)
            with self._lock:
                identity = self.aws.client("sts", region, role).get_caller_identity()
            return {"id": identity["Account"], "accountId": identity["Account"], "arn": identity["Arn"],
                    "userId": identity["UserId"]}  # fmt: skip
        if args.token not in ("aws:ec2/getAmi:getAmi", "aws:ec2/getAmiIds:getAmiIds"):
            raise LocalCloudError(f"the local cloud does not answer the call {args.token}; add it to MotoMocks.call")
        region, role = self._target_of(args.provider)
        request = {"Owners": list(args.args.get("owners") or [])}
        request["Filters"] = [{"Name": f["name"], "Values": list(f["values"])} for f in args.args.get("filters") or []]
        with self._lock:
            images = self.aws.client("ec2", region, role).describe_images(**request)["Images"]
        if args.token == "aws:ec2/getAmiIds:getAmiIds":
            # As EC2's provider answers it: newest first, and no match is no error.
            newest = sorted(images, key=lambda i: i.get("CreationDate", ""), reverse=True)
            return {"id": region, "ids": [i["ImageId"] for i in newest if i.get("State", "available") == "available"]}
        if not images:
            raise LocalCloudError(f"no image in {region} matches owners {request['Owners']} and {request['Filters']}")
        image = max(images, key=lambda i: i.get("CreationDate", ""))
        return {
            "id": image["ImageId"],
            "imageId": image["ImageId"],
            "name": image["Name"],
            "architecture": image["Architecture"],
            "ownerId": image["OwnerId"],
        }

    # --- the decisions ---

    def _apply(self, urn: str, type_token: str, name: str, inputs: dict, provider: str) -> tuple[str, dict]:
        if type_token == PROVIDER:
            return self._provider(urn, inputs)
        region, role = self._target_of(provider)
        translator = translators.lookup(type_token)
        target = translators.Target(self.aws, region, role, urn, name)
        old = self.previous.resources.get(urn)
        # The state keeps a hash of each Pulumi secret, never its value; comparing hashes still tells a change.
        secrets = pulumi_sdk.current_secret_paths()
        remembered = pulumi_sdk.hide_secrets(inputs, secrets)
        action = choose_action(old, type_token, region, role, remembered, updatable=translator.update is not None)
        if action == "unchanged":
            self._remember(old, "unchanged")
            return old.id, old.state
        if action == "update":
            try:
                state = translator.update(target, old.id, old.inputs, inputs, old.state)
            except translators.ReplaceRequired:
                action = "replace"
            else:
                hidden = pulumi_sdk.hide_secrets(_normalized(state), secrets)
                self._remember(ResourceRecord(urn, type_token, old.id, region, role, remembered, hidden), "updated")
                return old.id, state
        resource_id, state = translator.create(target, inputs)
        hidden = pulumi_sdk.hide_secrets(_normalized(state), secrets)
        record = ResourceRecord(urn, type_token, resource_id, region, role, remembered, hidden)
        if action == "replace":
            self.current.pending_deletes.append(old)
            self._remember(record, "replaced")
        else:
            self._remember(record, "created")
        return resource_id, _normalized(state)

    def _provider(self, urn: str, inputs: dict) -> tuple[str, dict]:
        roles = inputs.get("assumeRoles")
        roles = json.loads(roles) if isinstance(roles, str) else roles or []
        role = roles[0].get("roleArn") if roles else None
        self._providers[urn] = (inputs.get("region") or self.region, role)
        return "local-" + hashlib.sha256(urn.encode()).hexdigest()[:12], inputs

    def _target_of(self, provider_reference: str) -> tuple[str, str | None]:
        if not provider_reference:
            return self.region, None
        return self._providers[provider_reference.rsplit("::", 1)[0]]

    def _remember(self, record: ResourceRecord, action: str) -> None:
        self.current.resources[record.urn] = record
        setattr(self.report, action, getattr(self.report, action) + 1)
        log.info("resource %s", action, extra={"urn": record.urn, "id": record.id, "action": action})
        self.on_resource(record.urn, action)

    def _explain(self, error: BaseException, urn: str) -> BaseException:
        if is_unreachable(error):
            return LocalCloudError(
                f"the moto server at {self.aws.endpoint} stopped answering while creating {urn.split('::')[-1]}; "
                "run `bulkhead local up` again: it starts a new server and rebuilds"
            )
        return error

    # --- after the program ---

    def state_after_failure(self) -> StackState:
        """Everything that exists now: what this run touched, plus earlier resources it had not reached."""
        state = StackState(dict(self.current.resources), list(self.current.pending_deletes))
        for urn, record in self.previous.resources.items():
            state.resources.setdefault(urn, record)
        state.pending_deletes.extend(self.previous.pending_deletes)
        return state

    def delete_stale(self) -> int:
        """Delete what the program no longer declares and what was replaced, newest first.

        The queue lives in the state being saved, so a delete that fails leaves the rest remembered.
        """
        stale = [r for urn, r in self.previous.resources.items() if urn not in self.current.resources]
        self.current.pending_deletes = (
            list(reversed(stale)) + list(reversed(self.current.pending_deletes)) + self.previous.pending_deletes
        )
        deleted = 0
        while self.current.pending_deletes:
            record = self.current.pending_deletes[0]
            if record.type != PROVIDER:
                target = translators.Target(self.aws, record.region, record.role_arn, record.urn, record.urn)
                translators.lookup(record.type).delete(target, record.id, record.state)
            self.current.pending_deletes.pop(0)
            deleted += 1
            log.info("resource deleted", extra={"urn": record.urn, "id": record.id, "action": "deleted"})
            self.on_resource(record.urn, "deleted")
        return deleted


def deploy_stack(
    stack: str,
    config: Mapping[str, Any],
    aws: LocalAws,
    store: Store,
    references: Callable[[str], Mapping[str, Any]],
    project_dir: Path,
    on_resource: Callable[[str, str], None] | None = None,
) -> StackReport:
    """Bring one stack in the local cloud in line with the program; returns what changed.

    `config` is the stack's config as validation read it: the stack file is not read again.
    """
    report = StackReport(stack)
    previous = store.load(stack)
    mocks = MotoMocks(aws, str(config.get("aws:region", stack)), previous, report, on_resource)
    try:
        run = stack_runner.evaluate_stack(stack, mocks, references, project_dir, config=config)
    except BaseException as error:
        store.save(stack, mocks.state_after_failure())
        if isinstance(mocks.fault, LocalCloudError):
            raise mocks.fault from error
        raise
    try:
        report.deleted = mocks.delete_stale()
    finally:
        store.save(stack, mocks.current)
    store.save_outputs(stack, _normalized(run.outputs))
    report.outputs = run.outputs
    report.seconds = run.seconds
    return report
