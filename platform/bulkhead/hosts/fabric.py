"""What a region's network gives its image-booted sandboxes, as a VPC gives its instances.

Inside each region's fabric namespace (the VPC's bridge), one daemon answers:
- the metadata service at 169.254.169.254:80 (`bulkhead.hosts.metadata`), knowing the asking instance
  by its private address;
- the NAT relay at 169.254.169.1: the only way out, and only to the package caches, the git server that
  serves this checkout, and the local cloud. Nothing else is reachable: a sandbox has no default route.
Its listening sockets are made inside the fabric namespaces (`setns` on one thread, then back), and it
connects out from this machine's namespace, so no sandbox ever has a route to the machine.

On this machine, for every sandbox set alike: squid (caching the Debian mirror for apt) and proxpi (a PyPI
caching mirror) keep what they fetch under the machine's cache directory, so a package is fetched once
per machine; `git daemon` serves a bare copy of this checkout's committed HEAD.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from bulkhead.errors import BulkheadError
from bulkhead.files import write_json
from bulkhead.hosts import image, metadata
from bulkhead.hosts.sandbox import Sandboxes, fabric_netns, process_running
from bulkhead.localcloud import server
from bulkhead.localcloud.aws import LocalAws

log = logging.getLogger("bulkhead.fabric")
CLONE_NEWNET = 0x40000000
REPOSITORY = image.SERVED_REPOSITORY.rsplit("/", 1)[-1]


class FabricError(BulkheadError):
    """A fabric service could not start; the message names it and its log."""


@dataclass(frozen=True)
class Services:
    """The host-side services of one sandbox set: their pids and the ports they listen on (127.0.0.1)."""

    pids: dict[str, int]
    ports: dict[str, int]

    def targets(self, cloud_port: int) -> dict[int, int]:
        """Relay port in the fabric -> port on this machine's loopback."""
        return {
            image.APT_CACHE_PORT: self.ports["apt-cache"],
            image.PIP_INDEX_PORT: self.ports["proxpi"],
            image.GIT_PORT: self.ports["git"],
            image.CLOUD_PORT: cloud_port,
        }


def serve_checkout(project_dir: Path, directory: Path) -> str:
    """A bare repository of the checkout's committed HEAD under `directory`; returns HEAD's commit."""
    head = subprocess.run(["git", "-C", str(project_dir), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=False)  # fmt: skip
    if head.returncode != 0:
        raise FabricError(f"{project_dir} is not a git checkout with a commit; commit first, the hosts pull from it")
    bare = directory / REPOSITORY
    shutil.rmtree(bare, ignore_errors=True)
    subprocess.run(["git", "clone", "-q", "--bare", "--no-local", str(project_dir), str(bare)], check=True,
                   capture_output=True, timeout=120)  # fmt: skip
    subprocess.run(["git", "--git-dir", str(bare), "update-ref", "refs/heads/served", head.stdout.strip()],
                   check=True, capture_output=True)  # fmt: skip
    return head.stdout.strip()


def _spawn(name: str, command: list[str], directory: Path, environment: dict[str, str] | None = None) -> int:
    log_file = (directory / f"{name}.log").open("ab")
    process = subprocess.Popen(
        command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env={**os.environ, **(environment or {})}, start_new_session=True,
    )  # fmt: skip
    return process.pid


def _wait_port(name: str, pid: int, port: int, directory: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        if not process_running(pid):
            break
        time.sleep(0.1)
    raise FabricError(f"{name} did not start on 127.0.0.1:{port}; see {directory / (name + '.log')}")


SQUID_CONF = """# Written by bulkhead hosts up --from-image: the package cache every sandbox's apt goes through.
http_port 127.0.0.1:{port}
pid_filename {directory}/squid.pid
cache_dir ufs {cache} 20000 16 256
maximum_object_size 1 GB
cache_log {directory}/cache.log
access_log stdio:{directory}/access.log
coredump_dir {directory}
acl mirrors dstdomain {mirrors}
http_access allow mirrors
http_access deny all
# Package files never change under their name; indexes do.
refresh_pattern \\.(deb|udeb)$ 129600 100% 129600
refresh_pattern . 0 20% 4320
cache_effective_user proxy
"""


def start_services(directory: Path, git_dir: Path, cache: Path, mirrors: list[str]) -> Services:
    """The apt cache (squid), proxpi and git daemon (serving `git_dir`) on free loopback ports; caches in `cache`.

    apt-cacher-ng would be the apt cache of choice, but it cannot bind a socket under this machine's kernel
    (gVisor: "Error resolving address for binding"); squid, Debian's other caching proxy, can.
    """
    if shutil.which("squid") is None:
        raise FabricError("squid is not installed; run scripts/setup (or apt-get install squid)")
    git_dir.mkdir(parents=True, exist_ok=True)
    for sub in ("apt", "pip"):
        (cache / sub).mkdir(parents=True, exist_ok=True)
    shutil.chown(cache / "apt", "proxy", "proxy")
    ports = {name: server.free_port() for name in ("apt-cache", "proxpi", "git")}
    # squid drops to its own user, which may not reach `directory` (a test's private tmp): its logs and pid
    # file go in a directory of the machine's cache that the user owns, one per sandbox set.
    squid_dir = cache / "apt-run" / hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:8]
    squid_dir.mkdir(parents=True, exist_ok=True)
    shutil.chown(squid_dir, "proxy", "proxy")
    shutil.chown(squid_dir.parent, "proxy", "proxy")
    squid_conf = squid_dir / "squid.conf"
    squid_conf.write_text(
        SQUID_CONF.format(port=ports["apt-cache"], directory=squid_dir, cache=cache / "apt", mirrors=" ".join(mirrors))
    )
    if not (cache / "apt" / "00").exists():
        subprocess.run(["squid", "-z", "-N", "-f", str(squid_conf)], capture_output=True, check=False, timeout=120)
    pids = {
        "apt-cache": _spawn("apt-cache", ["squid", "-N", "-f", str(squid_conf)], directory),
        # A file longer than proxpi's default 0.9 s would be answered with a redirect to PyPI itself, which
        # a sandbox cannot reach: wait for the download instead. One download per file (see pip_cache).
        "proxpi": _spawn("proxpi", [sys.executable, "-m", "bulkhead.hosts.pip_cache", "--port", str(ports["proxpi"])],
                         directory,
                         {"PROXPI_CACHE_DIR": str(cache / "pip"), "PROXPI_DOWNLOAD_TIMEOUT": "600",
                          "PROXPI_READ_TIMEOUT": "120", "PROXPI_LOGGING_LEVEL": "WARNING"}),
        "git": _spawn("git", ["git", "daemon", "--reuseaddr", "--export-all", "--listen=127.0.0.1",
                              f"--port={ports['git']}", f"--base-path={git_dir}", str(git_dir)], directory),
    }  # fmt: skip
    services = Services(pids=pids, ports=ports)
    try:
        for name, pid in pids.items():
            _wait_port(name, pid, ports[name], directory)
    except FabricError:
        stop_services(services)
        raise
    return services


def stop_services(services: Services) -> None:
    for pid in services.pids.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)


# --- the daemon inside the fabric namespaces ---

_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def _inside(netns: str):
    """Run the block with this thread in network namespace `netns`; sockets made there stay there."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns}")
        try:
            yield
        finally:
            if _libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back home")
    finally:
        os.close(home)
        os.close(target)


def listen_in(netns: str, address: str, port: int) -> socket.socket:
    """A listening TCP socket at address:port inside network namespace `netns` (this thread returns home)."""
    with _inside(netns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(256)
    return sock


def socket_in(netns: str) -> socket.socket:
    """An unconnected TCP socket of network namespace `netns`, to connect to what only that namespace reaches."""
    with _inside(netns):
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM)


class PortForward:
    """127.0.0.1:`port` on this machine, forwarded to address:target_port inside network namespace `netns`:
    what SSM Session Manager's port forwarding gives an operator on AWS. Each connection is pumped by two
    threads; `close` stops listening."""

    def __init__(self, netns: str, address: str, target_port: int) -> None:
        self.netns, self.target = netns, (address, target_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        upstream = socket_in(self.netns)
        upstream.settimeout(5)
        try:
            upstream.connect(self.target)
        except OSError:
            client.close()
            upstream.close()
            return
        upstream.settimeout(None)
        for pair in ((client, upstream), (upstream, client)):
            threading.Thread(target=pump, args=pair, daemon=True).start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.close()


class _Relay(socketserver.BaseRequestHandler):
    target_port: int

    def handle(self) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.server.target_port), timeout=10)
        except OSError:
            return
        upstream.settimeout(None)
        pumps = [threading.Thread(target=pump, args=pair, daemon=True)
                 for pair in ((self.request, upstream), (upstream, self.request))]  # fmt: skip
        for thread in pumps:
            thread.start()
        for thread in pumps:
            thread.join()
        upstream.close()


def pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy one direction of a relayed connection until it ends, then end it on the other side."""
    with contextlib.suppress(OSError):
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


class _RelayServer(socketserver.ThreadingTCPServer):
    daemon_threads = True

    def __init__(self, sock: socket.socket, target_port: int) -> None:
        super().__init__(sock.getsockname(), _Relay, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.target_port = target_port


class _MetadataHandler(BaseHTTPRequestHandler):
    server_version = "EC2ws"

    def _answer(self) -> None:
        region, instances, tokens = self.server.region, self.server.instances, self.server.tokens
        try:
            record = instances.by_address(region, self.client_address[0])
        except Exception:  # the local cloud is down: EC2's own metadata service would still answer
            log.exception("metadata lookup failed")
            record = None
        reply = metadata.answer(self.command, self.path, dict(self.headers), record, tokens, time.time())
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    do_GET = do_PUT = _answer

    def log_message(self, format: str, *args: object) -> None:
        log.info(json.dumps({"event": "metadata", "client": self.client_address[0], "line": format % args}))


class _MetadataServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, sock: socket.socket, region: str, instances: metadata.LocalInstances) -> None:
        super().__init__(sock.getsockname(), _MetadataHandler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.region = region
        self.instances = instances
        self.tokens = metadata.Tokens()


@dataclass(frozen=True)
class DaemonConfig:
    """What the in-fabric daemon serves: per region, its fabric namespace; the relay's targets; the cloud."""

    fabrics: dict[str, str]
    targets: dict[int, int]
    cloud_endpoint: str


def run_daemon(config: DaemonConfig) -> None:
    """Serve every region's metadata service and relay until killed."""
    instances = metadata.LocalInstances(LocalAws(config.cloud_endpoint))
    servers: list[socketserver.BaseServer] = []
    for region, netns in config.fabrics.items():
        servers.append(_MetadataServer(listen_in(netns, metadata.METADATA_ADDRESS, 80), region, instances))
        for port, target in config.targets.items():
            servers.append(_RelayServer(listen_in(netns, image.RELAY_ADDRESS, int(port)), int(target)))
    for one in servers:
        threading.Thread(target=one.serve_forever, daemon=True).start()
    print("ready", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})


def start_daemon(config: DaemonConfig, directory: Path) -> int:
    """Start the daemon detached; returns its pid once it listens in every fabric."""
    write_json(directory / "fabric-daemon.json", asdict(config))
    log_path = directory / "fabric-daemon.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "bulkhead.hosts.fabric", str(directory / "fabric-daemon.json")],
        stdout=subprocess.PIPE, stderr=log_path.open("ab"), stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    line = process.stdout.readline() if process.stdout else b""
    if line.strip() != b"ready":
        process.kill()
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise FabricError(f"the fabric daemon (metadata service, NAT relay) did not start: {tail[0]}; see {log_path}")
    return process.pid


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    raw = json.loads(Path(sys.argv[1]).read_text())
    run_daemon(DaemonConfig(fabrics=raw["fabrics"], targets={int(k): v for k, v in raw["targets"].items()},
                            cloud_endpoint=raw["cloud_endpoint"]))  # fmt: skip


SERVICES = ("apt-cache", "proxpi", "git")


def ensure_services(sandboxes: Sandboxes, project_dir: Path, cache: Path, mirrors: list[str]) -> Services:
    """The caches and the git server running (started if not), the git server serving HEAD as it is now."""
    helpers = sandboxes.helpers()
    record = sandboxes.directory / "services.json"
    if record.exists() and all(process_running(helpers.get(name, -1)) for name in SERVICES):
        services = Services(**json.loads(record.read_text()))
    else:
        for name in SERVICES:
            sandboxes.forget_helper(name)
        sandboxes.directory.mkdir(parents=True, exist_ok=True)
        services = start_services(sandboxes.directory, sandboxes.directory / "git", cache, mirrors)
        write_json(record, asdict(services))
        for name, pid in services.pids.items():
            sandboxes.remember_helper(name, pid)
    serve_checkout(project_dir, sandboxes.directory / "git")
    return services


def ensure_daemon(sandboxes: Sandboxes, services: Services, cloud_port: int) -> None:
    """The metadata service and relay listening in the fabric of every region that has image sandboxes."""
    helpers = sandboxes.helpers()
    regions = sorted({s.region for s in sandboxes.recorded() if s.image})
    config = DaemonConfig(
        fabrics={region: fabric_netns(region, sandboxes.directory) for region in regions},
        targets=services.targets(cloud_port),
        cloud_endpoint=f"http://127.0.0.1:{cloud_port}",
    )
    record = sandboxes.directory / "fabric-daemon.json"
    running = process_running(helpers.get("fabric-daemon", -1)) and record.exists()
    if running and json.loads(record.read_text()) == json.loads(json.dumps(asdict(config))):
        return
    sandboxes.forget_helper("fabric-daemon")
    sandboxes.remember_helper("fabric-daemon", start_daemon(config, sandboxes.directory))
