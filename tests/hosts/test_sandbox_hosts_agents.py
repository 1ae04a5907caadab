"""The agents on real sandbox hosts: router sync, dyno managers, singleton fencing, the rods and `bulkhead apps`,
the metrics agent and the alarms it feeds, and their drills, each run as `bulkhead drill` runs it, its report's
goals checked and its figures bounded.

Shares the session's site (tests/hosts/conftest.py): one region, two dyno cells. Each drill leaves the site as
it found it (formation, rods, links, mounts), which the next one checks before it starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from bulkhead.agents.routes import Route
from bulkhead.drills import (
    archive_stall,
    bad_route_record,
    boot_storm,
    partition_singleton,
    region_silent,
    rod_flips,
    slow_registry,
)
from bulkhead.drills.agent_report import ROUTER_STATE, haproxy_servers, routers_following, state
from bulkhead.drills.common import poll_until

pytestmark = [pytest.mark.hosts]


@pytest.fixture(scope="module")
def agents(site):
    """Every router agent following the registry, and the sample app's three web processes routed. The CLI (run
    by the drills, and here) finds the session's local cloud and sandboxes through the environment."""
    saved = {name: os.environ.get(name) for name in ("BULKHEAD_LOCAL_DIR", "BULKHEAD_HOSTS_DIR")}
    os.environ["BULKHEAD_LOCAL_DIR"] = str(site.store.directory)
    os.environ["BULKHEAD_HOSTS_DIR"] = str(site.sandboxes.directory)
    try:
        reach = site.reach
        assert poll_until(lambda: _web_routes(site) >= 3, 120) is not None, "the sample app's routes never appeared"
        routers_following(reach)
        yield reach
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _shown(report) -> str:
    """A drill's whole report, for a failed assertion (pytest would cut a dict's repr short: the goal that was
    missed is often in the part cut off)."""
    return json.dumps(report.as_json(), indent=1, default=str)


def _web_routes(site) -> int:
    router = site.of_role("router")[0]
    return sum(1 for s in haproxy_servers(site.reach, router) if s.startswith("app_sample/"))


def _bulkhead(site, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "bulkhead.cli", "--project", str(site.project_dir), *args],
                            capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    if check:
        assert result.returncode == 0, result.stderr[-2000:]
    return result


def test_apps_ps__one_line_per_process_naming_its_app(site, agents):
    lines = _bulkhead(site, "apps", "ps", "--region", site.store_region).stdout.splitlines()
    web = [line for line in lines if line.startswith("sample web.") and " RUNNING on " in line]
    clock = [line for line in lines if line.startswith("sample clock.1 RUNNING on ")]
    assert len(web) == 3 and len(clock) == 1, lines


def test_dyno_manager__a_process_nobody_asked_for_is_stopped(site, agents):
    """Process accounting: a dyno program of an app nobody declared (a phantom) is stopped by the manager."""
    dyno = site.of_role("dyno_host")[0]
    host = site.host(dyno)
    host.run_expect([0], "printf '[program:dyno-phantom-web-1]\\ncommand=/bin/sleep 600\\nautostart=true\\n' "
                         "> /etc/supervisor/conf.d/dyno-phantom-web-1.conf && supervisorctl update")  # fmt: skip
    assert host.run("supervisorctl status dyno-phantom-web-1").stdout.split()[1] in ("STARTING", "RUNNING")
    stopped = poll_until(lambda: "no such process" in host.run("supervisorctl status dyno-phantom-web-1").stdout.lower()
                         or "ERROR" in host.run("supervisorctl status dyno-phantom-web-1").stdout, 20)  # fmt: skip
    assert stopped is not None, host.run("supervisorctl status").stdout
    assert not host.file("/etc/supervisor/conf.d/dyno-phantom-web-1.conf").exists


def test_router_agent__when_haproxy_refuses_every_change_it_keeps_serving_the_last_good_table(site, agents):
    """A fault to a file: the settings a routes file is checked against become unreadable, so no new table can
    be applied. The agent must stay up, read-only, with its alert raised, and HTTP must keep flowing."""
    router = site.of_role("router")[0]
    host = site.host(router)
    before = haproxy_servers(agents, router)
    pid = host.check_output("supervisorctl pid router-sync")
    host.run_expect([0], "chmod 000 /var/lib/bulkhead/router/check.cfg")
    try:
        with agents.registry() as registry:
            lease = registry.grant(60)
            target = bad_route_record.live_routes(agents)[0]
            route = Route("sample", "refused-1", target.address, target.port, target.az, time.time())
            registry.put(route.key(agents.region), route.value(), lease=lease)
            degraded = poll_until(lambda: state(agents, router, ROUTER_STATE).get("mode", "").startswith(
                "read-only (cannot apply"), 15, interval=0.5)  # fmt: skip
            assert degraded is not None, state(agents, router, ROUTER_STATE)
            figures = state(agents, router, ROUTER_STATE)
            assert figures["alert"] and figures["alert_reason"].startswith("cannot apply routes")
            assert haproxy_servers(agents, router) == before
            assert json.loads(host.check_output(f"curl -sfk https://{router.address}/"))["app"] == "sample"
            host.run_expect([0], "chmod 644 /var/lib/bulkhead/router/check.cfg")
            # Retried every 5 s: the route lands without anyone touching the agent.
            applied = poll_until(lambda: f"app_sample/refused-1_{route.port}" in haproxy_servers(agents, router), 15)
            assert applied is not None
            registry.revoke(lease)
    finally:
        host.run("chmod 644 /var/lib/bulkhead/router/check.cfg")
    assert host.check_output("supervisorctl pid router-sync") == pid


@pytest.mark.drill
def test_drill_bad_route_record__10000_fuzzed_records_cost_no_request_and_no_restart(site, agents, tmp_path):
    report = bad_route_record.run(agents, tmp_path, project_dir=site.project_dir)
    figures = report.as_json()
    assert report.passed, _shown(report)
    assert figures["records_injected"] == 10_000 and figures["records_rejected"] >= 10_000
    assert figures["agent_restarts"] == 0 and figures["http_ok_ratio"] >= 0.999
    assert figures["requests"] >= bad_route_record.MIN_REQUESTS


@pytest.mark.drill
def test_drill_rods__each_rod_is_obeyed_within_5_s_and_flipped_back(site, agents, tmp_path):
    report = rod_flips.run(agents, tmp_path, project_dir=site.project_dir)
    assert report.passed, _shown(report)
    for rod in ("router_read_only", "dyno_launch_rate", "app_management_lockdown"):
        assert report.figures[f"{rod}_obeyed_s"] <= 5
    rows = json.loads(_bulkhead(site, "rods", "list", "--region", site.store_region, "--json").stdout)
    assert {r["rod"]: r["value"] for r in rows} == {"api-maintenance": "off", "app-management-lockdown": "off",
                                                    "dyno-launch-rate": "30", "router-read-only": "off"}  # fmt: skip
    history = json.loads(_bulkhead(site, "rods", "history", "router-read-only", "--region", site.store_region,
                                   "--json").stdout)  # fmt: skip
    assert [h["value"] for h in history[-2:]] == ["on", "off"] and "by drill rods at" in history[-1]["note"]


@pytest.mark.drill
def test_drill_partition_singleton__the_second_clock_ticks_only_after_the_first_stopped(site, agents, tmp_path):
    report = partition_singleton.run(agents, tmp_path, project_dir=site.project_dir)
    figures = report.as_json()
    assert report.passed, _shown(report)
    assert figures["new_token"] > figures["old_token"] and figures["gap_s"] > 0
    assert figures["old_stopped_after_s"] < figures["new_first_tick_after_s"]


@pytest.mark.drill
def test_drill_slow_registry__http_flows_memory_stays_bounded_and_routes_converge_in_5_s(site, agents, tmp_path):
    report = slow_registry.run(agents, tmp_path, project_dir=site.project_dir)
    figures = report.as_json()
    assert report.passed, _shown(report)
    assert figures["route_changes"] >= 1500 and figures["converge_s"] <= 5 and figures["agent_rss_max_mb"] <= 150


@pytest.mark.drill
def test_drill_boot_storm__launches_stay_under_the_rod_the_slow_cell_breaks_and_the_backlog_drains(
    site, agents, tmp_path
):
    report = boot_storm.run(agents, tmp_path, project_dir=site.project_dir)
    figures = report.as_json()
    assert report.passed, _shown(report)
    assert 0 < figures["max_launches_per_cell_minute"] <= boot_storm.RATE
    assert figures["other_cell_breaker_opened"] == 0 and figures["drained_s"] is not None


METRICS_STATE = "/var/lib/bulkhead/metrics/state.json"


def test_metrics_agent__every_host_publishes_what_its_tier_has_and_beats(site, agents):
    """Given the site configured, every host's metrics agent has run rounds without a failing source, sent its
    heartbeat to the status account, and published its tier's figures (read back from its state file)."""
    expected = {"router": {"Requests", "Http5xx"}, "postgres": {"EtcdUnhealthyMembers"}, "dyno_host": set()}
    for host in site.sandboxes.recorded():
        waited = poll_until(lambda h=host: (state(agents, h, METRICS_STATE).get("heartbeats") or 0) >= 2, 60)
        assert waited is not None, f"{host.name}: no heartbeat: {state(agents, host, METRICS_STATE)}"
        found = state(agents, host, METRICS_STATE)
        assert found["errors"] == {}, (host.name, found["last_error"])
        assert expected[host.role] <= set(found["last"]), (host.name, found["last"])
    primary = [h for h in site.of_role("postgres") if "WalArchiveLagSeconds" in state(agents, h, METRICS_STATE)["last"]]
    assert len(primary) == 1, "the primary alone publishes its archive lag"


@pytest.mark.drill
def test_drill_archive_stall__the_lag_alarm_pages_within_a_minute_of_evaluation_and_clears(site, agents, tmp_path):
    report = archive_stall.run(agents, tmp_path, project_dir=site.project_dir)
    figures = report.as_json()
    assert report.passed, _shown(report)
    # Never before the lag can pass 60 s; within one publish interval and one evaluation minute after that.
    assert 60 < figures["alarm_s"] < 135 and figures["cleared_s"] is not None and figures["state_now"] == "OK"
    assert "Threshold Crossed" in figures["alarm_reason"]


@pytest.mark.drill
def test_drill_region_silent__the_status_region_pages_while_the_region_s_own_topic_refuses(site, agents, tmp_path):
    report = region_silent.run(agents, tmp_path, project_dir=site.project_dir)
    figures = report.as_json()
    assert report.passed, _shown(report)
    # Two silent periods of 30 s, evaluated every 30 s: not before a minute, within a minute and a half.
    assert figures["region_topic_unreachable"] and 55 < figures["alarm_s"] < 120 and figures["state_now"] == "OK"
