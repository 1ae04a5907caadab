"""The registry: the region's etcd (the one Patroni uses), as the host agents see it.

A thin adapter over etcd3gw (etcd's v3 JSON gateway): it owns the member list, moves to the next member
when one does not answer, and returns plain values. The watch stream is read here rather than through
etcd3gw's Watcher, which drops the end of a stream silently and parses each network chunk as a whole
message: the agents must know when a stream ends, so that they read everything again.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import requests
from etcd3gw.client import Etcd3Client
from etcd3gw.lease import Lease

from bulkhead.errors import BulkheadError

log = logging.getLogger("bulkhead.registry")
CLIENT_PORT = 2379
# Seconds a request may take before the next member is tried.
TIMEOUT = 3.0


class RegistryError(BulkheadError):
    """No member of the registry answered; the message names them."""


@dataclass(frozen=True)
class Event:
    """One change under a watched prefix: a put (value) or a delete (value None), at a revision."""

    key: str
    value: bytes | None
    revision: int


def _b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def _prefix_end(prefix: str) -> str:
    """The first key after every key that starts with `prefix` (etcd's range_end for a prefix)."""
    raw = prefix.encode()
    return _b64(raw[:-1] + bytes([raw[-1] + 1]))


class Registry:
    """The registry's members, tried in turn."""

    def __init__(self, endpoints: list[str], timeout: float = TIMEOUT) -> None:
        """`endpoints`: `host:port` of each member (the port defaults to 2379)."""
        if not endpoints:
            raise RegistryError("no registry endpoints given: pass the etcd members' addresses (--registry)")
        self.endpoints = [e if ":" in e else f"{e}:{CLIENT_PORT}" for e in endpoints]
        self.timeout = timeout
        self._current = 0
        self._lock = threading.Lock()
        self._clients = {e: self._client(e) for e in self.endpoints}

    def _client(self, endpoint: str) -> Etcd3Client:
        host, port = endpoint.rsplit(":", 1)
        client = Etcd3Client(host=host, port=int(port), timeout=self.timeout, api_path="/v3/")
        return client

    def _call(self, operation: Callable[[Etcd3Client], object]):
        """Run `operation` on the current member, then on each other one until one answers."""
        with self._lock:
            start = self._current
        errors = []
        for step in range(len(self.endpoints)):
            index = (start + step) % len(self.endpoints)
            endpoint = self.endpoints[index]
            try:
                result = operation(self._clients[endpoint])
            except Exception as error:  # etcd3gw raises its own errors, requests' and plain ones alike
                errors.append(f"{endpoint}: {str(error)[:120]}")
                continue
            with self._lock:
                self._current = index
            return result
        raise RegistryError(f"no registry member answered ({'; '.join(errors)})")

    # --- keys ---

    def get_prefix(self, prefix: str) -> tuple[dict[str, bytes], int]:
        """Every key under `prefix` with its value, and the registry's revision at that read."""

        def read(client: Etcd3Client):
            return client.post(
                client.get_url("/kv/range"), json={"key": _b64(prefix), "range_end": _prefix_end(prefix)}
            )

        result = self._call(read)
        found = {base64.b64decode(kv["key"]).decode(errors="replace"): base64.b64decode(kv.get("value", ""))
                 for kv in result.get("kvs", [])}  # fmt: skip
        return found, int(result["header"]["revision"])

    def get(self, key: str) -> bytes | None:
        found, _ = self.get_prefix(key)
        return found.get(key)

    def put(self, key: str, value: str | bytes, lease: int | None = None) -> int:
        """Set `key` (under `lease` when given); the revision it made."""

        def write(client: Etcd3Client):
            body = {"key": _b64(key), "value": _b64(value)}
            if lease:
                body["lease"] = lease
            return client.post(client.get_url("/kv/put"), json=body)

        return int(self._call(write)["header"]["revision"])

    def put_many(self, items: list[tuple[str, str | bytes | None]], lease: int | None = None, batch: int = 100) -> None:
        """Set (or, for a None value, delete) many keys, `batch` to a transaction (etcd takes at most 128)."""
        for start in range(0, len(items), batch):
            operations = []
            for key, value in items[start : start + batch]:
                if value is None:
                    operations.append({"request_delete_range": {"key": _b64(key)}})
                else:
                    put = {"key": _b64(key), "value": _b64(value)}
                    if lease:
                        put["lease"] = lease
                    operations.append({"request_put": put})
            body = {"compare": [], "success": operations, "failure": []}
            self._call(lambda client, body=body: client.post(client.get_url("/kv/txn"), json=body))

    def create(self, key: str, value: str | bytes, lease: int | None = None) -> bool:
        """Set `key` only if it does not exist; whether it was set."""

        def create(client: Etcd3Client):
            return client.create(key, value, lease=Lease(lease, client) if lease else None)

        return bool(self._call(create))

    def increment_below(self, key: str, limit: int, lease: int | None = None, attempts: int = 5) -> bool:
        """Add one to the counter at `key` if it is below `limit`, atomically (compare-and-set on the key's
        revision); whether it was added. Concurrent writers retry; after `attempts` lost races, False."""
        for _ in range(attempts):
            result = self._call(lambda client: client.post(client.get_url("/kv/range"), json={"key": _b64(key)}))
            kvs = result.get("kvs", [])
            count = int(base64.b64decode(kvs[0].get("value", "")) or 0) if kvs else 0
            if count >= limit:
                return False
            compare = {"key": _b64(key), "result": "EQUAL"}
            if kvs:
                compare.update(target="MOD", mod_revision=kvs[0]["mod_revision"])
            else:
                compare.update(target="CREATE", create_revision=0)
            put = {"key": _b64(key), "value": _b64(str(count + 1))}
            if lease:
                put["lease"] = lease
            body = {"compare": [compare], "success": [{"request_put": put}], "failure": []}
            if self._call(lambda client, body=body: client.post(client.get_url("/kv/txn"), json=body)).get("succeeded"):
                return True
        return False

    def get_with_revision(self, key: str) -> tuple[bytes | None, int]:
        """A key's value and the revision it was last changed at (0 when absent)."""
        result = self._call(lambda client: client.post(client.get_url("/kv/range"), json={"key": _b64(key)}))
        kvs = result.get("kvs", [])
        return (base64.b64decode(kvs[0].get("value", "")), int(kvs[0]["mod_revision"])) if kvs else (None, 0)

    def replace_at(self, key: str, value: str | bytes, mod_revision: int) -> bool:
        """Set `key` only if it was last changed at `mod_revision`; whether it was set."""
        body = {"compare": [{"key": _b64(key), "result": "EQUAL", "target": "MOD", "mod_revision": mod_revision}],
                "success": [{"request_put": {"key": _b64(key), "value": _b64(value)}}], "failure": []}  # fmt: skip
        return bool(self._call(lambda client: client.post(client.get_url("/kv/txn"), json=body)).get("succeeded"))

    def create_revision(self, key: str) -> int | None:
        """The revision at which `key` was created (a fencing token: it only grows), or None if absent."""
        result = self._call(lambda client: client.post(client.get_url("/kv/range"), json={"key": _b64(key)}))
        kvs = result.get("kvs", [])
        return int(kvs[0]["create_revision"]) if kvs else None

    def delete(self, key: str) -> None:
        self._call(lambda client: client.delete(key))

    # --- leases ---

    def grant(self, ttl: int) -> int:
        """A new lease of `ttl` seconds; its id."""
        return int(self._call(lambda client: client.post(client.get_url("/lease/grant"), json={"TTL": ttl}))["ID"])

    def keep_alive(self, lease: int) -> int:
        """Renew `lease`; the seconds it has left (0 or less: it has expired and its keys are gone)."""
        result = self._call(lambda client: client.post(client.get_url("/lease/keepalive"), json={"ID": lease}))
        return int(result.get("result", {}).get("TTL", 0))

    def revoke(self, lease: int) -> None:
        self._call(lambda client: client.post(client.get_url("/lease/revoke"), json={"ID": lease}))

    # --- watching ---

    def watch_prefix(self, prefix: str, start_revision: int, idle_timeout: float = 8.0) -> Iterator[Event]:
        """Every change under `prefix` from `start_revision` on, as it happens. The iterator ends when the
        stream does (the member went away, the revision was compacted, nothing came for `idle_timeout` s);
        the caller then reads everything again and watches from there. The watch asks for progress
        notifications (every 5 s with the etcd role's settings), so a quiet stream still speaks, and one
        silent for `idle_timeout` is dead: a link that broke without a word."""
        request = {"create_request": {"key": _b64(prefix), "range_end": _prefix_end(prefix),
                                      "start_revision": start_revision, "progress_notify": True}}  # fmt: skip

        def open_stream(client: Etcd3Client):
            response = client.session.post(client.get_url("/watch"), json=request, stream=True,
                                           timeout=(self.timeout, idle_timeout))  # fmt: skip
            response.raise_for_status()
            return response

        response: requests.Response = self._call(open_stream)
        try:
            for line in response.iter_lines(chunk_size=None):
                if not line.strip():
                    continue
                result = json.loads(line).get("result", {})
                if result.get("canceled") or result.get("compact_revision"):
                    log.info("watch ended by the registry", extra={"reason": result.get("cancel_reason", "")})
                    return
                for event in result.get("events", []):
                    kv = event["kv"]
                    value = None if event.get("type") == "DELETE" else base64.b64decode(kv.get("value", ""))
                    yield Event(base64.b64decode(kv["key"]).decode(errors="replace"), value, int(kv["mod_revision"]))
        except (requests.RequestException, ValueError) as error:
            log.debug("watch stream ended", extra={"error": str(error)[:200]})
        finally:
            response.close()
