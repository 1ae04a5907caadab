"""The sample app every dyno host runs: answers HTTP with who served it, logs one JSON object a request."""

import json
import os
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"app": os.environ["APP_NAME"], "host": os.environ["BULKHEAD_HOST"],
                           "az": os.environ["BULKHEAD_AZ"], "path": self.path}).encode()  # fmt: skip
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        entry = {"ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "event": "request",
                 "client": self.client_address[0], "line": format % args}  # fmt: skip
        sys.stdout.write(json.dumps(entry) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    address = (os.environ.get("BIND", "0.0.0.0"), int(os.environ["PORT"]))
    ThreadingHTTPServer.address_family = socket.AF_INET
    ThreadingHTTPServer(address, Handler).serve_forever()
