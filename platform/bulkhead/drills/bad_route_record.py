"""bad-route-record: 10,000 fuzzed route records pushed into the registry while HTTP flows (June 2012).

The drill writes the records into the region's etcd as a broken publisher would (each under its own key,
all under one lease of the drill's, so that revoking it removes them), together with valid records that
point at the app's running processes under hosts of the drill's own names. A prober sends HTTPS through
every router the whole time. Goals:
- `http_ok_ratio` >= 0.999 from the first record to the last being dealt with and a little after, over
  at least 300 requests;
- `agent_restarts` == 0: every router agent keeps its pid;
- every router's agent raises its alert and counts every bad record as rejected;
- every valid record injected alongside is in every router's running HAProxy.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Callable
from pathlib import Path

from bulkhead.agents import routes
from bulkhead.drills import agent_report, fuzz_records, workload
from bulkhead.drills.agent_report import ROUTER_STATE, AgentReport, agent_pid, haproxy_servers, state
from bulkhead.drills.common import DrillError, poll_until, stepper
from bulkhead.drills.report import ok_ratio
from bulkhead.ha.reach import Reach

RECORDS = 10_000
VALID = 50
OK_RATIO_GOAL = 0.999
# Seconds every router may take to have dealt with the whole burst.
SETTLE_TIMEOUT = 60
# Requests the ratio is taken over, at the least, and the seconds the drill waits for them after settling.
MIN_REQUESTS = 300
MIN_REQUESTS_TIMEOUT = 60


def live_routes(reach: Reach) -> list[routes.Route]:
    with reach.registry() as registry:
        found, _ = registry.get_prefix(routes.routes_prefix(reach.region))
    live = []
    for key, value in found.items():
        try:
            live.append(routes.parse(key, value, reach.region, {"sample"}))
        except routes.Rejected:
            continue
    if not live:
        raise DrillError(f"no route of the sample app is published in {reach.region}: is the dyno manager running? "
                         f"see `bulkhead apps ps --region {reach.region}`")  # fmt: skip
    return live


def _sent_since(probes, since: float) -> int:
    return sum(1 for attempt in probes.attempts() if attempt.at >= since)


def run(reach: Reach, scratch: Path, on_step: Callable[[str], None] | None = None, records: int = RECORDS,
        valid: int = VALID, project_dir: Path | None = None) -> AgentReport:  # fmt: skip
    report = AgentReport("bad-route-record", reach.region)
    step = stepper(report, on_step)
    routers = agent_report.routers_following(reach)
    targets = live_routes(reach)
    pids = {r.name: agent_pid(reach, r, "router-sync") for r in routers}
    before = {r.name: state(reach, r, ROUTER_STATE).get("records_rejected", 0) for r in routers}
    template = json.loads(targets[0].value())
    bad = fuzz_records.records(template, records)
    good = [routes.Route("sample", f"drill-valid-{n}", t.address, t.port, t.az, time.time())
            for n, t in zip(range(valid), targets * (valid // len(targets) + 1), strict=False)]  # fmt: skip
    step(f"{records} fuzzed records made with hypothesis")
    run_id = f"bad-route-record-{int(time.time())}"
    probes = workload.prober(reach.sandboxes, reach.region, routers, scratch, run_id, pause=0.02)
    try:
        if not probes.wait_for(5, timeout=30):
            raise DrillError("the prober got no answer through the routers before the fault; see "
                             f"{probes.log}")  # fmt: skip
        step("prober running")
        fault_at = time.time()
        with reach.registry() as registry:
            lease = registry.grant(600)
            prefix = routes.routes_prefix(reach.region)
            writes = [(f"{prefix}sample/fuzz-{n}:{5000 + n % 1000}", value) for n, value in enumerate(bad)]
            writes += [(route.key(reach.region), route.value()) for route in good]
            writes.sort(key=lambda item: hash(item[0]))  # the valid ones among the bad, not after them
            # A burst, as a broken publisher would send: a hundred records to a transaction, four at a time.
            batches = [writes[n : n + 100] for n in range(0, len(writes), 100)]
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                list(pool.map(lambda batch: registry.put_many(batch, lease=lease), batches))
            step(f"{len(writes)} records written to the registry")
            wanted = {f"app_sample/{route.server}" for route in good}

            def settled() -> bool:
                for router in routers:
                    figures = state(reach, router, ROUTER_STATE)
                    if figures.get("records_rejected", 0) - before[router.name] < records or figures.get("pending"):
                        return False
                return all(wanted <= haproxy_servers(reach, router) for router in routers)

            settled_s = poll_until(settled, SETTLE_TIMEOUT)
            settled_at = time.time()
            step("every router rejected the bad records and applied the valid ones" if settled_s is not None
                 else f"the routers had not dealt with every record after {SETTLE_TIMEOUT} s")  # fmt: skip
            # Traffic keeps flowing over the new table, at least 2 s and until the window holds enough requests
            # for its ratio to mean something (a fast run had 96 over the whole burst).
            poll_until(lambda: time.time() >= settled_at + 2 and _sent_since(probes, fault_at) >= MIN_REQUESTS,
                       MIN_REQUESTS_TIMEOUT, interval=0.5)  # fmt: skip
            traffic_until = time.time()
            after = {r.name: state(reach, r, ROUTER_STATE) for r in routers}
            applied = min(len(wanted & haproxy_servers(reach, r)) for r in routers)
            registry.revoke(lease)
        step("the drill's records removed (lease revoked)")
    finally:
        requests = probes.stop()
    ratio = ok_ratio(requests, fault_at, traffic_until)
    sent = len([a for a in requests if fault_at <= a.at <= traffic_until])
    restarts = sum(agent_pid(reach, r, "router-sync") != pids[r.name] for r in routers)
    rejected = min(after[r.name].get("records_rejected", 0) - before[r.name] for r in routers)
    alerts = [r.name for r in routers if after[r.name].get("alert")]
    report.figures = {"http_ok_ratio": ratio, "requests": sent,
                      "records_injected": records, "valid_injected": valid, "records_rejected": rejected,
                      "agent_restarts": restarts, "alert_raised_on": alerts, "valid_applied": applied,
                      "settled_s": None if settled_s is None else round(settled_s, 2),
                      "routers": len(routers)}  # fmt: skip
    report.goal("http_ok_ratio", ratio, f">= {OK_RATIO_GOAL}", ratio is not None and ratio >= OK_RATIO_GOAL)
    report.goal("requests", sent, f">= {MIN_REQUESTS} in the ratio's window", sent >= MIN_REQUESTS)
    report.goal("agent_restarts", restarts, "0", restarts == 0)
    report.goal("records_rejected", rejected, f">= {records} on every router", rejected >= records)
    report.goal("alert_raised", len(alerts), f"{len(routers)} routers", len(alerts) == len(routers))
    report.goal("valid_applied", applied, f"{valid} on every router", applied == valid)
    return report
