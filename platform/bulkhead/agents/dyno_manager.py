"""The dyno manager: runs this host's share of every app's processes under supervisord, and publishes
their routes.

Each round (every `interval` s) it:
1. holds a lease and its registration (`/bulkhead/<region>/managers/<host>`) under it, so that the other
   managers count it, and the routers drop its routes on their own if the host dies (a thread of its own
   renews the lease, so that a slow round never lets it lapse);
2. reads every app's desired state and the live managers, and takes its share (`dynos.placement`);
3. compares it with supervisord (`dynos.reconcile`) and acts: stops what nobody asked for, replaces a
   crashed process, launches what is missing; each launch needs a permit from the cell's per-minute
   count (the `dyno-launch-rate` rod) and the boot-time breaker's consent;
4. watches each launch boot (a web process boots when it answers HTTP), records the boot time, feeds the
   breaker, and only then publishes the route;
5. publishes again the route of a web process it finds running without one (a restarted manager: the old
   lease took its routes), once it answers.
`app-management-lockdown` stops voluntary moves (new launches, rebalancing, restarts); a crashed process
is still replaced. Figures go to a state file every round.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import shlex
import socket
import subprocess
import threading
import time
import urllib.request
import xmlrpc.client
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bulkhead.agents import dynos, routes
from bulkhead.agents.registry import Registry, RegistryError
from bulkhead.files import write_json
from bulkhead.ops.rods import Reader

log = logging.getLogger("bulkhead.agents.dyno_manager")
PORTS = (5000, 5999)
LEASE_TTL = 10
# Seconds a manager only registers before it takes a share: hosts booting together then agree at once.
SETTLE_SECONDS = 5
# supervisord's socket on Debian (its packaged supervisord.conf, [unix_http_server]).
SUPERVISOR_SOCKET = Path("/var/run/supervisor.sock")


def managers_prefix(region: str) -> str:
    return f"/bulkhead/{region}/managers/"


def launches_key(region: str, cell: str, minute: int) -> str:
    return f"/bulkhead/{region}/launches/{cell}/{minute}"


@dataclass(frozen=True)
class Host:
    """Who this manager is."""

    name: str
    address: str
    az: str
    cell: str
    region: str


@dataclass
class Figures:
    """What the manager reports about itself."""

    processes: dict[str, str] = field(default_factory=dict)
    routes: int = 0
    launches: int = 0
    launches_refused_rate: int = 0
    launches_refused_breaker: int = 0
    boots: list[dict] = field(default_factory=list)
    boot_failures: int = 0
    breaker: str = "closed"
    breaker_opened: int = 0
    stopped: int = 0
    replaced: int = 0
    lockdown: bool = False
    launch_rate: int = 0
    desired_errors: list[str] = field(default_factory=list)
    registry_errors: int = 0
    pid: int = 0
    started_at: float = 0.0
    updated_at: float = 0.0


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class _UnixTransport(xmlrpc.client.Transport):
    """XML-RPC to supervisord's own socket (what supervisorctl speaks), from this process."""

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__()
        self.path, self.timeout = str(path), timeout

    def make_connection(self, host):
        return _UnixConnection(self.path, self.timeout)


class Supervisor:
    """This host's supervisord, as the manager drives it: one program file per dyno process.

    The state of the processes is read over supervisord's socket (`getAllProcessInfo`) in this process. It
    is read every round: a `supervisorctl status` each time was an interpreter started twice a second on
    every dyno host, most of an idle host's CPU."""

    def __init__(self, conf_dir: Path, log_dir: Path, socket_path: Path = SUPERVISOR_SOCKET) -> None:
        self.conf_dir, self.log_dir, self.socket_path = conf_dir, log_dir, socket_path

    def conf(self, process: dynos.Process) -> Path:
        return self.conf_dir / f"{process.program}.conf"

    def running(self) -> list[dynos.Running]:
        server = xmlrpc.client.ServerProxy("http://localhost", transport=_UnixTransport(self.socket_path, 30))
        found = []
        for info in server.supervisor.getAllProcessInfo():
            name = info["name"] if info["group"] == info["name"] else f"{info['group']}:{info['name']}"
            process = dynos.program_process(name)
            if process is not None:
                found.append(dynos.Running(process, info["statename"], self.meta(process).get("restarts", 0)))
        return found

    def meta(self, process: dynos.Process) -> dict:
        """What the manager noted in a program's file when it launched it (port, generation)."""
        try:
            first = self.conf(process).read_text().splitlines()[0]
        except (OSError, IndexError):
            return {}
        try:
            return json.loads(first.removeprefix("; bulkhead: "))
        except ValueError:
            return {}

    def ports_in_use(self) -> set[int]:
        used = set()
        for path in self.conf_dir.glob("dyno-*.conf"):
            process = dynos.program_process(path.stem)
            if process and (port := self.meta(process).get("port")):
                used.add(int(port))
        return used

    def start(self, process: dynos.Process, command: str, environment: dict[str, str], directory: Path, user: str,
              meta: dict) -> None:  # fmt: skip
        env = ",".join(f'{k}="{v}"' for k, v in sorted(environment.items()))
        self.conf(process).write_text(
            f"; bulkhead: {json.dumps(meta, sort_keys=True)}\n"
            f"; Written by the dyno manager; removed when the process is stopped.\n"
            f"[program:{process.program}]\ncommand={command}\ndirectory={directory}\nuser={user}\n"
            f"environment={env}\nautostart=true\nautorestart=unexpected\nstartsecs=1\nstartretries=2\n"
            f"stopasgroup=true\nkillasgroup=true\nstdout_logfile={self.log_dir}/{process.program}.log\n"
            f"redirect_stderr=true\n"
        )
        self._update(process)

    def stop(self, process: dynos.Process) -> None:
        self.conf(process).unlink(missing_ok=True)
        self._update(process)

    def _update(self, process: dynos.Process) -> None:
        # `update NAME` adds, changes or removes just that program, as its file now says.
        subprocess.run(["supervisorctl", "-s", f"unix://{self.socket_path}", "update", process.program],
                       capture_output=True, timeout=60, check=False)  # fmt: skip


class DynoManager:
    """One dyno host's manager."""

    def __init__(self, registry: Registry, host: Host, supervisor: Supervisor, apps_dir: Path, state_path: Path,
                 rods: Reader | None = None, user: str = "bulkhead", bulkhead_cli: str = "bulkhead",
                 interval: float = 1.0, boot_timeout: float = 60.0,
                 breaker: dynos.Breaker | None = None, max_booting: int = 2,
                 lease_ttl: int = LEASE_TTL) -> None:  # fmt: skip
        self.registry, self.host, self.supervisor = registry, host, supervisor
        self.apps_dir, self.state_path, self.rods, self.user = apps_dir, state_path, rods, user
        self.bulkhead_cli, self.interval, self.boot_timeout = bulkhead_cli, interval, boot_timeout
        self.breaker = breaker or dynos.Breaker()
        self.max_booting = max_booting
        self.lease_ttl = lease_ttl
        self.figures = Figures(pid=os.getpid(), started_at=time.time())
        self.lease: int | None = None
        self.routes: dict[dynos.Process, routes.Route] = {}
        self.booting: dict[dynos.Process, float] = {}
        self._boots: deque[dict] = deque(maxlen=20)
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def declare(self, desired: dynos.Desired) -> None:
        """Declare an app with this formation, unless somebody has declared it already (then theirs stands).
        Retried until the registry answers: a dyno host may boot before the database hosts."""
        while not self._stop.is_set():
            try:
                if self.registry.create(routes.apps_prefix(self.host.region) + desired.app, desired.value()):
                    log.info("app declared", extra={"app": desired.app, "formation": desired.formation})
                return
            except RegistryError as error:
                log.warning(
                    "registry unreachable; the app is declared when it answers", extra={"error": str(error)[:200]}
                )
                self._stop.wait(2.0)

    # --- the lease and what lives under it ---

    def _ensure_lease(self) -> int:
        if self.lease is not None and self.registry.keep_alive(self.lease) > 0:
            return self.lease
        self.lease = self.registry.grant(self.lease_ttl)
        log.info("lease granted", extra={"lease": self.lease})
        self.registry.put(managers_prefix(self.host.region) + self.host.name,
                          json.dumps(asdict(self.host), sort_keys=True), lease=self.lease)  # fmt: skip
        with self._lock:
            published = list(self.routes.values())
        for route in published:  # the old lease took them with it
            self.registry.put(route.key(self.host.region), route.value(), lease=self.lease)
        return self.lease

    def keep_lease(self) -> None:
        """Renew the lease every third of its TTL until the manager stops, whatever a round is doing: a round
        that waits on a slow disk or a slow supervisord past the TTL must not let the lease lapse. A lapse takes
        this host's registration and routes with it; every other manager then places the formation without
        this host, and the processes move and move back (a storm of launches, as in February 2012)."""
        while not self._stop.wait(self.lease_ttl / 3):
            lease = self.lease
            if lease is None:
                continue
            try:
                if self.registry.keep_alive(lease) <= 0:
                    log.warning("lease expired; the next round takes a new one", extra={"lease": lease})
            except RegistryError as error:
                log.warning("lease not renewed: registry unreachable", extra={"error": str(error)[:200]})

    # --- one round ---

    def desired(self) -> list[dynos.Desired]:
        found, _ = self.registry.get_prefix(routes.apps_prefix(self.host.region))
        states, errors = [], []
        for key, value in found.items():
            try:
                states.append(dynos.parse_desired(key[len(routes.apps_prefix(self.host.region)) :], value))
            except dynos.BadDesiredState as error:
                errors.append(str(error))
        self.figures.desired_errors = errors[:10]
        return states

    def step(self) -> None:
        self._ensure_lease()
        if time.time() - self.figures.started_at < SETTLE_SECONDS:
            return  # let the other managers register first, so the first placement is the lasting one
        desired = self.desired()
        managers, _ = self.registry.get_prefix(managers_prefix(self.host.region))
        hosts = [key[len(managers_prefix(self.host.region)) :] for key in managers]
        mine = dynos.placement(desired, hosts).get(self.host.name, [])
        lockdown = self.rods.on("app-management-lockdown") if self.rods else False
        rate = int(self.rods.value("dyno-launch-rate")) if self.rods else 30
        self.figures.lockdown, self.figures.launch_rate = lockdown, rate
        running = self.supervisor.running()
        with self._lock:
            booting = set(self.booting)
        plan = dynos.reconcile(mine, [r for r in running if r.process not in booting],
                               {d.app: d.restarts for d in desired}, lockdown)  # fmt: skip
        restarts = {d.app: d.restarts for d in desired}
        for process in plan.stop:
            self._stop_process(process)
        for process in plan.replace:
            self._stop_process(process)
            if self._launch(process, restarts.get(process.app, 0)):
                self.figures.replaced += 1
        for process in plan.launch:
            if not self._launch(process, restarts.get(process.app, 0)):
                break  # the rest wait for the next permit
        with self._lock:
            unrouted = [r.process for r in running if r.state == "RUNNING" and r.process.type == "web"
                        and r.process in mine and r.process not in self.routes and r.process not in self.booting
                        and r.process not in plan.stop]  # fmt: skip
        for process in unrouted:
            self._adopt(process)

    def _adopt(self, process: dynos.Process) -> None:
        """A web process that runs here with no route of this manager's: the manager was restarted (an
        upgrade, a crash) and its old lease took the routes with it. Once it answers, publish its route
        again; it is not a launch, so it feeds neither the breaker nor the launch count."""
        port = self.supervisor.meta(process).get("port")
        if port is None or not self._answers(int(port)):
            return  # a process that does not answer is left to supervisord and the next round
        if self._publish(process, int(port)):
            log.info("adopted", extra={"dyno": process.name, "port": port})

    def _answers(self, port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.host.address}:{port}/", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    def _publish(self, process: dynos.Process, port: int) -> bool:
        route = routes.Route(process.app, self.host.name, self.host.address, port, self.host.az, time.time())
        try:
            self.registry.put(route.key(self.host.region), route.value(), lease=self.lease)
        except RegistryError as error:
            log.warning("route not published", extra={"dyno": process.name, "error": str(error)[:200]})
            return False
        with self._lock:
            self.routes[process] = route
        return True

    def _permit(self) -> float | None:
        """One launch of this cell's per-minute budget and the breaker's consent: when it was given, or None.
        Launches also wait while `max_booting` of this host's are still booting: launching more into slow boots
        is the feedback loop of February 2012."""
        now = time.time()
        with self._lock:
            if len(self.booting) >= self.max_booting:
                return None
        if not self.breaker.allows(now):
            self.figures.launches_refused_breaker += 1
            return None
        rate = self.figures.launch_rate
        minute = dynos.LaunchWindow.minute(now)
        if not self.registry.increment_below(launches_key(self.host.region, self.host.cell, minute), rate,
                                             lease=self._window_lease()):  # fmt: skip
            self.figures.launches_refused_rate += 1
            if self.breaker.state == "half-open":
                self.breaker.probing = False  # the probe did not happen; let the next round try
            return None
        return now

    def _window_lease(self) -> int:
        # The per-minute counters expire on their own (two minutes), under a lease of their own.
        now = time.time()
        if getattr(self, "_window", (0, 0))[1] < now:
            self._window = (self.registry.grant(120), now + 60)
        return self._window[0]

    def _launch(self, process: dynos.Process, restarts: int) -> bool:
        procfile = self.procfile(process.app)
        if process.type not in procfile:
            log.warning("no such process type in the app's Procfile", extra={"dyno": process.name})
            return False
        permitted_at = self._permit()
        if permitted_at is None:
            return False
        meta: dict = {"restarts": restarts, "launched_at": time.time()}
        environment = {"APP_NAME": process.app, "DYNO": f"{process.type}.{process.index}", "PROCESS_TYPE": process.type,
                       "BULKHEAD_HOST": self.host.name, "BULKHEAD_AZ": self.host.az, "BIND": self.host.address,
                       "PYTHONUNBUFFERED": "1"}  # fmt: skip
        command = procfile[process.type]
        if process.type == "web":
            port = self._free_port()
            meta["port"] = environment["PORT"] = port
        if process.type in dynos.SINGLETONS:
            registry = ",".join(self.registry.endpoints)
            command = (f"{self.bulkhead_cli} --log-json agent singleton --region {self.host.region} --registry "
                       f"{registry} --name {process.app}-{process.type} --holder {self.host.name} "
                       f"-- {command}")  # fmt: skip
        self.supervisor.start(process, command, {k: str(v) for k, v in environment.items()},
                              self.apps_dir / process.app, self.user, meta)  # fmt: skip
        self.figures.launches += 1
        with self._lock:
            self.booting[process] = time.time()
        threading.Thread(target=self._watch_boot, args=(process, meta.get("port")), daemon=True).start()
        log.info("launched", extra={"dyno": process.name, "port": meta.get("port"), "cell": self.host.cell,
                                    "permitted_at": permitted_at, "rate": self.figures.launch_rate})  # fmt: skip
        return True

    def _watch_boot(self, process: dynos.Process, port: int | None) -> None:
        """Wait for the process to boot; then feed the breaker and, for web, publish its route."""
        started = time.time()
        booted = False
        while time.time() - started < self.boot_timeout and not self._stop.is_set():
            if port is None:
                booted = any(r.process == process and r.state == "RUNNING" for r in self.supervisor.running())
            else:
                booted = self._answers(port)
            if booted:
                break
            time.sleep(0.2)
        seconds = round(time.time() - started, 3) if booted else None
        self.breaker.booted(seconds, time.time())
        self._boots.append({"process": process.name, "seconds": seconds, "at": time.time()})
        if not booted:
            self.figures.boot_failures += 1
            log.warning("boot timed out", extra={"dyno": process.name, "timeout_s": self.boot_timeout})
        elif port is not None:
            self._publish(process, port)
        log.info("booted" if booted else "not booted", extra={"dyno": process.name, "boot_s": seconds})
        with self._lock:
            self.booting.pop(process, None)

    def _stop_process(self, process: dynos.Process) -> None:
        with self._lock:
            route = self.routes.pop(process, None)
        if route is not None:
            try:
                self.registry.delete(route.key(self.host.region))
                time.sleep(1.0)  # the routers drop it before its connections do
            except RegistryError:
                pass
        self.supervisor.stop(process)
        self.figures.stopped += 1
        log.info("stopped", extra={"dyno": process.name})

    def procfile(self, app: str) -> dict[str, str]:
        """The app's process types and their commands, from its Procfile (`type: command` lines)."""
        try:
            lines = (self.apps_dir / app / "Procfile").read_text().splitlines()
        except OSError:
            return {}
        found = {}
        for line in lines:
            kind, _, command = line.partition(":")
            if kind.strip() in dynos.PROCESS_TYPES and command.strip():
                found[kind.strip()] = " ".join(shlex.split(command))
        return found

    def _free_port(self) -> int:
        used = self.supervisor.ports_in_use()
        return next(p for p in range(PORTS[0], PORTS[1] + 1) if p not in used)

    # --- reporting and running ---

    def report(self) -> None:
        figures = self.figures
        figures.processes = {r.process.name: r.state for r in self.supervisor.running()}
        with self._lock:
            figures.routes = len(self.routes)
        figures.boots = list(self._boots)
        figures.breaker, figures.breaker_opened = self.breaker.state, self.breaker.opened
        figures.updated_at = time.time()
        write_json(self.state_path, asdict(figures))

    def run(self) -> None:
        log.info("dyno manager started", extra={"host": self.host.name, "cell": self.host.cell})
        threading.Thread(target=self.keep_lease, daemon=True, name="lease").start()
        while not self._stop.is_set():
            try:
                self.step()
            except RegistryError as error:
                self.figures.registry_errors += 1
                log.warning("registry unreachable; processes keep running", extra={"error": str(error)[:200]})
            except Exception:  # never exit: the apps keep running whatever the manager meets
                log.exception("manager round failed")
            try:
                self.report()
            except Exception:
                log.exception("report failed")
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
