"""Route 53's rules as the local cloud applies them: the failure threshold, the failover answer, and a probe
that speaks HTTPS to a real server."""

from __future__ import annotations

import http.server
import socket
import ssl
import subprocess
import threading

import pytest

from bulkhead.localcloud.health import Check, Status, failover_answer, observe, probe

pytestmark = pytest.mark.unit

PRIMARY = {"Name": "apps.example.net.", "Failover": "PRIMARY", "HealthCheckId": "p",
           "ResourceRecords": [{"Value": "east-lb"}]}  # fmt: skip
SECONDARY = {"Name": "apps.example.net.", "Failover": "SECONDARY", "HealthCheckId": "s",
             "ResourceRecords": [{"Value": "west-lb"}]}  # fmt: skip


def test_observe__unhealthy_only_after_threshold_failures_in_a_row_and_back_after_as_many_successes():
    status = Status()
    for outcome in (False, False, True, False, False):
        status = observe(status, outcome, 3, "probe", 0)
    assert status.healthy  # the success in between reset the run
    status = observe(status, False, 3, "probe", 1)
    assert not status.healthy and status.changed_at == 1
    status = observe(observe(status, True, 3, "probe", 2), True, 3, "probe", 3)
    assert not status.healthy
    assert observe(status, True, 3, "probe", 4).healthy


@pytest.mark.parametrize(
    ("healthy", "expected"),
    [({"p": True, "s": True}, "east-lb"), ({"p": False, "s": True}, "west-lb"),
     ({"p": True, "s": False}, "east-lb"), ({"p": False, "s": False}, "east-lb")],
)  # fmt: skip
def test_failover_answer__primary_while_healthy_else_a_healthy_secondary_else_primary(healthy, expected):
    chosen = failover_answer([SECONDARY, PRIMARY], lambda check: healthy[check])
    assert chosen["ResourceRecords"][0]["Value"] == expected


def test_failover_answer__a_record_without_a_check_counts_as_healthy():
    unchecked = {**PRIMARY, "HealthCheckId": None}
    assert failover_answer([unchecked, SECONDARY], lambda check: False) is unchecked


@pytest.fixture(scope="module")
def https_server(tmp_path_factory):
    """A real HTTPS server on 127.0.0.1 (self-signed, as the routers' certificates are to Route 53)."""
    directory = tmp_path_factory.mktemp("tls")
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=router"], check=True, capture_output=True)  # fmt: skip

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/healthz" else 503)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def _check(port: int, path: str) -> Check:
    return Check("c", "us-east-1", "lb.example.net", port, "HTTPS", path, 10, 3)


def test_probe__an_https_2xx_passes_and_a_5xx_or_a_closed_port_fails(https_server):
    new = lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # noqa: E731
    assert probe(new, _check(https_server, "/healthz"), "127.0.0.1")[0]
    ok, what = probe(new, _check(https_server, "/elsewhere"), "127.0.0.1")
    assert not ok and "503" in what
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        closed = spare.getsockname()[1]
    ok, what = probe(new, _check(closed, "/healthz"), "127.0.0.1")
    assert not ok and "ConnectionRefused" in what
