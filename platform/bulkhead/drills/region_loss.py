"""region-loss: a whole region goes dark under its shared databases' writers. Its sandbox hosts are powered
off and its local-cloud endpoint stops answering; then the region-loss runbook restores every database in
the partner region from what S3 replication delivered (paying customers first), Route 53's own health
checks move traffic, and the status site says so. The report has rto_s (first paying database, all),
rows_lost per database against what each writer had acknowledged, priority_inversions, and the DNS
answer before and after.

This drill brings up the two regions' sandbox hosts it needs (the database hosts and one router each)
when they are not up, and leaves them up; the local cloud must be running (`bulkhead local up`).
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from bulkhead import dns, project, runbook, runbook_run, topology
from bulkhead.backup.fleet import Database, write_plan
from bulkhead.backup.fleet_region import RegionFleet
from bulkhead.drills import fleet_report, fleet_workload
from bulkhead.drills.common import DrillError, stepper, wait_until
from bulkhead.hosts import converge, inventory
from bulkhead.hosts.sandbox import HostSpec, Sandboxes
from bulkhead.localcloud import cloud, controller, server
from bulkhead.localcloud.state import Store

DEFAULT_DATABASES = 50
ARCHIVE_TIMEOUT = 10  # seconds: with the replication lag, the bound on rows lost
WRITE_SECONDS = 25  # the writers run this long before the region goes: long enough for WAL to ship
DNS_TIMEOUT = 120


def plan(count: int) -> list[Database]:
    """`count` databases; one in five paying, priorities spread over 1..10 (1 first)."""
    return [Database(f"shared-{i + 1:02d}", 1 + (i * 7) % 10, i % 5 == 0, 0) for i in range(count)]


def regions(project_dir: Path, region: str) -> tuple[str, str, str]:
    """(region, partner, a name Route 53 fails over between them); refused unless the pair has DNS failover."""
    spec = topology.StackFiles(project_dir).spec(topology.GLOBAL_STACK)
    assert isinstance(spec, topology.GlobalSpec)
    pair = (spec.primary_region, spec.secondary_region)
    if region not in pair:
        raise DrillError(f"{region} has no DNS failover partner; lose {spec.primary_region} (or "
                         f"{spec.secondary_region}), the pair the global stack fails over between")  # fmt: skip
    partner = pair[1] if region == pair[0] else pair[0]
    return region, partner, f"{spec.services[0]}.{spec.domain}"


def ensure_hosts(project_dir: Path, wanted_regions: list[str], on_step: Callable[[str], None]) -> None:
    """Each region's database hosts and one router up, powered on, and the routers serving their health."""
    store, sandboxes = Store.of_project(project_dir), Sandboxes.of_project(project_dir)
    info = server.running(store.directory)
    if info is None or controller.running(store.directory) is None:
        raise DrillError("the local cloud is not running; run `bulkhead local up` first")
    for region in wanted_regions:
        cloud.set_on_air(store, region, True)
    wanted: list[HostSpec] = []
    for region in wanted_regions:
        if store.outputs(region) is None:
            raise DrillError(f"region {region} is not deployed locally; run `bulkhead local up --stacks "
                             f"{','.join(wanted_regions)},global`")  # fmt: skip
        specs = inventory.local_hosts(region, store, project_dir)
        wanted += [s for s in specs if s.role == "postgres"] + [s for s in specs if s.role == "router"][:1]
    recorded = {s.name for s in sandboxes.recorded()}
    missing = [s for s in wanted if s.name not in recorded]
    if missing:
        sandboxes.up(missing, s3_port=info.port, fronts=controller.fronts_of(store.directory))
        on_step(f"made {len(missing)} sandbox hosts")
    for spec in wanted:
        if not sandboxes.powered(spec):
            sandboxes.power_on(spec)
    routers = [s for s in wanted if s.role == "router"]
    silent = [r for r in routers if sandboxes.run(r, "curl", "-sfk", "--max-time", "2",
                                                  f"https://{r.address}/healthz").returncode != 0]  # fmt: skip
    if silent:
        path = inventory.write_inventory(sandboxes.recorded(), sandboxes, store)
        extra = converge.extra_vars(silent, sandboxes, store, project_dir)
        done = converge.converge(sandboxes, path, extra, project_dir, "router.yml", ",".join(r.name for r in silent))
        if not done.succeeded:
            raise DrillError(f"configuring the routers failed: {'; '.join(done.failures)}")
        on_step(f"configured {len(silent)} routers")


def answer(project_dir: Path, name: str) -> dns.Answer:
    return dns.answer(dns.route53_client(project_dir), name)


def run(project_dir: Path, region: str, count: int, scratch: Path, on_step: Callable[[str], None] | None = None,
        concurrency: int | None = None) -> fleet_report.RegionLossReport:  # fmt: skip
    region, partner, name = regions(project_dir, region)
    report = fleet_report.RegionLossReport(region, partner, count)
    step = stepper(report, on_step)

    ensure_hosts(project_dir, [region, partner], step)
    wait_until(lambda: answer(project_dir, name).region == region, DNS_TIMEOUT, f"Route 53 answering {region}")
    before = answer(project_dir, name)
    report.dns_before = before.region
    step(f"{name} answers {before.region} {before.role}")
    run_id = f"rl{int(time.time())}"
    prefix, password = f"fleet-{run_id}", secrets.token_urlsafe(16)
    scratch.mkdir(parents=True, exist_ok=True)
    plan_path = scratch / f"{run_id}-plan.yaml"
    databases = plan(count)
    write_plan(plan_path, databases)
    # The databases' password, for whoever checks them after the drill: a file only root reads, never the report.
    password_file = scratch / f"{run_id}-password"
    password_file.touch(mode=0o600)
    password_file.write_text(password + "\n")
    # What an earlier drill left serving under these names goes first: each database here is new.
    for side in (region, partner):
        RegionFleet(project_dir, side).stop(plan_path, drain=False)
    made = RegionFleet(project_dir, region).create(plan_path, databases, prefix, password, ARCHIVE_TIMEOUT)
    step(f"{count} databases made on {len({m['host'] for m in made})} hosts of {region}, each with a base backup")
    targets = [{"name": m["name"], "address": m["address"], "port": m["port"]} for m in made]
    sandboxes = Sandboxes.of_project(project_dir)
    writer = fleet_workload.FleetWriter(sandboxes, region, targets, scratch, password, run_id)
    try:
        if not writer.wait_for(3, [d.name for d in databases], timeout=120):
            raise DrillError(f"the writers did not get going on every database; see {writer.log}")
        time.sleep(WRITE_SECONDS)
        step(f"writers running on every database for {WRITE_SECONDS} s")
        # The region goes dark: its endpoint stops answering and every host loses power at once.
        fault_at = time.time()
        cloud.set_on_air(Store.of_project(project_dir), region, False)
        for host in [s for s in sandboxes.recorded() if s.region == region]:
            sandboxes.power_off(host)
        step(f"{region} lost: its endpoint off the air, its hosts powered off")
        time.sleep(1)
    finally:
        writer.stop()
    acknowledged = writer.acknowledged()
    book = runbook.load(project_dir, "region-loss")
    values = book.resolve({"REGION": region, "PARTNER": partner, "NAME": name, "PLAN": str(plan_path),
                           "PREFIX": prefix, "CONCURRENCY": str(concurrency or os.cpu_count() or 2)})  # fmt: skip
    state = project.state_dir(project_dir, "runbooks")
    log_path = scratch / f"{run_id}-runbook.log"
    with log_path.open("a") as out:
        runner = runbook_run.Runner(book, project_dir, state, confirm=None, out=lambda line: print(line, file=out),
                                    on_step=lambda entry: step(f"runbook {entry['id']}"))  # fmt: skip
        done = runner.run(runbook_run.new_run(book, values))
    restored = _restored(state / f"{done.run_id}-restore.json")
    after = answer(project_dir, name)
    report.dns_after = after.region
    present = fleet_workload.rows_in(sandboxes, partner, [{**t, "address": restored["address"]} for t in targets],
                                     scratch, password, run_id)  # fmt: skip
    step("rows read back in the partner")
    figures = fleet_report.losses(acknowledged, present, fault_at)
    report.rto_s = fleet_report.recovery(restored["databases"], fault_at)
    report.rows_acknowledged = {k: v["acknowledged"] for k, v in figures.items()}
    report.rows_lost = {k: v["lost"] for k, v in figures.items()}
    report.loss_window_s = {k: v["window_s"] for k, v in figures.items()}
    report.priority_inversions = fleet_report.priority_inversions(restored["databases"])
    lag = controller.running(Store.of_project(project_dir).directory).replication_lag
    report.bound_s = ARCHIVE_TIMEOUT + lag
    report.restored = [{k: e.get(k) for k in ("name", "paying", "priority", "started_at", "ready_at", "error")}
                       for e in restored["databases"]]  # fmt: skip
    report.detail = {"run": run_id, "prefix": prefix, "plan": str(plan_path), "runbook_run": done.run_id,
                     "restored_on": restored["host"], "writer_log": str(writer.log),
                     "password_file": str(password_file), "fault_at": fault_at,
                     "runbook_log": str(log_path)}  # fmt: skip
    return report


def _restored(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DrillError(f"the runbook left no restore outcome at {path}: {error}") from None
