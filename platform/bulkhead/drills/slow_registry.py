"""slow-registry: the routers' links to the registry slowed (600 ms each way, 5% of chunks delayed a
retransmission more) while routes churn at 100 changes a second (the 2011 messaging slowdown).

Only the router agents' links are slowed (`link_shaper`): the database members' Patroni and the dyno
managers reach etcd directly, so the slowdown can never cause a database failover, and the drill checks
that none happened. The churn is routes of the drill's own hosts pointing at the app's running
processes, put and deleted in batches of ten, ten times a second. Goals:
- `http_ok_ratio` >= 0.999 through the routers, for the whole slowdown;
- `agent_rss_max_mb` within `MEMORY_BOUND_MB` on every router (the agent coalesces; it never queues);
- `converge_s` <= 5: once the links recover, every router's HAProxy has exactly the registry's routes;
- `no_failover`: the database leader is the one before.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bulkhead.agents import routes
from bulkhead.agents.registry import CLIENT_PORT
from bulkhead.drills import agent_report, workload
from bulkhead.drills.agent_report import ROUTER_STATE, AgentReport, haproxy_servers, state
from bulkhead.drills.bad_route_record import live_routes
from bulkhead.drills.common import DrillError, poll_until, stepper
from bulkhead.drills.link_shaper import SlowLink
from bulkhead.drills.report import ok_ratio
from bulkhead.ha import cluster
from bulkhead.ha.reach import Reach
from bulkhead.hosts.sandbox import fabric_netns

LATENCY_S = 0.6
LOSS = 0.05
CHANGES_PER_S = 100
CHURN_S = 20
CHURN_KEYS = 200
MEMORY_BOUND_MB = 150
CONVERGE_GOAL_S = 5.0


def run(reach: Reach, scratch: Path, on_step: Callable[[str], None] | None = None, project_dir: Path | None = None,
        churn_s: float = CHURN_S) -> AgentReport:  # fmt: skip
    report = AgentReport("slow-registry", reach.region)
    step = stepper(report, on_step)
    routers = agent_report.routers_following(reach)
    targets = live_routes(reach)
    leader_before = cluster.leader(reach.cluster())
    members = [m.address for m in reach.database_hosts]
    fabric = fabric_netns(reach.region, reach.sandboxes.directory)
    links = [SlowLink(r.netns, fabric, members, CLIENT_PORT, LATENCY_S, LOSS, seed=n) for n, r in enumerate(routers)]
    probes = workload.prober(reach.sandboxes, reach.region, routers, scratch, f"slow-registry-{int(time.time())}",
                             pause=0.02)  # fmt: skip
    rss: dict[str, int] = {r.name: 0 for r in routers}
    lag: dict[str, float] = {r.name: 0.0 for r in routers}
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(1.0):
            for router in routers:
                figures = state(reach, router, ROUTER_STATE)
                rss[router.name] = max(rss[router.name], figures.get("rss_bytes", 0))
                lag[router.name] = max(lag[router.name], figures.get("oldest_pending_s", 0.0), figures.get("lag_s", 0))

    changes = 0
    with reach.registry() as registry:
        lease = registry.grant(600)
        try:
            if not probes.wait_for(5, timeout=30):
                raise DrillError(f"the prober got no answer through the routers; see {probes.log}")
            threading.Thread(target=sample, daemon=True).start()
            resyncs = {r.name: state(reach, r, ROUTER_STATE).get("resyncs", 0) for r in routers}
            for link in links:
                link.start()
            slowed_at = time.time()
            step(f"links of {len(routers)} router agents to the registry slowed ({LATENCY_S * 1000:.0f} ms, "
                 f"{LOSS:.0%} loss)")  # fmt: skip
            # A connection open before the slowdown goes silent rather than slow (its packets now reach the
            # proxy's address, locally); each agent finds its watch dead within its idle timeout and watches
            # again, through the slow link. The churn starts once every agent does.
            rewatched = poll_until(lambda: all(state(reach, r, ROUTER_STATE).get("resyncs", 0) > resyncs[r.name]
                                               for r in routers), 30, interval=0.5)  # fmt: skip
            step("every agent watches through the slow link" if rewatched is not None
                 else "not every agent watched again within 30 s")  # fmt: skip
            changes = _churn(registry, reach.region, targets, lease, churn_s)
            step(f"{changes} route changes at {CHANGES_PER_S}/s")
        finally:
            for link in links:
                link.stop()
        recovered_at = time.time()
        step("links recovered")

        def converged() -> bool:
            found, _ = registry.get_prefix(routes.routes_prefix(reach.region))
            wanted = {f"app_sample/{k.rsplit('/', 1)[1].replace(':', '_')}" for k in found if "/sample/" in k}
            return all({s for s in haproxy_servers(reach, r) if s.startswith("app_sample/")} == wanted for r in routers)

        converge_s = poll_until(converged, 60, interval=0.25)
        step("every router has the registry's routes" if converge_s is not None else "the routers did not converge")
        sampling.set()
        time.sleep(1)
        registry.revoke(lease)
    requests = probes.stop()
    leader_after = cluster.leader(reach.cluster())
    ratio = ok_ratio(requests, slowed_at, recovered_at + (converge_s or 0))
    rss_max = max(rss.values()) / 2**20
    report.figures = {"http_ok_ratio": ratio, "requests": sum(1 for a in requests if a.at >= slowed_at),
                      "route_changes": changes, "changes_per_s": round(changes / churn_s, 1),
                      "latency_ms": LATENCY_S * 1000, "loss": LOSS, "agent_rss_max_mb": round(rss_max, 1),
                      "agent_lag_max_s": round(max(lag.values()), 2),
                      "converge_s": None if converge_s is None else round(converge_s, 2),
                      "leader_before": leader_before.host if leader_before else None,
                      "leader_after": leader_after.host if leader_after else None}  # fmt: skip
    report.goal("http_ok_ratio", ratio, ">= 0.999", ratio is not None and ratio >= 0.999)
    report.goal("agent_rss_max_mb", round(rss_max, 1), f"<= {MEMORY_BOUND_MB}", 0 < rss_max <= MEMORY_BOUND_MB)
    report.goal("converge_s", report.figures["converge_s"], f"<= {CONVERGE_GOAL_S:.0f}",
                converge_s is not None and converge_s <= CONVERGE_GOAL_S)  # fmt: skip
    same = leader_before is not None and leader_after is not None and leader_before.host == leader_after.host
    report.goal("no_failover", same, "the database leader unchanged", same)
    return report


def _churn(registry, region: str, targets: list[routes.Route], lease: int, seconds: float) -> int:
    """Put and delete the drill's routes, ten at a time, ten times a second; how many changes were made."""
    rng = random.Random(7)
    present: set[int] = set()
    changes = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        tick = time.monotonic()
        batch = []
        for n in rng.sample(range(CHURN_KEYS), CHANGES_PER_S // 10):
            target = targets[n % len(targets)]
            route = routes.Route("sample", f"drill-churn-{n}", target.address, target.port, target.az, time.time())
            if n in present:
                batch.append((route.key(region), None))
                present.discard(n)
            else:
                batch.append((route.key(region), route.value()))
                present.add(n)
        registry.put_many(batch, lease=lease)
        changes += len(batch)
        time.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))
    return changes
