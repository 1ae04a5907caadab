"""The dyno manager's decisions: desired state, placement, reconciling, the launch window and the breaker."""

from __future__ import annotations

import pytest

from bulkhead.agents import dynos
from bulkhead.agents.dynos import BadDesiredState, Breaker, Desired, Process, Running, placement, reconcile

pytestmark = pytest.mark.unit


def test_parse_desired__reads_a_formation_and_refuses_what_it_cannot_follow():
    assert dynos.parse_desired("sample", '{"formation": {"web": 2, "clock": 1}}') == Desired(
        "sample", {"web": 2, "clock": 1}, 0
    )
    for value, reason in (('{"formation": {"web": -1}}', "web=-1 is not 0-100"),
                          ('{"formation": {"worker": 1}}', "unknown process type 'worker'"),
                          ('{"formation": {"clock": 2}}', "clock is a singleton"),
                          ("{", "is not JSON"), ('{"formation": 3}', "has no formation")):  # fmt: skip
        with pytest.raises(BadDesiredState, match=reason):
            dynos.parse_desired("sample", value)


def test_parse_declaration__the_managers_flag():
    assert dynos.parse_declaration("sample:web=3,clock=1").formation == {"web": 3, "clock": 1}
    with pytest.raises(BadDesiredState, match="give APP:TYPE=N"):
        dynos.parse_declaration("sample:web=many")


def test_placement__deals_every_process_once_over_the_hosts_whatever_their_order():
    desired = [Desired("sample", {"web": 4, "clock": 1}), Desired("billing", {"web": 2})]
    plan = placement(desired, ["h3", "h1", "h2"])
    assert plan == placement(desired, ["h1", "h2", "h3"])
    dealt = sorted(p for processes in plan.values() for p in processes)
    assert dealt == sorted([Process("sample", "web", i) for i in range(1, 5)] + [Process("sample", "clock", 1)]
                           + [Process("billing", "web", i) for i in (1, 2)])  # fmt: skip
    for app in ("sample", "billing"):
        counts = [sum(p.app == app for p in processes) for processes in plan.values()]
        assert max(counts) - min(counts) <= 1, (app, plan)  # each app spread evenly
    # Scaling one app moves none of another's processes.
    bigger = placement([Desired("sample", {"web": 9, "clock": 1}), Desired("billing", {"web": 2})], ["h1", "h2", "h3"])
    assert {h: [p for p in ps if p.app == "billing"] for h, ps in bigger.items()} == {
        h: [p for p in ps if p.app == "billing"] for h, ps in plan.items()
    }


def test_program_names__round_trip_and_ignore_other_programs():
    process = Process("sample", "web", 12)
    assert dynos.program_process(process.program) == process
    assert dynos.program_process("dyno-manager") is None and dynos.program_process("haproxy") is None


WEB1, WEB2, CLOCK = Process("sample", "web", 1), Process("sample", "web", 2), Process("sample", "clock", 1)
STRAY = Process("gone", "web", 1)


def test_reconcile__launches_the_missing_replaces_the_crashed_and_stops_the_unasked():
    running = [Running(WEB1, "FATAL"), Running(CLOCK, "RUNNING"), Running(STRAY, "RUNNING"),
               Running(Process("sample", "web", 9), "RUNNING")]  # fmt: skip
    plan = reconcile([WEB1, WEB2, CLOCK], running, {"sample": 0}, lockdown=False)
    assert plan.launch == [WEB2]
    assert plan.replace == [WEB1]
    assert sorted(plan.stop) == sorted([STRAY, Process("sample", "web", 9)])


def test_reconcile__under_lockdown_only_crashes_are_replaced_and_undeclared_apps_stopped():
    running = [Running(WEB1, "EXITED"), Running(Process("sample", "web", 9), "RUNNING"), Running(STRAY, "RUNNING"),
               Running(CLOCK, "RUNNING", restarts=0)]  # fmt: skip
    plan = reconcile([WEB1, WEB2, CLOCK], running, {"sample": 1}, lockdown=True)
    assert plan.launch == [] and plan.replace == [WEB1]
    assert plan.stop == [STRAY]  # web.9 is a voluntary move, and the restart of clock.1 waits too


def test_reconcile__a_restart_generation_stops_the_older_processes():
    plan = reconcile([WEB1], [Running(WEB1, "RUNNING", restarts=0)], {"sample": 1}, lockdown=False)
    assert plan.stop == [WEB1] and plan.launch == []


def test_launch_window__counts_per_minute():
    assert dynos.LaunchWindow.minute(119.9) == 1 and dynos.LaunchWindow.minute(120.0) == 2


def test_breaker__opens_on_slow_boots_probes_after_cooldown_and_closes_on_a_fast_boot():
    breaker = Breaker(slow_s=10, window=3, cooldown_s=30)
    for seconds in (2.0, 12.0, 11.0):
        assert breaker.allows(0)
        breaker.booted(seconds, now=0)
    assert breaker.state == "open" and breaker.opened == 1
    assert not breaker.allows(29.0)
    assert breaker.allows(30.0) and breaker.state == "half-open"
    assert not breaker.allows(30.5)  # one probe at a time
    breaker.booted(15.0, now=40.0)
    assert breaker.state == "open" and breaker.opened == 2
    assert breaker.allows(70.0)
    breaker.booted(1.5, now=72.0)
    assert breaker.state == "closed" and breaker.allows(72.0)


def test_breaker__a_boot_that_times_out_opens_it_at_once():
    breaker = Breaker(slow_s=10, window=3)
    breaker.booted(None, now=5.0)
    assert breaker.state == "open" and not breaker.allows(6.0)


def test_breaker__one_slow_boot_among_fast_ones_does_not_open_it():
    breaker = Breaker(slow_s=10, window=3)
    for seconds in (1.0, 30.0, 1.0, 1.0):
        breaker.booted(seconds, now=0)
    assert breaker.state == "closed"
