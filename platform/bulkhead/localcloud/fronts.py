"""One endpoint per region before the moto server, so that a drill can take a region off the air.

Every region's clients (its sandbox hosts' VPC endpoint, the operator's clients for that region) reach
moto through the region's front, a TCP relay on 127.0.0.1. A region taken off the air stops
answering: its listening socket closes, so new connections are refused, and every connection in
flight is cut, as when a region's endpoints fail. Brought back, it listens on the same port again.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading

from bulkhead.hosts.fabric import pump

log = logging.getLogger("bulkhead.local.fronts")


class RegionFront:
    """127.0.0.1:`port` relayed to moto at 127.0.0.1:`target_port`, for as long as the region is on the air."""

    def __init__(self, region: str, target_port: int, port: int = 0) -> None:
        self.region = region
        self.target_port = target_port
        self.port = port
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def reachable(self) -> bool:
        return self._listener is not None

    def start(self) -> None:
        """Listen (again, on the same port once it has one) and serve until `stop`."""
        with self._lock:
            if self._listener is not None:
                return
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(256)
            self.port = listener.getsockname()[1]
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True, name=f"front-{self.region}").start()
        log.info("region front on the air", extra={"region": self.region, "port": self.port})

    def stop(self) -> None:
        """Off the air: refuse new connections and cut every one in flight."""
        with self._lock:
            listener, self._listener = self._listener, None
            cut, self._connections = self._connections, set()
        if listener is None:
            return
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        for connection in cut:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()
        log.info("region front off the air", extra={"region": self.region, "cut": len(cut)})

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            if self._listener is None:  # went off the air while connecting
                client.close()
                upstream.close()
                return
            self._connections.update((client, upstream))
        back = threading.Thread(target=pump, args=(upstream, client), daemon=True)
        back.start()
        pump(client, upstream)
        back.join()
        with self._lock:
            self._connections.difference_update((client, upstream))
        client.close()
        upstream.close()
