"""partition-singleton: cut the host running the clock (a singleton) off the network, registry included.

The clock ticks once a second under `bulkhead agent singleton`, logging its fencing token. When its host
is cut off, its holder cannot renew the lease and stops it; the registry expires the lease; another
host's manager, no longer counting the cut host, launches the clock, whose holder takes the key with a
larger token. The drill proves from the two processes' own logs that the second copy's first tick came
after the first copy's last tick and after it stopped itself, then reconnects the host and checks that
exactly one copy ticks again. Goals:
- `second_after_first_stopped`: the new copy's first tick after the old copy's stop and last tick;
- `tokens_grow`: the new token is larger than the old;
- `no_overlap`: over the whole drill, no two tokens ever ticked at the same time, on any host;
- `one_copy_after_heal`: after the host is back, one copy ticks.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bulkhead.agents.dyno_manager import managers_prefix
from bulkhead.drills.agent_report import MANAGER_STATE, AgentReport, state
from bulkhead.drills.common import DrillError, poll_until, stepper
from bulkhead.ha.reach import Reach
from bulkhead.hosts.sandbox import HostSpec

CLOCK = "sample clock.1"
CLOCK_LOG = "/var/log/bulkhead/dyno-sample-clock-1.log"
HANDOVER_TIMEOUT = 90


@dataclass(frozen=True)
class Tick:
    host: str
    token: int
    at: float


def parse_log(host: str, text: str) -> tuple[list[Tick], list[dict]]:
    """A clock log's ticks, and its holder's events (acquired, stopped), from its JSON lines."""
    ticks, events = [], []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == "tick" and str(entry.get("token", "")).isdigit():
            ticks.append(Tick(host, int(entry["token"]), float(entry["at"])))
        elif entry.get("event") in ("singleton acquired", "singleton stopped"):
            events.append({**entry, "host": host})
    return ticks, events


def overlaps(ticks: list[Tick]) -> list[tuple[int, int]]:
    """Pairs of tokens whose ticking spans overlap in time (two copies running at once)."""
    spans: dict[int, tuple[float, float]] = {}
    for tick in ticks:
        low, high = spans.get(tick.token, (tick.at, tick.at))
        spans[tick.token] = (min(low, tick.at), max(high, tick.at))
    ordered = sorted(spans.items(), key=lambda item: item[1][0])
    return [(a, b) for (a, (_, a_end)), (b, (b_start, _)) in itertools.pairwise(ordered) if b_start <= a_end]


def _logs(reach: Reach, hosts: list[HostSpec]) -> tuple[list[Tick], list[dict]]:
    ticks, events = [], []
    for host in hosts:
        path = reach.sandboxes.root(host) / CLOCK_LOG.lstrip("/")
        try:
            found = parse_log(host.name, path.read_text(errors="replace"))
        except OSError:
            continue
        ticks += found[0]
        events += found[1]
    return ticks, events


def run(reach: Reach, scratch: Path, on_step: Callable[[str], None] | None = None,
        project_dir: Path | None = None) -> AgentReport:  # fmt: skip
    report = AgentReport("partition-singleton", reach.region)
    step = stepper(report, on_step)
    dynos = reach.of_role("dyno_host")
    holder = next((h for h in dynos if state(reach, h, MANAGER_STATE).get("processes", {}).get(CLOCK) == "RUNNING"),
                  None)  # fmt: skip
    if holder is None:
        raise DrillError(f"no dyno host of {reach.region} runs {CLOCK}; see `bulkhead apps ps --region {reach.region}`")
    started = time.time()
    recent = [t for t in _logs(reach, [holder])[0] if t.at > started - 5]
    if not recent:
        raise DrillError(f"{CLOCK} on {holder.name} has not ticked in 5 s; see {CLOCK_LOG} there")
    old_token = recent[-1].token
    step(f"the clock ticks on {holder.name} with token {old_token}")
    reach.sandboxes.set_link(holder, False)
    fault_at = time.time()
    step(f"{holder.name} cut off")
    others = [h for h in dynos if h.name != holder.name]
    try:
        took = poll_until(lambda: any(t.token > old_token for t in _logs(reach, others)[0]), HANDOVER_TIMEOUT)
        step("another host's clock ticks with a new token" if took is not None else "no other clock ticked")
    finally:
        reach.sandboxes.set_link(holder, True)
    healed_at = time.time()
    step(f"{holder.name} reconnected")
    # Back in the registry, the host's manager takes its share again, which may move the clock back to it:
    # wait for the move to play out, then for one copy ticking alone.
    with reach.registry() as registry:
        poll_until(lambda: registry.get(managers_prefix(reach.region) + holder.name) is not None, 60)
    time.sleep(15)
    settled = poll_until(lambda: _one_copy(reach, dynos, since=time.time() - 5), 90, interval=2.0)
    ticks, events = _logs(reach, dynos)
    ticks = [t for t in ticks if t.at >= started - 5]
    old_ticks = [t for t in ticks if t.token == old_token]
    new_ticks = [t for t in ticks if t.token > old_token and t.host != holder.name and t.at < healed_at]
    stopped = [e for e in events if e["event"] == "singleton stopped" and e.get("token") == old_token]
    old_last = max((t.at for t in old_ticks), default=None)
    old_stop = min((float(e["stopped_at"]) for e in stopped), default=None)
    new_first = min((t.at for t in new_ticks), default=None)
    new_token = min((t.token for t in new_ticks), default=None)
    clash = overlaps(ticks)
    report.figures = {"holder": holder.name, "old_token": old_token, "new_token": new_token,
                      "new_holder": next((t.host for t in new_ticks), None),
                      "old_stopped_after_s": None if old_stop is None else round(old_stop - fault_at, 2),
                      "new_first_tick_after_s": None if new_first is None else round(new_first - fault_at, 2),
                      "gap_s": None if None in (new_first, old_last) else round(new_first - old_last, 2),
                      "overlapping_tokens": clash, "tokens_seen": sorted({t.token for t in ticks}),
                      "healed_one_copy_s": None if settled is None else round(settled, 2)}  # fmt: skip
    report.goal("second_after_first_stopped", report.figures["gap_s"], "> 0 (and after the stop)",
                None not in (new_first, old_last, old_stop) and new_first > max(old_last, old_stop))  # fmt: skip
    report.goal("tokens_grow", new_token, f"> {old_token}", new_token is not None and new_token > old_token)
    report.goal("no_overlap", clash, "none", not clash)
    report.goal("one_copy_after_heal", settled is not None, "within 90 s", settled is not None)
    return report


def _one_copy(reach: Reach, hosts: list[HostSpec], since: float) -> bool:
    tokens = {t.token for t in _logs(reach, hosts)[0] if t.at >= since}
    return len(tokens) == 1
