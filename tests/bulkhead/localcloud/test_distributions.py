"""The local CloudFront's caching rules: an object's max-age is its time at the edge; an invalidation drops it."""

from __future__ import annotations

import pytest

from bulkhead.localcloud import distributions
from bulkhead.localcloud.distributions import Distribution

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("cache_control", "ttl"),
    [("max-age=5", 5), ("public, max-age=300", 300), ("max-age=0", 1), (None, 86400), ("no-store", 86400)],
)
def test_ttl_of__the_objects_max_age_within_the_policys_bounds(cache_control, ttl):
    assert distributions.ttl_of(cache_control) == ttl


def test_origin_of__bucket_and_region_of_an_s3_origin():
    assert distributions.origin_of("status-example-net.s3.ca-central-1.amazonaws.com") == (
        "status-example-net", "ca-central-1")  # fmt: skip
    assert distributions.origin_of("status-example-net.s3.amazonaws.com") == ("status-example-net", None)
    with pytest.raises(ValueError, match="not an S3 origin"):
        distributions.origin_of("example.com")


def test_distribution__serves_from_cache_until_its_max_age_or_an_invalidation():
    origin = {"index.html": b"one"}
    fetched = []

    def fetch(bucket: str, key: str):
        fetched.append(key)
        return (origin[key], {"Content-Type": "text/html", "Cache-Control": "max-age=300"}) if key in origin else None

    edge = Distribution("E1", "d1.cloudfront.net", "status", "index.html", fetch)
    assert edge.get("/")[1] == b"one" and edge.get("/")[2]["X-Cache"] == "Hit from cloudfront"
    origin["index.html"] = b"two"
    assert edge.get("/index.html")[1] == b"one", "cached for its max-age"
    edge.invalidate(["/index.html"])
    assert edge.get("/")[1] == b"two" and fetched == ["index.html", "index.html"]
    assert edge.get("/missing.png")[0] == 404
