"""The ebs-loss drill's failover timeline, from Patroni logs written down by hand."""

from __future__ import annotations

import datetime
import json

import pytest

from bulkhead.drills.ebs_loss import failover_timeline

pytestmark = pytest.mark.unit

FAULT = datetime.datetime(2026, 12, 3, 16, 0, 0, tzinfo=datetime.UTC).timestamp()


def _log(path, *entries):
    lines = ['{"asctime": "2026-12-03 15:59:59,000", "levelname": "INFO", "message": "promoted self to leader by '
             'acquiring session lock"}', "not json: a line PostgreSQL wrote"]  # fmt: skip
    for seconds, message in entries:
        at = datetime.datetime.fromtimestamp(FAULT + seconds, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]
        lines.append(json.dumps({"asctime": at, "levelname": "INFO", "message": message}))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_failover_timeline__keeps_every_change_of_leader_and_each_other_kind_once(tmp_path):
    promoted, idle = (
        "promoted self to leader by acquiring session lock",
        "no action. I am (b), the leader with the lock",
    )
    b = _log(tmp_path / "b.log", (1.5, promoted), (2.0, idle), (3.0, idle),
             (9.0, "demoted self because failed to update leader lock in DCS"), (15.25, promoted),
             (90.0, "Demoting self because x"))  # fmt: skip
    c = _log(tmp_path / "c.log", (4.0, "following a different leader because i am not the healthiest node"))
    events = failover_timeline({"b": b, "c": c}, {}, FAULT)
    assert [(e["s"], e["member"], e["event"].split(" because")[0]) for e in events] == [
        (1.5, "b", "promoted self to leader by acquiring session lock"),
        (2.0, "b", "no action. I am (b), the leader with the lock"),
        (4.0, "c", "following a different leader"),
        (9.0, "b", "demoted self"),
        (15.25, "b", "promoted self to leader by acquiring session lock"),
    ]  # the promotion before the fault and the demotion after the 60 s limit are left out


def test_failover_timeline__reads_from_each_members_offset_and_skips_a_missing_log(tmp_path):
    b = _log(tmp_path / "b.log", (1.0, "promoted self to leader by acquiring session lock"))
    offset = len(b.read_bytes())
    with b.open("a") as stream:
        stream.write(json.dumps({"asctime": "2026-12-03 16:00:05,000", "message": "starting primary after failure"}))
    events = failover_timeline({"b": b, "gone": tmp_path / "gone.log"}, {"b": offset}, FAULT)
    assert events == [{"s": 5.0, "member": "b", "event": "starting primary after failure"}]
