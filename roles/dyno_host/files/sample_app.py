"""The sample app every dyno host runs, one process per Procfile line (`python3 app.py web|clock`).

web: answers HTTP with who served it, and logs one JSON object a request.
clock: the app's singleton (run under `bulkhead agent singleton`): ticks every second, logging the fencing
token it holds, so that two copies running at once would show in the logs.
Both write and fsync a boot marker in the app's tmp/ before they start work, as an app unpacking its
slug does: a host whose disk is slow to sync (February 2012) boots them slowly.
"""

import json
import os
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def log(event, **fields):
    entry = {"ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "at": time.time(), "event": event,
             "dyno": os.environ.get("DYNO", ""), **fields}  # fmt: skip
    sys.stdout.write(json.dumps(entry) + "\n")
    sys.stdout.flush()


def boot_marker():
    os.makedirs("tmp", exist_ok=True)
    with open(os.path.join("tmp", f"boot-{os.environ.get('DYNO', 'process')}"), "w") as marker:
        marker.write(str(time.time()))
        marker.flush()
        os.fsync(marker.fileno())


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"app": os.environ["APP_NAME"], "host": os.environ["BULKHEAD_HOST"],
                           "az": os.environ["BULKHEAD_AZ"], "dyno": os.environ.get("DYNO", ""),
                           "path": self.path}).encode()  # fmt: skip
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        log("request", client=self.client_address[0], line=format % args)


def web():
    address = (os.environ.get("BIND", "0.0.0.0"), int(os.environ["PORT"]))
    ThreadingHTTPServer.address_family = socket.AF_INET
    server = ThreadingHTTPServer(address, Handler)
    log("listening", port=address[1])
    server.serve_forever()


def clock():
    token = os.environ.get("FENCING_TOKEN", "")
    while True:
        log("tick", token=token)
        time.sleep(1)


if __name__ == "__main__":
    boot_marker()
    {"web": web, "clock": clock}[sys.argv[1] if len(sys.argv) > 1 else "web"]()
