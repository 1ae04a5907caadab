"""The small helpers every area shares: times, atomic JSON files, S3 compatibility settings."""

from __future__ import annotations

import datetime as dt
import json
import os

import pytest

from bulkhead import clock, files, s3compat

pytestmark = pytest.mark.unit


def test_parse_utc__a_time_without_a_zone_is_utc_and_one_with_a_zone_keeps_it():
    assert clock.parse_utc("2026-11-21T18:30:00") == dt.datetime(2026, 11, 21, 18, 30, tzinfo=dt.UTC)
    plus_one = clock.parse_utc("2026-11-21T19:30:00+01:00")
    assert plus_one.utcoffset() == dt.timedelta(hours=1)
    assert plus_one == dt.datetime(2026, 11, 21, 18, 30, tzinfo=dt.UTC)


def test_parse_utc__garbage_names_the_value_and_an_example():
    with pytest.raises(ValueError, match=r"^'yesterday' is not an ISO 8601 time, e\.g\. 2026-11-21T18:30:00\+00:00$"):
        clock.parse_utc("yesterday")


def test_write_json__replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "state" / "x.json"
    files.write_json(path, {"b": 1, "a": [1, 2]})
    files.write_json(path, {"c": True})
    assert json.loads(path.read_text()) == {"c": True}
    assert os.listdir(path.parent) == ["x.json"]


def test_s3compat__uploads_carry_checksums_responses_checked_when_required_and_aws_untouched():
    assert s3compat.environment("http://127.0.0.1:5000") == {
        "AWS_REQUEST_CHECKSUM_CALCULATION": "when_supported",
        "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
    }
    assert s3compat.client_settings("http://127.0.0.1:5000") == {
        "request_checksum_calculation": "when_supported",
        "response_checksum_validation": "when_required",
    }
    assert s3compat.environment(None) == {} and s3compat.client_settings(None) == {}
