"""The local cloud's CloudFront: each distribution served at a local address from its origin bucket.

moto keeps distributions and invalidations but serves nothing. Here each distribution gets an HTTP
server on 127.0.0.1 that answers GET and HEAD from its S3 origin, as CloudFront with the
CachingOptimized policy does: the object's own `Cache-Control: max-age` is its time in the cache,
`/` is the default root object, and an invalidation (`CreateInvalidation`, seen within a second)
drops the paths it names. Responses say `X-Cache: Hit|Miss from cloudfront` and their `Age`.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import botocore.exceptions

log = logging.getLogger("bulkhead.local.distributions")
_MAX_AGE = re.compile(r"max-age=(\d+)")
# CachingOptimized's bounds on an object's time in the cache, and its default when the object sets none.
MIN_TTL, DEFAULT_TTL = 1, 86400
_ORIGIN = re.compile(r"^(?P<bucket>[a-z0-9.-]+)\.s3(?:[.-](?P<region>[a-z0-9-]+))?\.amazonaws\.com$")


def ttl_of(cache_control: str | None) -> int:
    """Seconds an object stays cached: its max-age, at least MIN_TTL; DEFAULT_TTL when it sets none."""
    found = _MAX_AGE.search(cache_control or "")
    return max(MIN_TTL, int(found.group(1))) if found else DEFAULT_TTL


def origin_of(domain: str) -> tuple[str, str | None]:
    """(bucket, region) of an S3 origin's domain name (the region is None for the global endpoint)."""
    found = _ORIGIN.match(domain)
    if not found:
        raise ValueError(f"{domain} is not an S3 origin")
    region = found.group("region")
    return found.group("bucket"), (None if region in (None, "external-1") else region)


@dataclass
class _Cached:
    body: bytes
    headers: dict[str, str]
    stored: float
    ttl: int


@dataclass
class Distribution:
    """One distribution's local edge: its cache and the server answering from it."""

    id: str
    domain: str
    bucket: str
    default_root: str
    fetch: Callable[[str, str], tuple[bytes, dict[str, str]] | None]
    port: int = 0
    invalidations: set[str] = field(default_factory=set)
    _cache: dict[str, _Cached] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, path: str) -> tuple[int, bytes, dict[str, str]]:
        key = self.default_root if path in ("", "/") else path.lstrip("/")
        now = time.time()
        with self._lock:
            cached = self._cache.get(key)
        if cached and now - cached.stored < cached.ttl:
            age = str(int(now - cached.stored))
            return 200, cached.body, {**cached.headers, "Age": age, "X-Cache": "Hit from cloudfront"}
        found = self.fetch(self.bucket, key)
        if found is None:
            return 404, b"Not Found", {"Content-Type": "text/plain", "X-Cache": "Error from cloudfront"}
        body, headers = found
        with self._lock:
            self._cache[key] = _Cached(body, headers, now, ttl_of(headers.get("Cache-Control")))
        return 200, body, {**headers, "X-Cache": "Miss from cloudfront"}

    def invalidate(self, paths: Sequence[str]) -> None:
        with self._lock:
            for path in paths:
                if path.endswith("*"):
                    prefix = path.lstrip("/")[:-1]
                    for key in [k for k in self._cache if k.startswith(prefix)]:
                        del self._cache[key]
                else:
                    self._cache.pop(path.lstrip("/") or self.default_root, None)

    def serve(self) -> None:
        distribution = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "CloudFront"

            def log_message(self, format: str, *args) -> None:
                pass

            def _answer(self, with_body: bool) -> None:
                code, body, headers = distribution.get(self.path.split("?", 1)[0])
                self.send_response(code)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if with_body:
                    self.wfile.write(body)

            def do_GET(self) -> None:
                self._answer(True)

            def do_HEAD(self) -> None:
                self._answer(False)

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True, name=f"cloudfront-{self.id}").start()
        log.info("distribution served", extra={"distribution": self.id, "port": self.port, "bucket": self.bucket})


class Edge:
    """Every distribution of every account it is given, served locally and kept in step with invalidations."""

    def __init__(self, client: Callable[[str, str, str | None], object], roles: Sequence[str | None],
                 reachable: Callable[[str], bool]) -> None:  # fmt: skip
        self.client = client
        self.roles = list(roles)
        self.reachable = reachable
        self.distributions: dict[str, Distribution] = {}

    def _fetcher(self, role: str | None, region: str):
        def fetch(bucket: str, key: str) -> tuple[bytes, dict[str, str]] | None:
            if not self.reachable(region):
                return None
            try:
                found = self.client("s3", region, role).get_object(Bucket=bucket, Key=key)
            except botocore.exceptions.ClientError:
                return None
            headers = {"Content-Type": found.get("ContentType") or "application/octet-stream"}
            if found.get("CacheControl"):
                headers["Cache-Control"] = found["CacheControl"]
            return found["Body"].read(), headers

        return fetch

    def tick(self) -> None:
        for role in self.roles:
            cloudfront = self.client("cloudfront", "us-east-1", role)
            for item in cloudfront.list_distributions().get("DistributionList", {}).get("Items", []):
                distribution = self.distributions.get(item["Id"]) or self._add(role, item)
                if distribution:
                    self._invalidations(cloudfront, distribution)

    def _add(self, role: str | None, item: dict) -> Distribution | None:
        try:
            bucket, region = origin_of(item["Origins"]["Items"][0]["DomainName"])
        except (ValueError, IndexError, KeyError):
            return None
        config = self.client("cloudfront", "us-east-1", role).get_distribution_config(Id=item["Id"])
        root = config["DistributionConfig"].get("DefaultRootObject") or "index.html"
        fetch = self._fetcher(role, region or "us-east-1")
        distribution = Distribution(item["Id"], item["DomainName"], bucket, root, fetch)
        distribution.serve()
        self.distributions[item["Id"]] = distribution
        return distribution

    def _invalidations(self, cloudfront, distribution: Distribution) -> None:
        listed = cloudfront.list_invalidations(DistributionId=distribution.id).get("InvalidationList", {})
        for summary in listed.get("Items", []):
            if summary["Id"] in distribution.invalidations:
                continue
            batch = cloudfront.get_invalidation(DistributionId=distribution.id, Id=summary["Id"])
            distribution.invalidate(batch["Invalidation"]["InvalidationBatch"]["Paths"].get("Items", []))
            distribution.invalidations.add(summary["Id"])

    def as_json(self) -> dict:
        return {d.id: {"domain": d.domain, "bucket": d.bucket, "url": f"http://127.0.0.1:{d.port}/"}
                for d in self.distributions.values()}  # fmt: skip
