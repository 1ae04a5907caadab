"""Sandbox hosts: each local-cloud instance that must run something, as a real, isolated host.

A sandbox is a network namespace holding the instance's own private address (the one the local cloud
gave it), joined to its region's other sandboxes through a bridge in a "fabric" namespace (the VPC),
and an overlay root, so that what a role installs or writes stays in the sandbox. Two kinds of root:
- fast: an overlay of this machine's root (upper layer on a tmpfs), where `scripts/setup` installed what
  the roles need; supervisord, started here, is the sandbox's init;
- image: an overlay of the base image (`bulkhead.hosts.image`, upper layer on disk), booted as EC2 boots
  an instance: the first boot fetches the instance's user data from the metadata service and runs it
  once, logging to /var/log/cloud-init-output.log, as cloud-init does. Its only way out is the region's
  relay at 169.254.169.1 and the metadata service at 169.254.169.254 (`bulkhead.hosts.fabric`).
Nothing here touches the machine's own network.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bulkhead import project
from bulkhead.errors import BulkheadError
from bulkhead.files import write_json

log = logging.getLogger("bulkhead.hosts")
CHROOT_WRAPPER = """#!/bin/sh
# chroot for Ansible's chroot connection: also enter the sandbox's network namespace.
root="$1"
exec ip netns exec "$(cat "$(dirname "$root")/netns")" chroot "$@"
"""
# cloud-init's part of a first boot, run inside an image sandbox: fetch the user data from the metadata
# service and run it, once per instance. The result lands in boot-finished.json for `hosts wait`.
FIRST_BOOT = r"""
set -u
# Per instance, as cloud-init keeps it: an image baked from another instance carries that one's state.
state=/var/lib/cloud/instances/$INSTANCE
[ -e $state/boot-finished.json ] && exit 0
mkdir -p $state && ln -sfn instances/$INSTANCE /var/lib/cloud/instance
exec >>/var/log/cloud-init-output.log 2>&1
started=$(date +%s)
finish() {
  printf '{"result": "%s", "exit": %s, "seconds": %s}\n' "$1" "$2" "$(( $(date +%s) - started ))" \
    > $state/boot-finished.json.new && mv $state/boot-finished.json.new $state/boot-finished.json
  exit "$2"
}
echo "first boot of $INSTANCE at $(date -u +%FT%TZ): user data from the metadata service"
imds=http://169.254.169.254/latest
token=$(curl -sf --max-time "$TIMEOUT" -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 21600" $imds/api/token) || {
  echo "the metadata service at 169.254.169.254 did not answer within $TIMEOUT s: no user data to run"
  finish failed 1
}
curl -sf --max-time "$TIMEOUT" -H "X-aws-ec2-metadata-token: $token" -o $state/user-data.txt $imds/user-data || {
  echo "the metadata service has no user data for this instance"
  finish failed 1
}
chmod 0700 $state/user-data.txt
$state/user-data.txt
code=$?
[ $code -eq 0 ] && finish ok 0
echo "user data exited $code"
finish failed $code
"""
LINK_LOCAL = "169.254.0.0/16"
# Where a fast sandbox reaches the AWS APIs other than S3 (its agents' CloudWatch, SSM, STS): inside its own
# network namespace, so any port will do; S3 keeps the local cloud's own port.
AWS_API_PORT = 4510
FABRIC_ADDRESSES = ("169.254.169.254/16", "169.254.169.1/16")
# The role of a sandbox the local cloud runs by itself (a bake's instance): no site's host, so `hosts wait` and the
# inventory leave it out.
BAKE_ROLE = "bake"


class SandboxError(BulkheadError):
    """A sandbox could not be made or removed; the message names the host and the fix."""


def hosts_dir(project_dir: Path) -> Path:
    """`.bulkhead/hosts` in the project, or `$BULKHEAD_HOSTS_DIR`."""
    return Path(os.environ.get("BULKHEAD_HOSTS_DIR") or project.state_dir(project_dir, "hosts"))


@dataclass(frozen=True)
class HostSpec:
    """One instance to give a sandbox: who it is, where, and its address in the VPC."""

    name: str
    role: str
    region: str
    az: str
    address: str
    prefix_length: int
    tags: dict[str, str] = field(default_factory=dict)
    # The image's layers (overlayfs lower directories, topmost first: a baked image's over the base image's root),
    # for a sandbox booted from an image; empty for an overlay of this machine's root.
    image: str = ""
    # The instance's image id (its AMI), when it was booted from one.
    ami: str = ""

    @property
    def token(self) -> str:
        return hashlib.sha256(self.name.encode()).hexdigest()[:8]

    @property
    def netns(self) -> str:
        return f"bh-{self.token}"


def fabric_netns(region: str, directory: Path) -> str:
    """The namespace bridging one region's sandboxes; one per set of sandboxes, so sets never share it."""
    return f"bhf-{hashlib.sha256(f'{directory.resolve()}:{region}'.encode()).hexdigest()[:8]}"


def _run(*command: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    if check and result.returncode != 0:
        raise SandboxError(
            f"`{' '.join(command)}` failed: {(result.stderr or result.stdout).strip().splitlines()[-1:]}"
        )
    return result


class Sandboxes:
    """The sandboxes of this machine, recorded in `hosts.json` so that `down` finds every one."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.record = self.directory / "hosts.json"

    @classmethod
    def of_project(cls, project_dir: Path) -> Sandboxes:
        """The sandboxes a project checkout made."""
        return cls(hosts_dir(project_dir))

    # --- the record ---

    def recorded(self) -> list[HostSpec]:
        if not self.record.exists():
            return []
        return [HostSpec(**entry) for entry in json.loads(self.record.read_text())]

    @contextlib.contextmanager
    def _changing(self):
        """The record held against every other writer (`hosts up` and the local cloud's controller both write it)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with (self.directory / "hosts.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _save(self, specs: list[HostSpec]) -> None:
        write_json(self.record, [asdict(s) for s in specs])

    def root(self, spec: HostSpec) -> Path:
        return self.directory / spec.name / "root"

    def upper(self, spec: HostSpec) -> Path:
        """The sandbox's own layer: what it wrote over its image (its disk, as an image is taken from it)."""
        return self.directory / spec.name / "layers" / "upper"

    @property
    def chroot_wrapper(self) -> Path:
        return self.directory / "sandbox-chroot"

    def boot_log(self, spec: HostSpec) -> Path:
        return self.root(spec) / "var/log/cloud-init-output.log"

    def boot_started(self, spec: HostSpec) -> float:
        """When the first boot started (seconds since the epoch)."""
        return float((self.directory / spec.name / "booted-at").read_text())

    def boot_result(self, spec: HostSpec) -> dict | None:
        """The first boot's result (`result`, `exit`, `seconds`), or None while it runs."""
        path = self.root(spec) / "var/lib/cloud/instances" / spec.name / "boot-finished.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    # --- helper processes (caches, relays) that live as long as the sandboxes ---

    def remember_helper(self, name: str, pid: int) -> None:
        helpers = self.helpers()
        helpers[name] = pid
        write_json(self.directory / "helpers.json", helpers)

    def helpers(self) -> dict[str, int]:
        path = self.directory / "helpers.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def forget_helper(self, name: str) -> None:
        pid = self.helpers().pop(name, None)
        if pid is not None:
            _kill_group(pid)
            write_json(self.directory / "helpers.json", {k: v for k, v in self.helpers().items() if k != name})

    # --- up ---

    def alive(self, spec: HostSpec) -> bool:
        """Its overlay is mounted and its namespace exists (neither survives a reboot)."""
        return os.path.ismount(self.root(spec)) and spec.netns in _run("ip", "netns", "list").stdout.split()

    def run(self, spec: HostSpec, *command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a command inside a sandbox, as Ansible's connection does."""
        return subprocess.run(
            [str(self.chroot_wrapper), str(self.root(spec)), *command],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def up(self, specs: list[HostSpec], s3_port: int | None = None,
           fronts: dict[str, int] | None = None) -> list[HostSpec]:  # fmt: skip
        """Make a sandbox for each spec not yet made (or made and since lost); returns the ones made now.

        With `s3_port`, each sandbox reaches the local cloud's S3 at 127.0.0.1:`s3_port`, as a VPC's hosts
        reach S3 through its gateway endpoint; through its region's front (`fronts`: region -> port) when the
        local cloud's controller runs, so that a region off the air is off the air for its hosts too.
        """
        with self._changing():
            return self._up(specs, s3_port, fronts)

    def _up(self, specs: list[HostSpec], s3_port: int | None, fronts: dict[str, int] | None) -> list[HostSpec]:
        for stale in [s for s in self.recorded() if not self.alive(s)]:
            log.warning("sandbox lost; making it again", extra={"host": stale.name})
            self._remove(stale)
            self._save([s for s in self.recorded() if s.name != stale.name])
        have = {s.name for s in self.recorded()}
        self.directory.mkdir(parents=True, exist_ok=True)
        self.chroot_wrapper.write_text(CHROOT_WRAPPER)
        self.chroot_wrapper.chmod(0o755)
        made = []
        for spec in specs:
            if spec.name in have:
                continue
            # Recorded before it is made: a failure half-way is still found and removed by `down`.
            self._save([*self.recorded(), spec])
            try:
                self._make(spec, s3_port, (fronts or {}).get(spec.region, s3_port))
            except SandboxError:
                self._remove(spec)
                self._save([s for s in self.recorded() if s.name != spec.name])
                if not any(s.region == spec.region for s in self.recorded()):
                    # Nothing else uses the region's bridge: a failed first host must not leave it behind.
                    _run("ip", "netns", "del", fabric_netns(spec.region, self.directory), check=False)
                raise
            made.append(spec)
            log.info("sandbox up", extra={"host": spec.name, "role": spec.role, "address": spec.address})
        return made

    def _make(self, spec: HostSpec, s3_port: int | None, s3_target: int | None) -> None:
        base = self.directory / spec.name
        layers, root = base / "layers", base / "root"
        for path in (layers, root):
            path.mkdir(parents=True, exist_ok=True)
        (base / "netns").write_text(spec.netns)
        if not spec.image:
            # The overlay's upper layer lives on a tmpfs: it may not sit inside its own lower layer, "/".
            _run("mount", "-t", "tmpfs", "-o", "size=2g,mode=0755", f"bh-{spec.token}", str(layers))
        # An image sandbox's upper layer is on disk: what its roles install (PostgreSQL, Ansible) is large.
        (layers / "upper").mkdir(exist_ok=True)
        (layers / "work").mkdir(exist_ok=True)
        lower = spec.image or "/"
        _run("mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={lower},upperdir={layers / 'upper'},workdir={layers / 'work'}", str(root))  # fmt: skip
        _run("mount", "-t", "proc", "proc", str(root / "proc"))
        _run("mount", "--rbind", "/dev", str(root / "dev"))
        _run("mount", "--make-rslave", str(root / "dev"))
        for scratch in ("tmp", "run"):
            _run(
                "mount",
                "-t",
                "tmpfs",
                "-o",
                "mode=1777" if scratch == "tmp" else "mode=0755",
                scratch,
                str(root / scratch),
            )
        (root / "etc" / "hostname").write_text(spec.name + "\n")
        self._network(spec)
        if spec.image:
            return  # booted by `boot`, once the region's metadata service and relay listen
        if s3_port:
            self._s3_endpoint(spec, s3_port, s3_target or s3_port)
        self._start_init(spec)

    def _network(self, spec: HostSpec) -> None:
        fabric = fabric_netns(spec.region, self.directory)
        if fabric not in _run("ip", "netns", "list").stdout.split():
            _run("ip", "netns", "add", fabric)
            _run("ip", "-n", fabric, "link", "add", "br0", "type", "bridge")
            _run("ip", "-n", fabric, "link", "set", "br0", "up")
            # Where the metadata service and the NAT relay answer (bulkhead.hosts.fabric).
            for address in FABRIC_ADDRESSES:
                _run("ip", "-n", fabric, "addr", "add", address, "dev", "br0")
        network = ipaddress.ip_network(f"{spec.address}/{spec.prefix_length}", strict=False)
        _run("ip", "-n", fabric, "route", "replace", str(network), "dev", "br0")
        _run("ip", "netns", "add", spec.netns)
        _run("ip", "-n", spec.netns, "link", "set", "lo", "up")
        outer = f"v{spec.token}"
        _run("ip", "-n", spec.netns, "link", "add", "eth0", "type", "veth", "peer", "name", outer, "netns", fabric)
        _run("ip", "-n", fabric, "link", "set", outer, "master", "br0", "up")
        _run("ip", "-n", spec.netns, "addr", "add", f"{spec.address}/{spec.prefix_length}", "dev", "eth0")
        _run("ip", "-n", spec.netns, "link", "set", "eth0", "up")
        # Link-local reach to the metadata service and the relay; no default route: nothing else is reachable.
        _run("ip", "-n", spec.netns, "route", "add", LINK_LOCAL, "dev", "eth0")

    def _s3_endpoint(self, spec: HostSpec, port: int, target: int) -> None:
        """The region's endpoints inside the sandbox, each relayed to 127.0.0.1:target on this machine (the region's
        front): S3 at 127.0.0.1:`port`, as a VPC gateway endpoint provides it, and every other AWS API at
        127.0.0.1:AWS_API_PORT, as interface endpoints (or the NAT) do. Two paths, as on AWS, so that a drill can
        cut a host's S3 (its WAL archive) while its agents still reach CloudWatch.

        The two halves of each meet at a unix socket in the sandbox's /run: traffic never leaves this machine
        and the sandbox's network namespace stays without any route out.
        """
        endpoints = (("s3", port, "S3, as a VPC gateway endpoint would provide it"),
                     ("aws", AWS_API_PORT, "AWS APIs other than S3, as interface endpoints would"))  # fmt: skip
        for name, inside, what in endpoints:
            (self.directory / spec.name / f"{name}-relay.target").write_text(str(target))
            self._relay(spec, name)
            (self.root(spec) / "etc" / "supervisor" / "conf.d" / f"{name}-endpoint.conf").write_text(
                f"; The local cloud's {what} (written by bulkhead hosts up).\n"
                f"[program:{name}-endpoint]\n"
                f"command=/usr/bin/socat TCP-LISTEN:{inside},bind=127.0.0.1,fork,reuseaddr "
                f"UNIX-CONNECT:/run/bulkhead-{name}.sock\n"
                "autorestart=true\n"
            )

    def _relay(self, spec: HostSpec, name: str) -> None:
        base = self.directory / spec.name
        target = int((base / f"{name}-relay.target").read_text())
        socket_path = self.root(spec) / "run" / f"bulkhead-{name}.sock"
        socket_path.unlink(missing_ok=True)
        relay = subprocess.Popen(
            ["socat", f"UNIX-LISTEN:{socket_path},fork,mode=0666", f"TCP:127.0.0.1:{target}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        (base / f"{name}-relay.pid").write_text(str(relay.pid))

    def cut_endpoint(self, spec: HostSpec, name: str = "s3") -> None:
        """Cut one of the host's endpoints (`s3` or `aws`): its relay and every connection through it are killed,
        so new requests are refused and those in flight broken, as when a route to an endpoint is lost."""
        pid_file = self.directory / spec.name / f"{name}-relay.pid"
        with contextlib.suppress(ProcessLookupError, ValueError, FileNotFoundError):
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        pid_file.unlink(missing_ok=True)
        (self.root(spec) / "run" / f"bulkhead-{name}.sock").unlink(missing_ok=True)
        log.info("endpoint cut", extra={"host": spec.name, "endpoint": name})

    def mend_endpoint(self, spec: HostSpec, name: str = "s3") -> None:
        """Give a cut endpoint back (a no-op when it is whole)."""
        pid_file = self.directory / spec.name / f"{name}-relay.pid"
        if pid_file.exists():
            return
        self._relay(spec, name)
        log.info("endpoint mended", extra={"host": spec.name, "endpoint": name})

    def _start_init(self, spec: HostSpec) -> None:
        root = self.root(spec)
        _run("ip", "netns", "exec", spec.netns, "chroot", str(root), "/usr/bin/supervisord", "-c",
             "/etc/supervisor/supervisord.conf")  # fmt: skip
        deadline = time.monotonic() + 15
        while not (root / "run" / "supervisor.sock").exists():
            if time.monotonic() > deadline:
                raise SandboxError(f"host {spec.name}: supervisord did not start; see {root}/var/log/supervisor/")
            time.sleep(0.1)

    def boot(self, spec: HostSpec, metadata_timeout: float = 30) -> None:
        """Start an image sandbox's first boot in the background (`boot_result` tells when it is done)."""
        environment = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
                       "LANG": "C.UTF-8", "TIMEOUT": str(int(metadata_timeout)), "INSTANCE": spec.name}  # fmt: skip
        (self.directory / spec.name / "booted-at").write_text(str(time.time()))
        subprocess.Popen(
            ["ip", "netns", "exec", spec.netns, "chroot", str(self.root(spec)), "/bin/sh", "-c", FIRST_BOOT],
            env=environment, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        log.info("first boot started", extra={"host": spec.name, "role": spec.role})

    # --- power and links, as a drill uses them: real faults to real processes and links ---

    def set_link(self, spec: HostSpec, up: bool) -> None:
        """Take the host's only network link down (cut off from every other host) or bring it back."""
        _run("ip", "-n", spec.netns, "link", "set", "eth0", "up" if up else "down")
        if up:
            # A link going down takes its routes with it; the kernel restores only the subnet's own.
            _run("ip", "-n", spec.netns, "route", "replace", LINK_LOCAL, "dev", "eth0")

    def powered(self, spec: HostSpec) -> bool:
        """Its link is up (a host powered off has its link down until it is powered on)."""
        state = _run("ip", "-n", spec.netns, "-o", "link", "show", "eth0", check=False).stdout
        return "state DOWN" not in state and ",UP" in state

    def power_off(self, spec: HostSpec) -> None:
        """As a power interruption: the link goes down and every process of the host dies at once (SIGKILL)."""
        self.set_link(spec, up=False)
        self._kill_inside(spec, self.root(spec))
        log.info("host powered off", extra={"host": spec.name, "az": spec.az})

    def power_on(self, spec: HostSpec) -> None:
        """Boot a powered-off host again: its disk is as the crash left it; /run starts without the dead
        processes' sockets and pid files, as a fresh tmpfs would; supervisord (its init) starts its programs."""
        run = self.root(spec) / "run"
        for stale in [
            *run.glob("*.pid"),
            *run.glob("*.sock"),
            *run.glob("*/*.pid"),
            *run.glob("postgresql/.s.PGSQL.*"),
        ]:
            if stale.name not in ("bulkhead-s3.sock", "bulkhead-aws.sock"):  # the endpoints': their relays are outside
                stale.unlink(missing_ok=True)
        self.set_link(spec, up=True)
        self._start_init(spec)
        log.info("host powered on", extra={"host": spec.name, "az": spec.az})

    # --- down ---

    def down(self) -> int:
        """Remove every recorded sandbox: processes, mounts, namespaces, files. Returns how many."""
        specs = self.recorded()
        for pid in self.helpers().values():
            _kill_group(pid)
        for spec in specs:
            self._remove(spec)
        for region in {s.region for s in specs}:
            _run("ip", "netns", "del", fabric_netns(region, self.directory), check=False)
        shutil.rmtree(self.directory, ignore_errors=True)
        return len(specs)

    def remove(self, spec: HostSpec) -> None:
        """One sandbox gone for good (its instance terminated): processes, mounts, namespace and disk."""
        with self._changing():
            self._remove(spec)
            self._save([s for s in self.recorded() if s.name != spec.name])
            if not any(s.region == spec.region for s in self.recorded()):
                # Nothing else uses the region's bridge: it goes with its last host.
                _run("ip", "netns", "del", fabric_netns(spec.region, self.directory), check=False)

    def _remove(self, spec: HostSpec) -> None:
        root = self.root(spec)
        for relay in (self.directory / spec.name).glob("*-relay.pid"):
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.killpg(int(relay.read_text()), signal.SIGKILL)
        self._kill_inside(spec, root)
        for mount in sorted(_mounts_under(self.directory / spec.name), key=len, reverse=True):
            _run("umount", "-l", mount, check=False)
        _run("ip", "netns", "del", spec.netns, check=False)
        shutil.rmtree(self.directory / spec.name, ignore_errors=True)

    @staticmethod
    def _inside(spec: HostSpec, root: Path) -> set[int]:
        """The sandbox's processes: in its network namespace, or running from its root."""
        pids = {int(p) for p in _run("ip", "netns", "pids", spec.netns, check=False).stdout.split()}
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(proc / "root") == str(root):
                        pids.add(int(proc.name))
        return pids

    @classmethod
    def _kill_inside(cls, spec: HostSpec, root: Path) -> None:
        """Every process of the sandbox dies at once, and none escapes.

        Killing what one listing found is not enough: supervisord restarts a program whose process it saw
        die between the listing and its own SIGKILL, and that new process outlived the host (a second
        Patroni on a powered-on host's data, relays left in deleted namespaces). So every process is frozen
        first (SIGSTOP: a frozen process forks nothing), the listing repeated until it finds none it has not
        frozen, and only then is everything killed."""
        frozen: set[int] = set()
        while found := cls._inside(spec, root) - frozen:
            for pid in found:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            frozen |= found
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while frozen and time.monotonic() < deadline:
            frozen = {p for p in frozen if process_running(p)}
            time.sleep(0.05)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def process_running(pid: int | str) -> bool:
    """The process exists and is not a zombie: a killed process waiting to be reaped holds no mount or file."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _mounts_under(directory: Path) -> list[str]:
    prefix = str(directory.resolve())
    mounts = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        target = line.split()[1].encode().decode("unicode_escape")
        if target == prefix or target.startswith(prefix + "/"):
            mounts.append(target)
    return mounts
