"""Fuzzed route records for the bad-route-record drill, generated at run time with hypothesis.

Every record is wrong in some way a real publisher could get wrong (a field of the wrong type, a huge
value, an unknown app, a port out of range, a name that would break HAProxy's configuration, a truncated
value) or is plain garbage. None can be a valid route: each starts from a valid one and breaks at least
one field with a value no valid record has, or is not a JSON object at all.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# Values no valid record holds in the field they replace.
BAD_VALUES = {
    "app": st.one_of(st.just("nobody"), st.just("sample\n    server evil 1.2.3.4:80"), st.text(max_size=3000),
                     st.integers(), st.none(), st.just("Sample"), st.just("")),
    "host": st.one_of(st.just("evil host"), st.just("a;b"), st.just("x" * 200), st.integers(), st.just("h_1")),
    "address": st.one_of(st.just("127.0.0.1"), st.just("8.8.8.8"), st.just("10.0.0.300"), st.just("::1"),
                         st.just("0.0.0.0"), st.floats(), st.just("10.1.1.1 backup")),
    "port": st.one_of(st.integers(max_value=1023), st.integers(min_value=65536), st.text(max_size=8),
                      st.floats(), st.booleans(), st.none()),
    "az": st.one_of(st.just("us-east-1a"), st.just("moon-1a"), st.integers(), st.text(max_size=5)),
}  # fmt: skip


def _broken(template: dict, field: str, value) -> bytes:
    return json.dumps({**template, field: value}, default=str).encode()


def records(template: dict, count: int, seed: int = 0) -> list[bytes]:
    """`count` bad record values: a template with one field broken, cut short, or garbage."""
    strategy = st.one_of(
        st.sampled_from(sorted(BAD_VALUES)).flatmap(lambda f: BAD_VALUES[f].map(lambda v: _broken(template, f, v))),
        st.integers(min_value=1, max_value=60).map(lambda n: json.dumps(template).encode()[:n]),  # truncated
        st.binary(max_size=4000),  # garbage, sometimes huge
        st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=30),
                     lambda inner: st.lists(inner, max_size=5), max_leaves=20).map(lambda v: json.dumps(v).encode()),
    )  # fmt: skip
    found: list[bytes] = []

    @settings(max_examples=count, database=None, deadline=None, derandomize=seed == 0,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(strategy)
    def collect(value: bytes) -> None:
        found.append(value)

    collect()
    while len(found) < count:  # hypothesis may stop early once it has seen enough: repeat what it made
        found.extend(found[: count - len(found)])
    return found[:count]
