"""The fabric's PyPI cache under hosts that boot together through a cold cache: every one of them gets the
file from the cache, none is sent to the index itself (which a sandbox cannot reach).

The index is a stand-in on 127.0.0.1 that serves one package's simple page and a slow wheel, and counts the
wheel's downloads. The cache is `bulkhead.hosts.pip_cache` as the fabric runs it; plain proxpi is run beside
it to show that the test sees the failure (a redirect to the index).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import http.client
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bulkhead.localcloud.server import free_port

pytestmark = pytest.mark.unit
WHEEL = "sample-1.0-py3-none-any.whl"
CONTENT = os.urandom(256 * 1024)
HOSTS = 8


class _Index(BaseHTTPRequestHandler):
    downloads = 0
    lock = threading.Lock()

    def log_message(self, format, *args) -> None:
        pass

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(CONTENT)))
        self.end_headers()

    def do_GET(self) -> None:
        port = self.server.server_address[1]
        if self.path.rstrip("/") == "/simple/sample":
            digest = hashlib.sha256(CONTENT).hexdigest()
            body = f'<html><body><a href="http://127.0.0.1:{port}/files/{WHEEL}#sha256={digest}">{WHEEL}</a>'.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
        elif self.path == f"/files/{WHEEL}":
            with _Index.lock:
                _Index.downloads += 1
            time.sleep(1.0)  # slower than the moment in which the hosts ask
            body = CONTENT
            self.send_response(200)
        else:
            body = b""
            self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def index():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Index)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Index.downloads = 0
    yield f"http://127.0.0.1:{server.server_address[1]}/simple/"
    server.shutdown()


@contextlib.contextmanager
def _cache(command: list[str], index_url: str, tmp_path):
    port = free_port()
    environment = {**os.environ, "PROXPI_INDEX_URL": index_url, "PROXPI_CACHE_DIR": str(tmp_path / "cache"),
                   "PROXPI_DOWNLOAD_TIMEOUT": "600", "PROXPI_LOGGING_LEVEL": "WARNING"}  # fmt: skip
    process = subprocess.Popen([*command, "--port", str(port)], env=environment, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            time.sleep(0.1)
        _get(port, "/index/sample/")  # the page is cached first, as pip asks for it before the file
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def _get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def _hosts_at_once(port: int) -> list[tuple[int, bytes]]:
    barrier = threading.Barrier(HOSTS)

    def one() -> tuple[int, bytes]:
        barrier.wait()
        return _get(port, f"/index/sample/{WHEEL}")

    with concurrent.futures.ThreadPoolExecutor(HOSTS) as pool:
        return list(pool.map(lambda _: one(), range(HOSTS)))


def test_pip_cache__hosts_asking_for_one_file_at_once_all_get_it_and_it_is_downloaded_once(index, tmp_path):
    with _cache([sys.executable, "-m", "bulkhead.hosts.pip_cache"], index, tmp_path) as port:
        answers = _hosts_at_once(port)
    assert [status for status, _ in answers] == [200] * HOSTS
    assert all(body == CONTENT for _, body in answers)
    assert _Index.downloads == 1


def test_pip_cache__plain_proxpi_sends_some_of_them_to_the_index(index, tmp_path):
    """What the fix is for, shown on proxpi itself: if this stops failing, proxpi has fixed its race."""
    plain = [sys.executable, "-m", "flask", "--app", "proxpi.server", "run", "--host", "127.0.0.1"]
    redirected = 0
    for attempt in range(5):
        with _cache(plain, index, tmp_path / str(attempt)) as port:
            redirected += sum(status == 302 for status, _ in _hosts_at_once(port))
        if redirected:
            break
    assert redirected > 0
