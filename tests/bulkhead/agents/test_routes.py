"""Route records: which ones a router accepts, fuzzed; the coalescing buffer's bound; merging a batch."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkhead.agents import routes
from bulkhead.agents.routes import Pending, Rejected, Route, merge, parse

pytestmark = pytest.mark.unit
REGION = "eu-west-1"
APPS = frozenset({"sample", "billing"})
GOOD = Route("sample", "i-0abc", "10.20.1.7", 5001, "eu-west-1a", 1700000000.0)


def record(**changes) -> tuple[str, bytes]:
    document = json.loads(GOOD.value()) | changes
    return GOOD.key(REGION), json.dumps(document).encode()


def test_parse__a_good_record_is_the_route_it_describes():
    assert parse(GOOD.key(REGION), GOOD.value(), REGION, APPS) == GOOD


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"port": "5001"}, "port is str, not an integer"),
        ({"port": True}, "port is bool, not an integer"),
        ({"port": 70000}, "port 70000 is outside 1024-65535"),
        ({"port": 80}, "port 80 is outside 1024-65535"),
        ({"app": "nobody"}, "unknown app 'nobody'"),
        ({"app": "sample\n    server evil"}, "is not a valid name"),
        ({"host": "i-0abc x"}, "host 'i-0abc x' is not a valid name"),
        ({"host": "a" * 64}, "is not a valid name"),
        ({"host": 7}, "host is int, not a string"),
        ({"address": "127.0.0.1"}, "address 127.0.0.1 is not a private unicast address"),
        ({"address": "8.8.8.8"}, "is not a private unicast address"),
        ({"address": "10.0.0.300"}, "is not an IPv4 address"),
        ({"az": "us-east-1a"}, "az 'us-east-1a' is not in eu-west-1"),
        ({"at": "yesterday"}, "at is not a finite number"),
    ],
)
def test_parse__a_bad_field_is_rejected_with_its_reason(changes, reason):
    key, value = record(**changes)
    with pytest.raises(Rejected, match=reason.replace("(", r"\(").replace(")", r"\)")):
        parse(key, value, REGION, APPS)


def test_parse__a_truncated_huge_or_non_object_value_is_rejected():
    key, value = record()
    cases = ((value[:-5], "not a JSON document"), (b"x" * 5000, "record of 5000 bytes"), (b"[1, 2]", "a JSON list"),
             (b"\xff\xfe", "not a JSON document"), (b"NaN", "float"))  # fmt: skip
    for bad, reason in cases:
        with pytest.raises(Rejected, match=reason):
            parse(key, bad, REGION, APPS)


def test_parse__a_record_under_another_hosts_key_is_rejected():
    with pytest.raises(Rejected, match="is not the record's own"):
        parse(f"{routes.routes_prefix(REGION)}sample/i-other:5001", GOOD.value(), REGION, APPS)


values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)
fuzzed_records = st.one_of(
    st.binary(max_size=2000),
    st.dictionaries(st.sampled_from(["app", "host", "address", "port", "az", "at", "extra"]), values).map(
        lambda d: json.dumps(d).encode()
    ),
    st.builds(
        lambda field, v: record(**{field: v})[1], st.sampled_from(["app", "host", "address", "port", "az"]), values
    ),
)


@settings(max_examples=600, deadline=None)
@given(key=st.text(max_size=120), value=fuzzed_records)
def test_parse__any_record_is_a_route_or_a_rejection_never_an_error(key, value):
    try:
        route = parse(key, value, REGION, APPS)
    except Rejected as reason:
        assert str(reason)
        return
    # Whatever passes is safe to write into HAProxy's configuration.
    assert routes.APP_NAME.fullmatch(route.app) and routes.HOST_NAME.fullmatch(route.host)
    assert 1024 <= route.port <= 65535 and " " not in route.address


def test_pending__keeps_the_newest_value_per_key_and_refuses_keys_beyond_its_limit():
    pending = Pending(limit=2)
    for n in range(1000):
        assert pending.put("a", str(n).encode())
    assert pending.put("b", None)
    assert not pending.put("c", b"x")
    changes, snapshot, oldest = pending.take()
    assert changes == {"a": b"999", "b": None}
    assert not snapshot and oldest is not None
    assert pending.overflowed == 1 and len(pending) == 0


def test_pending__a_batch_given_back_loses_to_newer_changes():
    pending = Pending(limit=10)
    pending.put("a", b"old")
    batch, snapshot, heard = pending.take()
    pending.put("a", b"new")
    pending.give_back(batch | {"b": b"kept"}, snapshot, heard)
    assert pending.take()[0] == {"a": b"new", "b": b"kept"}


def test_merge__a_bad_update_keeps_the_good_route_and_a_delete_removes_it():
    table = {GOOD.key(REGION): GOOD}
    key, bad = record(port="oops")
    outcome = merge(table, {key: bad}, False, REGION, APPS, limit=100)
    assert outcome.table == table and list(outcome.rejected) == [key]
    outcome = merge(table, {key: None}, False, REGION, APPS, limit=100)
    assert outcome.table == {} and outcome.applied == 1


def test_merge__a_snapshot_replaces_the_table_and_the_limit_holds():
    other = Route("billing", "i-0def", "10.20.2.8", 5002, "eu-west-1b")
    outcome = merge({GOOD.key(REGION): GOOD}, {other.key(REGION): other.value().encode()}, True, REGION, APPS, 100)
    assert outcome.table == {other.key(REGION): other}
    outcome = merge({GOOD.key(REGION): GOOD}, {other.key(REGION): other.value().encode()}, False, REGION, APPS, 1)
    assert outcome.table == {GOOD.key(REGION): GOOD}
    assert outcome.rejected == {other.key(REGION): "the table is full (1 routes)"}
