"""HAProxy as the router agent drives it: the routes file it owns, the runtime API, and validated reloads.

The router role writes `haproxy.cfg` (global settings, the frontend, which picks `app_<first label of
the Host header>`, or the default app's backend) and the same without the host's key (`check.cfg`, what
a new routes file is checked against); the agent owns the second file HAProxy reads, `routes.cfg`: one
backend per declared app, one server per route. A change of servers within existing backends goes
through the runtime API (no reload, no dropped connection); a new or removed backend needs a reload,
which happens only after `haproxy -c` accepted the whole configuration. The routes file is always
rewritten first, so a restart or reload starts from the current table.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bulkhead.agents.routes import Route
from bulkhead.errors import BulkheadError


class HaproxyError(BulkheadError):
    """HAProxy refused a change; the message says which and HAProxy's answer."""


@dataclass(frozen=True)
class Settings:
    """Where this router's HAProxy keeps its files and sockets, and the limits every server gets."""

    config: Path = Path("/var/lib/bulkhead/router/check.cfg")
    routes: Path = Path("/var/lib/bulkhead/router/routes.cfg")
    admin_socket: Path = Path("/var/lib/bulkhead/router/admin.sock")
    master_socket: Path = Path("/var/lib/bulkhead/router/master.sock")
    max_connections_per_server: int = 64
    binary: str = "haproxy"


def server_line_options(settings: Settings) -> str:
    """What every server gets (Feb 2012: a bounded number of connections per backend)."""
    return f"check inter 2s fall 3 rise 2 maxconn {settings.max_connections_per_server}"


def render(table: Iterable[Route], apps: Iterable[str], settings: Settings) -> str:
    """The routes file for `table`: a backend for every app in `apps` (even with no route yet)."""
    by_app: dict[str, list[Route]] = {app: [] for app in apps}
    for route in table:
        by_app.setdefault(route.app, []).append(route)
    lines = ["# Written by the router agent (bulkhead agent router-sync) from the route registry."]
    for app in sorted(by_app):
        lines += ["", f"backend app_{app}", "    balance leastconn", "    option httpchk GET /"]
        for route in sorted(by_app[app], key=lambda r: r.server):
            lines.append(f"    server {route.server} {route.address}:{route.port} {server_line_options(settings)}")
    return "\n".join(lines) + "\n"


def backends(text: str) -> set[str]:
    """The app names whose backends a routes file declares."""
    return {line.split()[1][len("app_") :] for line in text.splitlines() if line.startswith("backend app_")}


class Haproxy:
    """One router's HAProxy."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def write_routes(self, text: str) -> None:
        """Check the whole configuration with `text` as its routes, then put `text` in place; a refused
        file is never written."""
        candidate = self.settings.routes.with_name(self.settings.routes.name + ".new")
        candidate.write_text(text)
        command = [self.settings.binary, "-c", "-f", str(self.settings.config), "-f", str(candidate)]
        check = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        if check.returncode != 0:
            candidate.unlink(missing_ok=True)
            raise HaproxyError(f"haproxy -c refused the routes: {(check.stderr or check.stdout).strip()[-300:]}")
        os.replace(candidate, self.settings.routes)

    def reload(self) -> None:
        """Ask the master to start new workers on the files as they are; old ones finish their requests."""
        answer = self._ask(self.settings.master_socket, "reload")
        if "fail" in answer.lower():
            raise HaproxyError(f"haproxy's master refused to reload: {answer.strip()[:200]}")

    def add(self, route: Route) -> None:
        """A new server for the route, its health checks on and taking traffic: one round trip (the runtime
        API takes commands separated by semicolons), which matters when a thousand routes arrive at once."""
        name = f"app_{route.app}/{route.server}"
        commands = [f"add server {name} {route.address}:{route.port} {server_line_options(self.settings)}",
                    f"enable health {name}", f"enable server {name}"]  # fmt: skip
        answer = [line for line in self._ask(self.settings.admin_socket, "; ".join(commands)).splitlines() if line]
        if answer != ["New server registered."]:
            raise HaproxyError(f"haproxy refused to add {name}: {' / '.join(answer)[:200]}")

    def readd(self, route: Route) -> None:
        """A server HAProxy still has (draining, or moved): point it at the route and take traffic again."""
        name = f"app_{route.app}/{route.server}"
        self._command(f"set server {name} addr {route.address} port {route.port}", "")
        self._command(f"enable server {name}")

    def drain(self, server: str) -> None:
        """Send `backend/server` no new requests; those in flight finish (it is deleted once idle)."""
        self._command(f"disable server {server}")

    def delete(self, server: str, force: bool = False) -> None:
        """Delete a drained server; HaproxyError while it still has connections, unless `force` cuts them."""
        if force:
            self._command(f"shutdown sessions server {server}")
        self._command(f"del server {server}", "Server deleted")

    def backends(self) -> set[str]:
        """The app names whose backends the running HAProxy has."""
        names = self._ask(self.settings.admin_socket, "show backend").split()
        return {name[len("app_") :] for name in names if name.startswith("app_")}

    def servers(self) -> dict[str, set[str]]:
        """Backend -> the servers HAProxy has now (from `show servers state`)."""
        found: dict[str, set[str]] = {}
        for line in self._ask(self.settings.admin_socket, "show servers state").splitlines():
            parts = line.split()
            if len(parts) > 4 and parts[0].isdigit() and parts[1].startswith("app_"):
                found.setdefault(parts[1], set()).add(parts[3])
        return found

    def _command(self, command: str, success: str | None = None) -> None:
        """Run a runtime API command: `success` is text its answer must hold; None: it must answer nothing."""
        answer = self._ask(self.settings.admin_socket, command).strip()
        if (success and success not in answer) or (success is None and answer):
            raise HaproxyError(f"haproxy refused `{command}`: {answer[:200]}")

    @staticmethod
    def _ask(path: Path, command: str, timeout: float = 5.0) -> str:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
                connection.settimeout(timeout)
                connection.connect(str(path))
                connection.sendall(command.encode() + b"\n")
                chunks = []
                while chunk := connection.recv(65536):
                    chunks.append(chunk)
        except OSError as error:
            raise HaproxyError(f"haproxy's socket {path} did not answer `{command}`: {error}") from None
        return b"".join(chunks).decode(errors="replace")
