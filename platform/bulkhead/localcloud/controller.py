"""The local cloud's controller: what AWS does and moto does not, in one long-running process beside moto.

- one endpoint per region (`fronts`), which a drill can take off the air;
- S3 replication with a set lag (`replication`);
- Route 53 health probes and the `TestDNSAnswer` API (`health`), which moto lacks;
- alarm evaluation into SNS (`alarms`);
- each CloudFront distribution served at a local address from its origin bucket (`distributions`);
- the instances it runs itself (bakes): booted, stopped, imaged and ended as EC2 would (`instances`).

`local up` starts it, `local down` stops it, `local status` shows it. Its pid, control port and the
fronts' ports live in `controller.json` beside the stack state. The control API is plain HTTP on
127.0.0.1: `GET /status`, `POST /regions/<region>/off-air|on-air`, and Route 53's API under
`/2013-04-01/`: `TestDNSAnswer` answered here, the rest forwarded to moto, so that this endpoint is the
whole of Route 53 locally and `bulkhead dns answer` calls Route 53's API here as on AWS.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from xml.sax.saxutils import escape

from bulkhead.files import write_json
from bulkhead.localcloud import images
from bulkhead.localcloud.alarms import Evaluator
from bulkhead.localcloud.aws import LocalAws, LocalCloudError
from bulkhead.localcloud.distributions import Edge
from bulkhead.localcloud.fronts import RegionFront
from bulkhead.localcloud.health import Prober, failover_answer
from bulkhead.localcloud.instances import Instances
from bulkhead.localcloud.replication import Replicator

log = logging.getLogger("bulkhead.local.controller")
RECORD = "controller.json"
DEFAULT_REPLICATION_LAG = 2.0
ROUTE53_NS = "https://route53.amazonaws.com/doc/2013-04-01/"
ROUTE53_PREFIX = "/2013-04-01/"


@dataclass(frozen=True)
class ControllerInfo:
    pid: int
    port: int
    fronts: dict[str, int]
    replication_lag: float
    moto_port: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"


# --- the operator's side: start, find, ask, stop ---


def recorded(directory: Path) -> ControllerInfo | None:
    try:
        return ControllerInfo(**json.loads((directory / RECORD).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def request(info: ControllerInfo, method: str, path: str, timeout: float = 10) -> dict:
    call = urllib.request.Request(f"{info.endpoint}{path}", method=method)
    with urllib.request.urlopen(call, timeout=timeout) as answer:
        return json.loads(answer.read() or b"{}")


def running(directory: Path) -> ControllerInfo | None:
    """The recorded controller if it answers."""
    info = recorded(directory)
    if info is None:
        return None
    try:
        request(info, "GET", "/status", timeout=5)
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return info


def start(directory: Path, moto_port: int, regions: list[str], hosts_dir: Path,
          replication_lag: float = DEFAULT_REPLICATION_LAG,
          roles: list[str] | None = None, project_dir: Path | None = None) -> ControllerInfo:  # fmt: skip
    """Start the controller detached; returns once its fronts and control API listen.

    `roles` are the other accounts' roles (the status account's) whose alarms and distributions it serves too;
    `project_dir` is the checkout the instances it runs itself (bakes) pull, as `hosts up` serves it."""
    previous = recorded(directory)
    config = {"moto_port": moto_port, "regions": sorted(set(regions)), "hosts_dir": str(hosts_dir),
              "replication_lag": replication_lag, "roles": sorted(set(roles or [])),
              "project_dir": str(project_dir) if project_dir else None,
              # A restarted controller keeps each region's port: the sandboxes' relays point at them.
              "fronts": previous.fronts if previous else {}}  # fmt: skip
    write_json(directory / "controller-config.json", config)
    log_path = directory / "controller.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "bulkhead.localcloud.controller", str(directory / "controller-config.json")],
        stdout=subprocess.PIPE, stderr=log_path.open("ab"), stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    line = process.stdout.readline() if process.stdout else b""
    try:
        ready = json.loads(line)
    except ValueError:
        process.kill()
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise LocalCloudError(f"the local cloud's controller did not start: {tail[0]}; see {log_path}") from None
    info = ControllerInfo(pid=process.pid, port=ready["port"], fronts=ready["fronts"], replication_lag=replication_lag,
                          moto_port=moto_port)  # fmt: skip
    write_json(directory / RECORD, asdict(info))
    return info


def stop(directory: Path) -> bool:
    """Stop the recorded controller; False when none was recorded."""
    info = recorded(directory)
    (directory / RECORD).unlink(missing_ok=True)
    if info is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(info.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(info.pid, os.WNOHANG)
            os.kill(info.pid, 0)
            time.sleep(0.05)
        os.killpg(info.pid, signal.SIGKILL)
    return True


def set_replication_lag(directory: Path, lag: float) -> ControllerInfo:
    """Change the running controller's replication lag in place (its fronts and figures carry on)."""
    info = running(directory)
    if info is None:
        raise LocalCloudError("the local cloud's controller is not running; start it with `bulkhead local up`")
    request(info, "POST", f"/replication/lag/{lag:g}")
    changed = ControllerInfo(info.pid, info.port, info.fronts, lag, info.moto_port)
    write_json(directory / RECORD, asdict(changed))
    return changed


def fronts_of(directory: Path) -> dict[str, int]:
    """Each region's front port (none when no controller was started)."""
    info = recorded(directory)
    return dict(info.fronts) if info else {}


def front_endpoint(directory: Path, region: str) -> str | None:
    """The endpoint of `region`'s front, when the controller runs and fronts it."""
    info = recorded(directory)
    if info is None or region not in info.fronts:
        return None
    return f"http://127.0.0.1:{info.fronts[region]}"


# --- the controller process ---


class Controller:
    def __init__(self, config: dict) -> None:
        self.moto_port = int(config["moto_port"])
        self.moto = LocalAws(f"http://127.0.0.1:{self.moto_port}")
        self.fronts = {region: RegionFront(region, self.moto_port, int(config["fronts"].get(region, 0)))
                       for region in config["regions"]}  # fmt: skip
        self.replicator = Replicator(lambda region: self.moto.client("s3", region), float(config["replication_lag"]),
                                     self.reachable)  # fmt: skip
        self.prober = Prober(lambda: self.moto.client("route53", "us-east-1"), self._edge(Path(config["hosts_dir"])))
        roles = [None, *config.get("roles", [])]
        self.alarms = Evaluator(self.moto.client, list(self.fronts), roles, self.reachable)
        self.edge = Edge(self.moto.client, roles, self.reachable)
        self.instances = Instances(self.moto.client, list(self.fronts), Path(config["hosts_dir"]),
                                   Path(config["project_dir"]) if config.get("project_dir") else None,
                                   images.images_dir(), self.moto_port, self.reachable)  # fmt: skip

    def reachable(self, region: str) -> bool:
        front = self.fronts.get(region)
        return front is None or front.reachable

    def _edge(self, hosts_dir: Path):
        """Where a region's load balancer sends a health probe: its routers, from the region's bridge."""
        from bulkhead.hosts.fabric import socket_in
        from bulkhead.hosts.sandbox import Sandboxes, fabric_netns

        sandboxes = Sandboxes(hosts_dir)

        def targets(region: str):
            routers = [s.address for s in sandboxes.recorded() if s.region == region and s.role == "router"]
            if not routers or not self.reachable(region):
                return None, []
            netns = fabric_netns(region, hosts_dir)
            return (lambda: socket_in(netns)), routers

        return targets

    def loop(self, name: str, work, interval: float) -> None:
        def forever() -> None:
            while True:
                try:
                    work()
                except Exception:
                    # The controller outlives a moto hiccup or a bucket deleted mid-pass; the next pass retries.
                    log.exception("%s pass failed", name)
                time.sleep(interval)

        threading.Thread(target=forever, daemon=True, name=name).start()

    def status(self) -> dict:
        return {
            "regions": {r: {"port": f.port, "reachable": f.reachable} for r, f in self.fronts.items()},
            "replication": {"lag_s": self.replicator.lag, **self.replicator.figures.as_json()},
            "health_checks": self.prober.as_json(),
            "alarms": dict(self.alarms.figures),
            "distributions": self.edge.as_json(),
        }

    def test_dns_answer(self, query: dict[str, str]) -> str:
        """Route 53's TestDNSAnswer: the record it would answer now, by its failover rule and the probes."""
        zone, name = query.get("hostedzoneid", ""), query.get("recordname", "").rstrip(".") + "."
        kind = query.get("recordtype", "A")
        route53 = self.moto.client("route53", "us-east-1")
        sets = route53.list_resource_record_sets(HostedZoneId=zone, StartRecordName=name, StartRecordType=kind)
        records = [r for r in sets["ResourceRecordSets"] if r["Name"] == name and r["Type"] == kind]
        chosen = failover_answer(records, self.prober.healthy)
        values = [v["Value"] for v in (chosen or {}).get("ResourceRecords", [])]
        data = "".join(f"<RecordDataEntry>{escape(v)}</RecordDataEntry>" for v in values)
        return (f'<?xml version="1.0" encoding="UTF-8"?><TestDNSAnswerResponse xmlns="{ROUTE53_NS}">'
                f"<Nameserver>bulkhead-local</Nameserver><RecordName>{escape(name)}</RecordName>"
                f"<RecordType>{escape(kind)}</RecordType><RecordData>{data}</RecordData>"
                f"<ResponseCode>{'NOERROR' if chosen else 'NXDOMAIN'}</ResponseCode><Protocol>UDP</Protocol>"
                "</TestDNSAnswerResponse>")  # fmt: skip


class _Api(BaseHTTPRequestHandler):
    server_version = "BulkheadLocalController"
    controller: Controller

    def log_message(self, format: str, *args) -> None:
        pass

    def _send(self, code: int, body: bytes | str, kind: str = "application/json") -> None:
        payload = body.encode() if isinstance(body, str) else body
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/status":
            self._send(200, json.dumps(self.controller.status()))
        elif url.path == "/2013-04-01/testdnsanswer":
            query = dict(urllib.parse.parse_qsl(url.query))
            self._send(200, self.controller.test_dns_answer(query), "text/xml")
        else:
            self._forward()

    def do_DELETE(self) -> None:
        self._forward()

    def do_POST(self) -> None:
        parts = urllib.parse.urlsplit(self.path).path.strip("/").split("/")
        if parts[:2] == ["replication", "lag"] and len(parts) == 3:
            try:
                lag = float(parts[2])
            except ValueError:
                lag = -1.0
            if lag < 0:
                self._send(400, json.dumps({"error": f"lag {parts[2]!r} is not a number of seconds"}))
                return
            self.controller.replicator.lag = lag
            self._send(200, json.dumps({"lag_s": lag}))
            return
        if parts[0] != "regions":
            self._forward()
            return
        front = self.controller.fronts.get(parts[1]) if len(parts) == 3 else None
        if front is None or parts[2] not in ("off-air", "on-air"):
            self._send(404, json.dumps({"error": f"no {self.path}"}))
            return
        front.stop() if parts[2] == "off-air" else front.start()
        self._send(200, json.dumps({"region": front.region, "reachable": front.reachable}))

    def _forward(self) -> None:
        """The rest of Route 53's API, as moto serves it."""
        if not self.path.startswith(ROUTE53_PREFIX):
            self._send(404, json.dumps({"error": f"no {self.path}"}))
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        # http.client, not urllib: urllib would add a form Content-Type that moto then misreads.
        upstream = http.client.HTTPConnection("127.0.0.1", self.controller.moto_port, timeout=30)
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            answer = upstream.getresponse()
            code, payload, kind = answer.status, answer.read(), answer.getheader("Content-Type", "text/xml")
        finally:
            upstream.close()
        self._send(code, payload, kind)


def serve(config: dict) -> None:
    controller = Controller(config)
    for front in controller.fronts.values():
        front.start()
    _Api.controller = controller
    api = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    api.daemon_threads = True
    threading.Thread(target=api.serve_forever, daemon=True).start()
    controller.loop("replication", controller.replicator.tick, 0.5)
    controller.loop("health", controller.prober.tick, 1.0)
    # Each alarm keeps its own period; this pass only finds the ones that are due.
    controller.loop("alarms", controller.alarms.tick, 2.0)
    controller.loop("edge", controller.edge.tick, 1.0)
    controller.loop("instances", controller.instances.tick, 2.0)
    print(json.dumps({"port": api.server_address[1], "fronts": {r: f.port for r, f in controller.fronts.items()}}),
          flush=True)  # fmt: skip
    signal.sigwait({signal.SIGTERM, signal.SIGINT})


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    from bulkhead import logs

    logs.configure(json_lines=True)
    logging.getLogger().setLevel(logging.INFO)
    serve(json.loads(Path(sys.argv[1]).read_text()))
