"""The moto server behind the local cloud: started detached on 127.0.0.1, found again, stopped.

Its pid and port live in `server.json` beside the stack state, so `bulkhead local status`, the
drills and a later `up` all find the same server.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from bulkhead.files import write_json
from bulkhead.localcloud import images, moto_gaps
from bulkhead.localcloud.aws import LocalCloudError

AMIS = Path(__file__).with_name("debian_amis.json")
START_TIMEOUT = 30.0


@dataclass(frozen=True)
class ServerInfo:
    """A running moto server."""

    pid: int
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _answers(port: int, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still "exists" for kill(0); reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    return True


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def recorded(directory: Path) -> ServerInfo | None:
    """The server `server.json` names, whether or not it still runs."""
    path = directory / "server.json"
    try:
        document = json.loads(path.read_text())
        return ServerInfo(pid=int(document["pid"]), port=int(document["port"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def running(directory: Path) -> ServerInfo | None:
    """The recorded server if it is alive and answering."""
    info = recorded(directory)
    if info and _alive(info.pid) and _answers(info.port):
        return info
    return None


MOTO_MAIN = "from bulkhead.localcloud.moto_gaps import main; main()"


def start(directory: Path, port: int | None = None, environment: dict[str, str] | None = None) -> ServerInfo:
    """Start a detached moto server on 127.0.0.1 and wait until it answers; `environment` adds moto settings."""
    if port is not None and port_in_use(port):
        raise LocalCloudError(f"port {port} on 127.0.0.1 is in use; pick another with --port, or omit --port")
    chosen = port if port is not None else free_port()
    directory.mkdir(parents=True, exist_ok=True)
    log = (directory / "moto.log").open("ab")
    # Moto's image catalogue gets the Debian 12 images the program looks up, as AWS publishes them.
    # The images CreateImage makes are taken by the controller into this machine's cache (see `moto_gaps`).
    environment = {**os.environ, "MOTO_AMIS_PATH": str(AMIS), moto_gaps.IMAGES_DIR_VARIABLE: str(images.images_dir()),
                   **(environment or {})}  # fmt: skip
    process = subprocess.Popen(
        # moto's server, with EC2's launch behaviour that moto lacks (see `moto_gaps`).
        [sys.executable, "-c", MOTO_MAIN, "-H", "127.0.0.1", "-p", str(chosen)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=environment,
        start_new_session=True,
    )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = (directory / "moto.log").read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise LocalCloudError(f"the moto server exited at start ({tail[0]}); see {directory / 'moto.log'}")
        if _answers(chosen):
            info = ServerInfo(pid=process.pid, port=chosen)
            write_json(directory / "server.json", asdict(info))
            return info
        time.sleep(0.1)
    process.kill()
    raise LocalCloudError(f"the moto server did not answer on port {chosen} within {START_TIMEOUT:.0f} s")


def stop(directory: Path) -> bool:
    """Stop the recorded server; False when none was running."""
    info = recorded(directory)
    (directory / "server.json").unlink(missing_ok=True)
    if not info or not _alive(info.pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(info.pid):
        time.sleep(0.05)
    if _alive(info.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(info.pid, signal.SIGKILL)
    return True
