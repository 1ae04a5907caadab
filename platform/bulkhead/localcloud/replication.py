"""S3 replication, done by the local cloud as AWS does it: moto stores a bucket's replication rules and
copies nothing.

Each new object version in a bucket with an enabled rule is copied to the rule's destination bucket
once it is `lag` seconds old (AWS replicates most objects within seconds, with no upper bound). A
delete marker is replicated only when the rule enables delete-marker replication; a deletion of a
specific version never is. Nothing moves while the source or the destination region is off the air:
what was not yet copied when a region is lost is what its partner does not have.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import botocore.exceptions

log = logging.getLogger("bulkhead.local.replication")


@dataclass(frozen=True)
class Rule:
    """One enabled replication rule of a source bucket."""

    id: str
    priority: int
    prefix: str
    destination: str
    delete_markers: bool
    storage_class: str | None = None


def rules_of(configuration: dict) -> list[Rule]:
    """The enabled rules of a `get_bucket_replication` answer, highest priority first."""
    rules = []
    for raw in configuration.get("Rules", []):
        if raw.get("Status") != "Enabled":
            continue
        selector = raw.get("Filter", {})
        prefix = selector.get("Prefix", selector.get("And", {}).get("Prefix", raw.get("Prefix", "")))
        # A rule written with Filter (V2) replicates delete markers only when it says so; a legacy rule
        # (Prefix at the top) always did.
        markers = raw.get("DeleteMarkerReplication", {}).get("Status", "Enabled" if "Filter" not in raw else "Disabled")
        rules.append(
            Rule(
                raw.get("ID", ""),
                int(raw.get("Priority", 0)),
                prefix or "",
                raw["Destination"]["Bucket"].removeprefix("arn:aws:s3:::"),
                markers == "Enabled",
                raw["Destination"].get("StorageClass"),
            )
        )
    return sorted(rules, key=lambda r: -r.priority)


def rule_for(rules: list[Rule], key: str) -> Rule | None:
    """The rule that governs `key`: the highest-priority rule whose prefix matches it."""
    return next((rule for rule in rules if key.startswith(rule.prefix)), None)


def due(last_modified: datetime, first_seen: float, now: float, lag: float) -> bool:
    """S3's LastModified has whole seconds; the time this controller first listed a version bounds it from
    the other side, so that nothing is copied before it is `lag` seconds old."""
    return now - last_modified.timestamp() >= lag and now - first_seen >= lag


@dataclass
class Figures:
    """What replication did, for `local status` and the drills."""

    copied: int = 0
    markers: int = 0
    pending: int = 0
    last_lag_s: float | None = None
    max_lag_s: float = 0.0
    errors: int = 0

    def as_json(self) -> dict:
        return {
            "copied": self.copied,
            "delete_markers": self.markers,
            "pending": self.pending,
            "last_lag_s": self.last_lag_s,
            "max_lag_s": round(self.max_lag_s, 3),
            "errors": self.errors,
        }


class Replicator:
    """Replicates every bucket of the platform's account, one pass per `tick`.

    Each pass lists the current objects (`list_objects_v2`): moto's `list_object_versions` copies every
    object's data on each call and never frees it (100 MiB per listing of 100 one-MiB objects, which grew
    moto past 20 GiB here). So the current version of each key is replicated, identified by its ETag and
    LastModified: a key rewritten within the lag (barman writes backup.info as STARTED, then DONE) lands
    once, as its newest content, which is what the replica must hold. A key gone from the listing is
    looked up alone: a delete marker on top is replicated when the rule says so; a version deleted for
    good never is.
    """

    CONFIG_TTL = 5.0

    def __init__(self, s3: Callable[[str], object], lag: float, reachable: Callable[[str], bool]) -> None:
        self.s3 = s3  # region -> boto3 S3 client
        self.lag = lag
        self.reachable = reachable
        self.figures = Figures()
        self._done: set[tuple[str, str, str]] = set()  # (bucket, key, etag@last-modified) copied
        self._seen: dict[tuple[str, str, str], float] = {}
        self._present: dict[str, set[str]] = {}  # per bucket, the keys of the previous pass
        self._buckets: dict[str, tuple[str, list[Rule]]] = {}
        self._read_at = float("-inf")  # never read: the first pass reads, however soon after boot
        self._lock = threading.Lock()

    def _configurations(self, now: float) -> dict[str, tuple[str, list[Rule]]]:
        if now - self._read_at < self.CONFIG_TTL:
            return self._buckets
        client = self.s3("us-east-1")
        buckets = {}
        for bucket in client.list_buckets().get("Buckets", []):
            name = bucket["Name"]
            try:
                region = client.get_bucket_location(Bucket=name).get("LocationConstraint") or "us-east-1"
                rules = rules_of(client.get_bucket_replication(Bucket=name)["ReplicationConfiguration"])
            except botocore.exceptions.ClientError:
                continue  # no replication configuration (or gone since the listing)
            buckets[name] = (region, rules)
        for name, (region, rules) in buckets.items():
            if name not in self._buckets:
                self._seed(name, region, rules)
        self._buckets, self._read_at = buckets, now
        return buckets

    def _seed(self, bucket: str, region: str, rules: list[Rule]) -> None:
        """A controller that starts again does not copy again what the destination already holds."""
        held: dict[str, set[tuple[str, str]]] = {}
        for item in self._objects(bucket, region, ""):
            rule = rule_for(rules, item["Key"])
            if rule is None:
                continue
            if rule.destination not in held:
                held[rule.destination] = {(o["Key"], o.get("ETag")) for o in self._objects(rule.destination, None, "")}
            if (item["Key"], item.get("ETag")) in held[rule.destination]:
                self._done.add(_identity(bucket, item))
        self._present[bucket] = {item["Key"] for item in self._objects(bucket, region, "")}

    def _objects(self, bucket: str, region: str | None, prefix: str) -> list[dict]:
        client = self.s3(region or "us-east-1")
        found = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            found += page.get("Contents", [])
        return found

    def tick(self, now: float | None = None) -> None:
        """One pass over every replicated bucket."""
        with self._lock:
            now = time.time() if now is None else now
            pending = 0
            for bucket, (region, rules) in self._configurations(now).items():
                if not rules or not self.reachable(region):
                    continue
                pending += self._pass(bucket, region, rules, now)
            self.figures.pending = pending

    def _pass(self, bucket: str, region: str, rules: list[Rule], now: float) -> int:
        listed = {item["Key"]: item for prefix in {rule.prefix for rule in rules}
                  for item in self._objects(bucket, region, prefix)}  # fmt: skip
        pending = 0
        for key, item in listed.items():
            identity = _identity(bucket, item)
            rule = rule_for(rules, key)
            if identity in self._done or rule is None:
                continue
            first_seen = self._seen.setdefault(identity, now)
            destination_region = self._region_of(rule.destination)
            if not due(item["LastModified"], first_seen, now, self.lag) or not self.reachable(destination_region):
                pending += 1
                continue
            try:
                self._copy(bucket, key, rule, destination_region)
            except botocore.exceptions.ClientError as error:
                self.figures.errors += 1
                log.warning("replication failed", extra={"bucket": bucket, "key": key, "error": str(error)})
                pending += 1
                continue
            self._done.add(identity)
            lag = time.time() - max(item["LastModified"].timestamp(), self._seen.pop(identity))
            self.figures.last_lag_s = round(lag, 3)
            self.figures.max_lag_s = max(self.figures.max_lag_s, lag)
        for key in self._present.get(bucket, set()) - set(listed):
            rule = rule_for(rules, key)
            if rule is not None and rule.delete_markers and self._deleted_with_marker(bucket, region, key):
                destination_region = self._region_of(rule.destination)
                if not self.reachable(destination_region):
                    pending += 1
                    listed[key] = {}  # look again next pass
                    continue
                self.s3(destination_region).delete_object(Bucket=rule.destination, Key=key)
                self.figures.markers += 1
        self._present[bucket] = set(listed)
        return pending

    def _deleted_with_marker(self, bucket: str, region: str, key: str) -> bool:
        """The key's newest entry is a delete marker (not a version deleted for good)."""
        answer = self.s3(region).list_object_versions(Bucket=bucket, Prefix=key, MaxKeys=10)
        return any(m["Key"] == key and m.get("IsLatest") for m in answer.get("DeleteMarkers", []))

    def _region_of(self, bucket: str) -> str:
        known = self._buckets.get(bucket)
        if known:
            return known[0]
        return self.s3("us-east-1").get_bucket_location(Bucket=bucket).get("LocationConstraint") or "us-east-1"

    def _copy(self, bucket: str, key: str, rule: Rule, destination_region: str) -> None:
        """Read the object and write it into the destination, with its metadata and a checksum.

        A read and a write rather than CopyObject: an object-locked destination takes only writes that
        carry a checksum, and moto's CopyObject cannot send the one it wants.
        """
        source = self.s3(self._region_of(bucket)).get_object(Bucket=bucket, Key=key)
        extra = {"StorageClass": rule.storage_class} if rule.storage_class else {}
        if source.get("ContentType"):
            extra["ContentType"] = source["ContentType"]
        self.s3(destination_region).put_object(
            Bucket=rule.destination, Key=key, Body=source["Body"].read(), Metadata=source.get("Metadata", {}),
            ChecksumAlgorithm="CRC32", **extra,
        )  # fmt: skip
        self.figures.copied += 1


def _identity(bucket: str, item: dict) -> tuple[str, str, str]:
    return (bucket, item["Key"], f"{item.get('ETag')}@{item['LastModified'].isoformat()}")
