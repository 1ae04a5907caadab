"""A slow link, in userspace: latency and loss between one sandbox's processes and some addresses.

This kernel has no netem qdisc, so the link is slowed by a proxy. The target addresses are made local in
the sandbox's network namespace (on its loopback): from then on, a connection from that sandbox to one
of them reaches the proxy listening there, and the connections already open are reset, as a link that
flaps would reset them. The proxy connects on from the region's fabric (the VPC's bridge), where the
address is the real host. Every chunk is delivered `latency` s after it arrived, in order; with
probability `loss` a chunk waits one retransmission timeout more, which is what a lost segment costs a
TCP stream. Only the one sandbox's links are slowed: every other host still reaches the targets directly.
"""

from __future__ import annotations

import contextlib
import heapq
import random
import socket
import subprocess
import threading
import time

from bulkhead.hosts.fabric import listen_in, socket_in

# What a lost segment costs: Linux's minimum retransmission timeout is 200 ms; a second loss doubles it.
RETRANSMIT_S = 0.4


class _DelayedPipe:
    """One direction of a proxied connection: chunks from `source` reach `sink` after the link's delay."""

    def __init__(self, source: socket.socket, sink: socket.socket, link: SlowLink) -> None:
        self.source, self.sink, self.link = source, sink, link
        self._queue: list[tuple[float, int, bytes]] = []
        self._ready = threading.Condition()
        self._closed = False
        self._due = 0.0
        self._count = 0
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._write, daemon=True).start()

    def _read(self) -> None:
        with contextlib.suppress(OSError):
            while chunk := self.source.recv(65536):
                delay = self.link.latency + (RETRANSMIT_S if self.link.random.random() < self.link.loss else 0.0)
                with self._ready:
                    self._due = max(self._due, time.monotonic() + delay)  # in order, as TCP delivers
                    self._count += 1
                    heapq.heappush(self._queue, (self._due, self._count, chunk))
                    self._ready.notify()
        with self._ready:
            self._closed = True
            self._ready.notify()

    def _write(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._closed:
                    self._ready.wait()
                if not self._queue:
                    break
                due, _, chunk = self._queue[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._ready.wait(wait)
                    continue
                heapq.heappop(self._queue)
            try:
                self.sink.sendall(chunk)
            except OSError:
                break
        with contextlib.suppress(OSError):
            self.sink.shutdown(socket.SHUT_WR)


class SlowLink:
    """The links from network namespace `netns` to `addresses`:`port`, slowed until `stop`."""

    def __init__(self, netns: str, fabric: str, addresses: list[str], port: int, latency: float, loss: float,
                 seed: int = 0) -> None:  # fmt: skip
        self.netns, self.fabric, self.addresses, self.port = netns, fabric, addresses, port
        self.latency, self.loss = latency, loss
        self.random = random.Random(seed)
        self._listeners: list[socket.socket] = []
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        for address in self.addresses:
            subprocess.run(["ip", "-n", self.netns, "addr", "add", f"{address}/32", "dev", "lo"], check=True,
                           capture_output=True, timeout=10)  # fmt: skip
            listener = listen_in(self.netns, address, self.port)
            self._listeners.append(listener)
            threading.Thread(target=self._accept, args=(listener, address), daemon=True).start()

    def _accept(self, listener: socket.socket, address: str) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket_in(self.fabric)
            upstream.settimeout(5)
            try:
                upstream.connect((address, self.port))
            except OSError:
                client.close()
                upstream.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._connections += [client, upstream]
            _DelayedPipe(client, upstream, self)
            _DelayedPipe(upstream, client, self)

    def stop(self) -> None:
        """The link recovers: the proxy stops listening and resets its connections (while their local address
        still exists, so that each end hears of it), then the addresses are remote again."""
        for listener in self._listeners:
            with contextlib.suppress(OSError):
                listener.close()
        with self._lock:
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    connection.close()
            self._connections.clear()
        for address in self.addresses:
            subprocess.run(["ip", "-n", self.netns, "addr", "del", f"{address}/32", "dev", "lo"], check=False,
                           capture_output=True, timeout=10)  # fmt: skip
