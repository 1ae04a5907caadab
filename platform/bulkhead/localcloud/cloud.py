"""`bulkhead local up|status|down|env`: the local cloud's operations, apart from their command line."""

from __future__ import annotations

import logging
import subprocess
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bulkhead import s3compat, stack_runner, topology
from bulkhead.errors import UsageError
from bulkhead.hosts.image import SERVED_REPOSITORY
from bulkhead.hosts.sandbox import hosts_dir
from bulkhead.localcloud import controller, server
from bulkhead.localcloud.aws import LocalAws, LocalCloudError, local_environment
from bulkhead.localcloud.engine import StackReport, deploy_stack
from bulkhead.localcloud.state import CorruptState, Store

log = logging.getLogger("bulkhead.local")

Progress = Callable[[str, str, str], None]  # (stack, urn, action)


def validate(stacks: list[str], store: Store, files: topology.StackFiles) -> None:
    """Refuse, before anything is created, a bad config or a global stack whose regions are not deployed."""
    spec = files.specs(stacks).get(topology.GLOBAL_STACK)
    if isinstance(spec, topology.GlobalSpec):
        for region in (spec.primary_region, spec.secondary_region):
            if region not in stacks and store.outputs(region) is None:
                raise LocalCloudError(
                    f"the global stack reads {region}, which is not deployed locally; "
                    f"run `bulkhead local up --stacks {region},global`"
                )


def ensure_server(store: Store, port: int | None) -> server.ServerInfo:
    """The running server, or a new one. State left by a server that is gone describes nothing: drop it."""
    info = server.running(store.directory)
    if info is not None:
        if port is not None and port != info.port:
            raise LocalCloudError(
                f"the local cloud already runs on port {info.port}; run `bulkhead local down` first to move it"
            )
        return info
    if server.recorded(store.directory) is not None or store.stacks():
        log.warning("the previous moto server is gone; every stack is rebuilt from scratch")
        server.stop(store.directory)
        store.forget_stacks()
    return server.start(store.directory, port)


def ensure_controller(store: Store, info: server.ServerInfo, files: topology.StackFiles, lag: float | None,
                      hosts: Path, project_dir: Path | None = None) -> None:  # fmt: skip
    """The controller running beside this server, with the lag asked for (kept from last time when not asked).

    It fronts every region a stack names, the status site's region included."""
    current = controller.running(store.directory)
    wanted = lag if lag is not None else (current.replication_lag if current else controller.DEFAULT_REPLICATION_LAG)
    if current and current.moto_port == info.port:
        if current.replication_lag != wanted:
            controller.set_replication_lag(store.directory, wanted)
        return
    if current:
        controller.stop(store.directory)
    regions, roles = set(), set()
    for name in files.names():
        config = files.config(name)
        regions |= {str(config[key]) for key in ("aws:region", "bulkhead:statusRegion") if config.get(key)}
        roles |= {str(config["bulkhead:statusRoleArn"])} if config.get("bulkhead:statusRoleArn") else set()
    controller.start(store.directory, info.port, sorted(regions), hosts, wanted, sorted(roles), project_dir)


def up(
    stacks: list[str],
    store: Store,
    port: int | None = None,
    on_resource: Progress | None = None,
    on_start: Callable[[dict[str, int]], None] | None = None,
    *,
    project_dir: Path,
    ansible_ref: str | None = None,
    config: Mapping[str, str] | None = None,
    replication_lag: float | None = None,
    hosts: Path | None = None,
) -> tuple[server.ServerInfo, list[StackReport]]:
    """Deploy `stacks` (in deployment order) into the local cloud; returns what changed per stack.

    Every stack is validated first, with nothing created: a bad config anywhere changes nothing. Each
    stack file is read once, there, and its config handed down to the deployment.

    Hosts pull their roles from this checkout as the sandboxes' relay serves it, at `ansible_ref`
    (default: the checkout's HEAD commit); the stack files keep the repository AWS hosts pull from.
    `config` sets keys in every region stack, as `pulumi config set` would, and is validated alike.
    The controller (replication, health probes, region fronts) is started beside the server, or
    restarted when the server or `replication_lag` changed; it probes the routers among the sandboxes
    in `hosts` (default: the project's).
    """
    if replication_lag is not None and replication_lag < 0:
        raise UsageError(f"--replication-lag {replication_lag:g} is below 0; give the seconds S3 replication waits")
    unknown = sorted(set(config or {}) - set(topology.REGION_KEYS))
    if unknown:
        raise UsageError(
            f"unknown config key {', '.join(unknown)}; a region stack takes {', '.join(topology.REGION_KEYS)}"
        )
    files = topology.StackFiles(project_dir)
    if config:
        files = topology.StackFiles(project_dir, {
            stack: {**topology.read_stack_config(project_dir, stack), **config}
            for stack in stacks if stack != topology.GLOBAL_STACK
        })  # fmt: skip
    validate(stacks, store, files)
    if on_start:
        # What each stack held last time: the progress bar's total (unknown on a first run).
        on_start({s: len(store.load(s).resources) for s in stacks})
    info = ensure_server(store, port)
    ensure_controller(store, info, files, replication_lag, hosts or hosts_dir(project_dir), project_dir)
    aws = LocalAws(info.endpoint)

    def references(name: str) -> Mapping[str, Any]:
        stack = stack_runner.reference_stack_name(name)
        outputs = store.outputs(stack)
        if outputs is None:
            raise LocalCloudError(
                f"stack reference {name}: {stack} is not deployed locally; run `bulkhead local up --stacks {stack}`"
            )
        return outputs

    reports = []
    for stack in stacks:
        notify = (lambda urn, action, s=stack: on_resource(s, urn, action)) if on_resource else None
        try:
            config = files.config(stack)
            if stack != topology.GLOBAL_STACK:
                config = {**config, **pull_source(project_dir, ansible_ref)}
            reports.append(deploy_stack(stack, config, aws, store, references, project_dir, notify))
        except CorruptState as error:
            # What the corrupt file described cannot be told apart in moto any more: start clean.
            reset(info)
            store.forget_stacks()
            raise LocalCloudError(f"{error}; the local cloud was reset: run `bulkhead local up` to rebuild") from None
    return info, reports


def pull_source(project_dir: Path, ref: str | None) -> dict[str, str]:
    """The config that points hosts at this checkout as the relay serves it (see bulkhead.hosts.fabric).

    Without `ref`, the checkout's HEAD commit; a directory without a commit keeps the stack's own ref.
    """
    if ref is None:
        head = subprocess.run(["git", "-C", str(project_dir), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=False)  # fmt: skip
        if head.returncode != 0:
            # Nothing to serve: only `hosts up --from-image` needs it, and it says so itself.
            log.warning("no commit in %s: hosts booted from the image would have nothing to pull", project_dir)
            return {"bulkhead:ansibleRepo": SERVED_REPOSITORY}
        ref = head.stdout.strip()
    return {"bulkhead:ansibleRepo": SERVED_REPOSITORY, "bulkhead:ansibleRef": ref}


def reset(info: server.ServerInfo) -> None:
    """Empty the moto server of every resource."""
    request = urllib.request.Request(f"{info.endpoint}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=10):
        pass


def status(store: Store) -> dict[str, Any]:
    """The endpoint and, per deployed stack, its resource count and outputs."""
    info = server.running(store.directory)
    stacks = {}
    for stack in store.stacks():
        try:
            resources = len(store.load(stack).resources)
        except CorruptState as error:
            raise LocalCloudError(f"{error}; run `bulkhead local up` to rebuild") from None
        stacks[stack] = {"resources": resources, "outputs": store.outputs(stack) or {}}
    running = controller.running(store.directory) if info else None
    details = controller.request(running, "GET", "/status") if running else None
    return {"running": info is not None, "endpoint": info.endpoint if info else None, "stacks": stacks,
            "controller": {"endpoint": running.endpoint, **details} if running and details else None}  # fmt: skip


def down(store: Store) -> None:
    """Stop the server and forget every stack."""
    controller.stop(store.directory)
    stopped = server.stop(store.directory)
    had_state = store.directory.exists() and any(store.directory.iterdir())
    store.clear()
    if not stopped and not had_state:
        raise LocalCloudError("the local cloud is not running; nothing to stop (start it with `bulkhead local up`)")


def set_on_air(store: Store, region: str, on: bool) -> str:
    """Put `region`'s endpoint on or off the air; one line that says what it is now."""
    running = controller.running(store.directory)
    if running is None:
        raise LocalCloudError("the local cloud's controller is not running; start it with `bulkhead local up`")
    if region not in running.fronts:
        raise UsageError(f"the controller fronts no region {region}; it fronts {', '.join(sorted(running.fronts))}")
    answer = controller.request(running, "POST", f"/regions/{region}/{'on-air' if on else 'off-air'}")
    return f"{region}: {'on' if answer['reachable'] else 'off'} the air"


def env_lines(store: Store) -> list[str]:
    """Shell lines that point boto3 and the aws CLI at the local cloud."""
    info = server.running(store.directory)
    if info is None:
        raise LocalCloudError("the local cloud is not running; start it with `bulkhead local up`")
    environment = {"AWS_ENDPOINT_URL": info.endpoint, **local_environment(), **s3compat.environment(info.endpoint)}
    return [f"export {name}={value}" for name, value in environment.items()]
