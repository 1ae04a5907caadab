"""Benchmark: the tiers' bakes, and a region's hosts booted to serving from the bare image and from baked ones.

Run: .venv/bin/python benchmarks/first_boot.py [--cold-image]
1. `bulkhead image build`: cold (with --cold-image, into an empty cache) and cached.
2. `bulkhead image bake` of the three tiers, at once: cold (into an images directory of its own) and again
   (every AMI exists: nothing to do).
3. eu-west-1's hosts (all 9) booted with `hosts up --from-image`, twice, each in a fresh local cloud: from the
   bare Debian image (`bulkhead:imageSource=base`) and from the baked AMIs (`baked`). From that command: a
   router's /healthz answering, the app answering through it, the primary accepting writes, the standby
   streaming; the whole region is the last of these.
The package caches are as the machine has them: run it twice for the warm figures the goals are stated for.
Goals (the issue's): router serving < 60 s and the whole region < 180 s (from baked images); three tiers
baked cold < 8 min, cached < 5 s. Each row gives its ratio to its goal.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bulkhead import project
from bulkhead.hosts import image
from bulkhead.hosts.sandbox import Sandboxes

PROJECT_DIR = project.find(start=Path(__file__).parent)
REGION = "eu-west-1"
GOALS = {"router": 60.0, "region": 180.0, "bake cold": 480.0, "bake cached": 5.0}
CHECKS = ("router /healthz answering", "app answering through the router", "primary accepting writes",
          "standby streaming")  # fmt: skip


def bulkhead(env: dict, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "bulkhead.cli", "--project", str(PROJECT_DIR), *args], env=env,
                            capture_output=True, text=True, check=False, timeout=3600)  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"bulkhead {' '.join(args)} exited {result.returncode}: {result.stderr[-2000:]}")
    return result


def boot_region(env: dict, sandboxes: Sandboxes) -> dict[str, float]:
    """Every instance of the region booted from its AMI; seconds from `hosts up` to each check passing."""
    started = time.monotonic()
    bulkhead(env, "hosts", "up", "--from-image", "--region", REGION)
    specs = [s for s in sandboxes.recorded() if s.role != "bake"]
    router = next(s for s in specs if s.role == "router")
    primary = next(s for s in specs if s.tags.get("bulkhead:postgres") == "primary")
    standby = next(s for s in specs if s.tags.get("bulkhead:postgres") == "standby")
    psql = ["runuser", "-u", "postgres", "--", "psql", "-h", "/var/run/postgresql", "-tAc"]
    curl = ["curl", "-sf", "--max-time", "2"]
    write = "CREATE TABLE IF NOT EXISTS bench (x int); INSERT INTO bench VALUES (1)"
    streaming = "SELECT status FROM pg_stat_wal_receiver WHERE status = 'streaming'"
    commands = dict(zip(CHECKS, [(router, [*curl, f"http://{router.address}/healthz"]),
                                 (router, [*curl, f"http://{router.address}/"]), (primary, [*psql, write]),
                                 (standby, [*psql, streaming])], strict=True))  # fmt: skip
    seen: dict[str, float] = {}
    deadline = time.monotonic() + 1500
    while len(seen) < len(commands) and time.monotonic() < deadline:
        for name, (spec, command) in commands.items():
            if name not in seen:
                result = sandboxes.run(spec, *command, timeout=10)
                if result.returncode == 0 and (name != "standby streaming" or "streaming" in result.stdout):
                    seen[name] = time.monotonic() - started
        time.sleep(1)
    seen["whole region serving"] = max(seen.values()) if len(seen) == len(commands) else float("nan")
    # Serving comes before the last boot's final tasks: let every boot finish before counting them.
    while any(sandboxes.boot_result(s) is None for s in specs) and time.monotonic() < deadline:
        time.sleep(2)
    boots = [sandboxes.boot_result(s) for s in specs]
    for spec, boot in zip(specs, boots, strict=True):
        if boot is None or boot["result"] != "ok":
            tail = sandboxes.boot_log(spec).read_text(errors="replace").splitlines()[-12:]
            Console(stderr=True).print(f"{spec.name} ({spec.role}, {spec.az}): {boot}", *tail, sep="\n  | ",
                                       markup=False, highlight=False)  # fmt: skip
    seen[f"first boots ok (of {len(specs)})"] = sum(b is not None and b["result"] == "ok" for b in boots)
    seen["slowest first boot"] = max((b["seconds"] for b in boots if b), default=float("nan"))
    return seen


def local_cloud(base: Path, images_dir: Path, name: str) -> tuple[dict, Sandboxes]:
    directory = base / name
    env = {**os.environ, "BULKHEAD_LOCAL_DIR": str(directory / "local"), "BULKHEAD_HOSTS_DIR": str(directory / "hosts"),
           "BULKHEAD_IMAGES_DIR": str(images_dir)}  # fmt: skip
    return env, Sandboxes(directory / "hosts")


def down(env: dict) -> None:
    for verb in (("hosts", "down"), ("local", "down")):
        subprocess.run([sys.executable, "-m", "bulkhead.cli", "--project", str(PROJECT_DIR), *verb], env=env,
                       capture_output=True, check=False)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold-image", action="store_true", help="also time an image build into an empty cache")
    args = parser.parse_args()
    rows: list[tuple[str, float, float, float | None]] = []  # measure, bare, baked, goal
    settings = image.default_settings()
    if args.cold_image:
        with tempfile.TemporaryDirectory() as cache:
            started = time.monotonic()
            image.build(settings, Path(cache), on_step=lambda step: None)
            rows.append(("image build, cold", time.monotonic() - started, float("nan"), None))
    image.build(settings, on_step=lambda step: None)
    started = time.monotonic()
    image.build(settings, on_step=lambda step: None)
    rows.append(("image build, cached", time.monotonic() - started, float("nan"), None))

    base = Path(tempfile.mkdtemp(prefix="bulkhead-bench-first-boot-"))
    images_dir = base / "images"
    figures: dict[str, dict[str, float]] = {}
    try:
        # The bare image's boots, and the bakes in the same local cloud (their AMIs outlive it).
        env, sandboxes = local_cloud(base, images_dir, "bare")
        try:
            bulkhead(env, "local", "up", "--stacks", REGION, "--config", "bulkhead:imageSource=base")
            for label, goal in (("bake cold", GOALS["bake cold"]), ("bake cached", GOALS["bake cached"])):
                started = time.monotonic()
                bulkhead(env, "image", "bake", "--region", REGION)
                rows.append((f"three tiers baked, {label.split()[1]}", float("nan"), time.monotonic() - started, goal))
            figures["bare"] = boot_region(env, sandboxes)
        finally:
            down(env)
        env, sandboxes = local_cloud(base, images_dir, "baked")
        try:
            bulkhead(env, "local", "up", "--stacks", REGION, "--config", "bulkhead:imageSource=baked")
            figures["baked"] = boot_region(env, sandboxes)
        finally:
            down(env)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    for name in figures["bare"]:
        goal = GOALS["router"] if name.startswith("router") else GOALS["region"] if name.startswith("whole") else None
        rows.append((name, figures["bare"][name], figures["baked"].get(name, float("nan")), goal))
    table = Table(title=f"first boots of {REGION}'s 9 hosts, from the bare image and from baked ones")
    for column in ("measure", "bare (s)", "baked (s)", "goal (s)", "baked / goal"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    for name, bare, baked, goal in rows:
        table.add_row(name, f"{bare:.1f}", f"{baked:.1f}", f"{goal:.0f}" if goal else "",
                      f"{baked / goal:.2f}" if goal else "")  # fmt: skip
    Console().print(table)


if __name__ == "__main__":
    main()
