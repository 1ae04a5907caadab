"""The decisions of backup and restore, with no S3, PostgreSQL or process: plain values in, plain values out."""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path

import pytest

from bulkhead.backup import decisions, wal
from bulkhead.backup.catalog import Backup, backup_from_info
from bulkhead.backup.restore import RestoreJob, restore_fleet
from bulkhead.backup.settings import Archive, BackupError
from bulkhead.backup.store import StoredObject

pytestmark = pytest.mark.unit
UTC = dt.UTC


def _backup(backup_id: str, end: str | None, status: str = "DONE", begin_wal: str = "000000010000000000000004",
            end_wal: str = "000000010000000000000005") -> Backup:  # fmt: skip
    end_time = dt.datetime.fromisoformat(end) if end else None
    return Backup(backup_id, status, end_time, end_time, begin_wal, end_wal)


BACKUPS = [
    _backup("20261120T030000", "2026-11-20T03:10:00+00:00"),
    _backup("20261121T030000", "2026-11-21T03:10:00+00:00"),
    _backup("20261122T030000", None, status="FAILED"),
    _backup("20261123T030000", "2026-11-23T03:10:00+00:00", status="STARTED"),
]


def test_choose_backup__latest_is_the_newest_finished_one():
    assert decisions.choose_backup(BACKUPS, None).backup_id == "20261121T030000"


def test_choose_backup__a_point_in_time_takes_the_newest_that_ended_before_it():
    target = dt.datetime(2026, 11, 21, 3, 9, tzinfo=UTC)
    assert decisions.choose_backup(BACKUPS, target).backup_id == "20261120T030000"
    assert decisions.choose_backup(BACKUPS, dt.datetime(2026, 11, 21, 3, 10, tzinfo=UTC)).backup_id == "20261121T030000"


def test_choose_backup__a_time_before_every_backup_names_the_oldest():
    with pytest.raises(BackupError, match=r"^no backup ended before 2026-11-19T00:00:00\+00:00; the oldest ended at "
                                          r"2026-11-20T03:10:00\+00:00$"):  # fmt: skip
        decisions.choose_backup(BACKUPS, dt.datetime(2026, 11, 19, tzinfo=UTC))


def test_choose_backup__no_finished_backup_says_how_to_take_one():
    with pytest.raises(
        BackupError, match=r"^the archive holds no finished backup; take one with `bulkhead db backup`$"
    ):
        decisions.choose_backup(BACKUPS[2:], None)


def _verification(missing: str | None, last: str | None, later: int = 0, unreadable=()) -> decisions.Verification:
    backup = _backup("B1", "2026-11-21T03:10:00+00:00")
    continuity = wal.Continuity(backup.begin_wal, last, missing, later)
    return decisions.Verification(backup, continuity, list(unreadable))


def test_problem__none_when_every_segment_is_there_and_readable():
    verification = _verification(None, "000000010000000000000009")
    assert verification.ok and verification.problem() is None


@pytest.mark.parametrize(
    ("missing", "last", "unreadable", "expected"),
    [
        pytest.param("000000010000000000000004", None, (),
                     "WAL 000000010000000000000004, where backup B1 begins, is missing: it cannot be restored",
                     id="the-backup-start"),
        pytest.param("000000010000000000000005", "000000010000000000000004", (),
                     "WAL 000000010000000000000005 is missing inside backup B1 (it needs 000000010000000000000004.."
                     "000000010000000000000005): it cannot be restored", id="inside-the-backup"),
        pytest.param("000000010000000000000008", "000000010000000000000007", (),
                     "WAL 000000010000000000000008 is missing (3 later segments are stranded); a restore from backup "
                     "B1 can reach the end of WAL 000000010000000000000007", id="after-the-backup"),
        pytest.param(None, "000000010000000000000009", ("000000010000000000000006",),
                     "WAL 000000010000000000000006 cannot be read back (corrupt); restore to a time before them",
                     id="corrupt"),
    ],
)  # fmt: skip
def test_problem__says_what_is_wrong_and_how_far_a_restore_reaches(missing, last, unreadable, expected):
    assert _verification(missing, last, later=3, unreadable=unreadable).problem() == expected


def test_restore_blocker__a_gap_after_the_backup_stops_latest_but_not_a_point_in_time():
    gap = _verification("000000010000000000000008", "000000010000000000000007", later=3)
    assert gap.problem().startswith("WAL 000000010000000000000008 is missing")
    assert decisions.restore_blocker(gap, None) == gap.problem()
    assert decisions.restore_blocker(gap, dt.datetime(2026, 11, 21, 4, tzinfo=UTC)) is None


def test_restore_blocker__a_gap_the_backup_needs_stops_every_restore():
    inside = _verification("000000010000000000000005", "000000010000000000000004")
    assert decisions.restore_blocker(inside, dt.datetime(2026, 11, 21, 4, tzinfo=UTC)) == inside.problem()
    start = _verification("000000010000000000000004", None)
    assert decisions.restore_blocker(start, dt.datetime(2026, 11, 21, 4, tzinfo=UTC)) == start.problem()
    assert decisions.restore_blocker(_verification(None, "000000010000000000000009"), None) is None


def test_uploaded_bytes__counts_only_objects_new_since_the_backup_started():
    earlier = {"pg/srv/base/OLD/data.tar.lz4", "pg/srv/base/OLD/backup.info"}
    now = [
        StoredObject("pg/srv/base/OLD/data.tar.lz4", 900, "a"),
        StoredObject("pg/srv/base/OLD/backup.info", 9, "b"),
        StoredObject("pg/srv/base/NEW/data.tar.lz4", 120, "c"),
        StoredObject("pg/srv/base/NEW/16384.tar.lz4", 30, "d"),
    ]
    assert decisions.uploaded_bytes(earlier, now) == 150


BACKUP_INFO = b"""backup_label='START WAL LOCATION: 0/4000028 (file 000000010000000000000004)'
backup_name=None
begin_offset=40
begin_time=2026-11-21 03:00:01.123456+00:00
begin_wal=000000010000000000000004
begin_xlog=0/4000028
end_offset=312
end_time=2026-11-21 03:10:02.654321+00:00
end_wal=000000010000000000000005
end_xlog=0/5000138
error=None
status=DONE
timeline=1
version=150010
xlog_segment_size=67108864
"""


def test_backup_from_info__barman_fields_with_their_zone_and_the_segment_size():
    backup = backup_from_info("20261121T030001", BACKUP_INFO)
    assert backup == Backup(
        backup_id="20261121T030001",
        status="DONE",
        begin_time=dt.datetime(2026, 11, 21, 3, 0, 1, 123456, tzinfo=UTC),
        end_time=dt.datetime(2026, 11, 21, 3, 10, 2, 654321, tzinfo=UTC),
        begin_wal="000000010000000000000004",
        end_wal="000000010000000000000005",
        segment_size=64 * 2**20,
    )


def test_backup_from_info__an_unfinished_backup_has_no_end():
    backup = backup_from_info("X", b"status=STARTED\nbegin_wal=000000010000000000000004\nend_time=None\n")
    assert (backup.status, backup.end_time, backup.end_wal, backup.segment_size) == ("STARTED", None, "", 16 * 2**20)


# --- the fleet's scheduling, with a stand-in for the restore itself (the postgres tests run real ones) ---


def _jobs(priorities: list[int]) -> list[RestoreJob]:
    archive = Archive("s3://fleet/pg", "pg-fleet")
    return [RestoreJob(archive, Path(f"/restore/db{i}"), priority=p) for i, p in enumerate(priorities)]


def test_restore_fleet__more_jobs_than_workers_start_in_priority_order_and_never_exceed_the_bound():
    jobs = _jobs([300, 10, 200, 10, 100, 50, 400])
    started: list[str] = []
    running, most = 0, 0
    lock = threading.Lock()

    def restore_one(job: RestoreJob):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.02 * (int(job.target.name[2:]) % 3 + 1))  # unequal durations, so workers interleave
        with lock:
            running -= 1

    outcomes = restore_fleet(jobs, concurrency=3, on_start=lambda job: started.append(job.target.name),
                             restore_one=restore_one)  # fmt: skip
    # Priorities 10, 10, 50, 100, 200, 300, 400; equals keep the order given (db1 before db3).
    assert started == ["db1", "db3", "db5", "db4", "db2", "db0", "db6"]
    assert [o.job.target.name for o in outcomes] == started
    assert most == 3


def test_restore_fleet__an_error_of_any_type_stays_in_its_job():
    def restore_one(job: RestoreJob):
        if job.target.name == "db0":
            raise PermissionError(13, "Operation not permitted", str(job.target))
        if job.target.name == "db1":
            raise BackupError("the archive holds no finished backup; take one with `bulkhead db backup`")
        return _backup("B", "2026-11-21T03:10:00+00:00")

    outcomes = {o.job.target.name: o for o in restore_fleet(_jobs([1, 2, 3]), concurrency=2, restore_one=restore_one)}
    assert outcomes["db0"].error == "PermissionError: [Errno 13] Operation not permitted: '/restore/db0'"
    assert outcomes["db1"].error == "the archive holds no finished backup; take one with `bulkhead db backup`"
    assert outcomes["db2"].error is None and outcomes["db2"].backup.backup_id == "B"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("newest_age", "expected"),
    [(None, 0.0), (0, 3600.0), (600, 3000.0), (3600, 0.0), (7200, 0.0)],
)
def test_seconds_until_due__waits_out_the_interval_from_the_newest_backup(newest_age, expected):
    now = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
    newest = None if newest_age is None else now - dt.timedelta(seconds=newest_age)
    assert decisions.seconds_until_due(newest, 3600, now) == expected
