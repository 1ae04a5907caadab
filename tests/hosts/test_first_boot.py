"""Hosts that boot from the bare Debian 12 image through their own user data, as on EC2.

One region of the local cloud; one router, one dyno host in another AZ, and both database hosts are
booted from the image (`bulkhead hosts up --from-image`), each running the user data the program gave
it: Ansible from PyPI, `ansible-pull` of this checkout's HEAD over the fabric's git server, facts from
the metadata service and SSM. Then the platform must work. Bad input runs against its own local cloud.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest

from bulkhead.hosts import image
from bulkhead.hosts.sandbox import Sandboxes
from bulkhead.localcloud import server
from bulkhead.localcloud.aws import LOCAL_CREDENTIALS
from bulkhead.localcloud.state import Store

pytestmark = pytest.mark.hosts
REGION = "eu-west-1"
# Five hosts booting at once through cold package caches (a fresh machine) took over 900 s here; warm, 3-5 min.
BOOT_TIMEOUT = 1500
BACKUP_INTERVAL = 30


class Region:
    """A local cloud and its image-booted sandboxes, driven through the command line as an operator would."""

    def __init__(self, project_dir: Path, base: Path) -> None:
        self.project_dir = project_dir
        # Its own images: a bake here is always made afresh, never found from an earlier run on this machine.
        self.env = {**os.environ, "BULKHEAD_LOCAL_DIR": str(base / "local"), "BULKHEAD_HOSTS_DIR": str(base / "hosts"),
                    "BULKHEAD_IMAGES_DIR": str(base / "images")}  # fmt: skip
        self.images = base / "images"
        self.sandboxes = Sandboxes(base / "hosts")
        self.store = Store(base / "local")

    def bulkhead(self, *args: str, check: bool = True, timeout: float = BOOT_TIMEOUT) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [sys.executable, "-m", "bulkhead.cli", "--project", str(self.project_dir), *args],
            env=self.env, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        if check and result.returncode != 0:
            pytest.fail(f"bulkhead {' '.join(args)} exited {result.returncode}: {result.stderr[-3000:]}")
        return result

    def start(self, *args: str) -> subprocess.Popen:
        """A bulkhead command left running (its output read when it is awaited)."""
        return subprocess.Popen([sys.executable, "-m", "bulkhead.cli", "--project", str(self.project_dir), *args],
                                env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip

    def instances(self) -> list[dict]:
        """Running instances with a role, from the local cloud's EC2 API."""
        info = server.running(self.store.directory)
        ec2 = boto3.client("ec2", endpoint_url=info.endpoint, region_name=REGION, **LOCAL_CREDENTIALS)
        found = ec2.describe_instances(Filters=[{"Name": "instance-state-name", "Values": ["running"]}])
        return [i for r in found["Reservations"] for i in r["Instances"]]

    def pick(self, role: str, az: str | None = None, postgres: str | None = None) -> dict:
        for instance in self.instances():
            tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
            if tags.get("bulkhead:role") != role or (postgres and tags.get("bulkhead:postgres") != postgres):
                continue
            if az is None or instance["Placement"]["AvailabilityZone"] == az:
                return instance
        raise AssertionError(f"no {role} instance in {az}")

    def run(self, name: str, *command: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.bulkhead("hosts", "exec", name, "--", *command, check=False, timeout=timeout)

    def spec(self, name: str):
        return next(s for s in self.sandboxes.recorded() if s.name == name)

    def archive(self) -> dict:
        """The archive bucket's keys, each with when it was written."""
        info = server.running(self.store.directory)
        bucket = self.store.outputs(REGION)["archiveBucket"]
        s3 = boto3.client("s3", endpoint_url=info.endpoint, region_name=REGION, **LOCAL_CREDENTIALS)
        return {o["Key"]: o["LastModified"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}

    def down(self) -> None:
        if getattr(self, "bake", None) is not None and self.bake.poll() is None:
            self.bake.kill()
            self.bake.wait()
        self.bulkhead("hosts", "down", check=False, timeout=120)
        self.bulkhead("local", "down", check=False, timeout=120)
        shutil.rmtree(self.images, ignore_errors=True)


@pytest.fixture(scope="module")
def base_image():
    """The base image, built once per machine (a cached build returns at once)."""
    built, _ = image.build(image.default_settings(), on_step=lambda step: None)
    return built


@pytest.fixture(scope="module")
def booted(project_dir, base_image, tmp_path_factory):
    region = Region(project_dir, tmp_path_factory.mktemp("first-boot"))
    try:
        region.bulkhead("local", "up", "--stacks", REGION, "--config",
                        f"bulkhead:baseBackupIntervalSeconds={BACKUP_INTERVAL}", timeout=300)  # fmt: skip
        zones = sorted({i["Placement"]["AvailabilityZone"] for i in region.instances()})
        chosen = {
            "router": region.pick("router", zones[0])["InstanceId"],
            "dyno_host": region.pick("dyno_host", zones[1])["InstanceId"],
            "primary": region.pick("postgres", zones[0], postgres="primary")["InstanceId"],
            "standby": region.pick("postgres", zones[1], postgres="standby")["InstanceId"],
            # Every member: etcd settles its cluster version (and Patroni its API) only once all have joined.
            "standby2": region.pick("postgres", zones[2], postgres="standby")["InstanceId"],
        }
        region.bulkhead("hosts", "up", "--from-image", "--region", REGION, "--only", ",".join(chosen.values()))
        # The router tier's bake (the tests of `baked`) installs beside the five first boots, as it would on AWS,
        # and a router from its image boots as soon as it is there: beside the first boots' end, not after it.
        region.bake = region.start("image", "bake", "--region", REGION, "--tier", "router", "--json")
        region.baked_launch = threading.Thread(target=_launch_from_bake, args=(region,), daemon=True)
        region.baked_launch.start()
        started = time.monotonic()
        # The process gets a minute more than its own timeout: boots slower than BOOT_TIMEOUT then fail the boot
        # test with `hosts wait`'s own account of each host, instead of erroring every test of the module.
        waited = region.bulkhead("hosts", "wait", "--json", "--timeout", str(BOOT_TIMEOUT), check=False,
                                 timeout=BOOT_TIMEOUT + 60)  # fmt: skip
        region.chosen = chosen
        region.boots = json.loads(waited.stdout or "[]")
        region.boot_seconds = time.monotonic() - started
        region.wait_result = waited
        yield region
    finally:
        region.down()


def test_first_boot__every_tier_finishes_its_user_data(booted):
    assert booted.wait_result.returncode == 0, booted.wait_result.stderr[-3000:]
    assert sorted(b["role"] for b in booted.boots) == ["dyno_host", "primary", "router", "standby", "standby"]
    assert all(b["result"] == "ok" and b["seconds"] > 0 for b in booted.boots)


def test_first_boot__http_through_the_router_reaches_the_app_in_another_az(booted):
    """The dyno manager launches the app once it settles and publishes its route; the router's agent applies it
    (within a minute of both boots ending)."""
    router = booted.spec(booted.chosen["router"])
    deadline = time.monotonic() + 60
    while True:
        answer = booted.run(router.name, "curl", "-sfk", "--max-time", "10", f"https://{router.address}/")
        if answer.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert answer.returncode == 0, answer.stderr
    body = json.loads(answer.stdout)
    assert body["host"] == booted.chosen["dyno_host"]
    assert body["az"] != router.az


def test_first_boot__a_row_written_on_the_primary_is_read_on_the_standby(booted):
    psql = ["runuser", "-u", "postgres", "--", "psql", "-h", "/var/run/postgresql", "-v", "ON_ERROR_STOP=1", "-tAc"]
    insert = "CREATE TABLE first_boot (at text); INSERT INTO first_boot VALUES ('booted') RETURNING at"
    written = booted.run(booted.chosen["primary"], *psql, insert)
    assert "booted" in written.stdout.splitlines(), written.stderr
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        read = booted.run(booted.chosen["standby"], *psql, "SELECT at FROM first_boot")
        if read.stdout.strip() == "booted":
            return
        time.sleep(0.5)
    pytest.fail(f"the row did not reach the standby in 20 s: {read.stderr}")


def test_first_boot__wal_lands_in_the_archive_and_base_backups_run_on_schedule(booted):
    primary = booted.chosen["primary"]
    switched = booted.run(primary, "runuser", "-u", "postgres", "--", "psql", "-h", "/var/run/postgresql", "-tAc",
                          "SELECT pg_walfile_name(pg_switch_wal())")  # fmt: skip
    segment = switched.stdout.strip()
    deadline = time.monotonic() + 60
    while not any(key.endswith(f"/{segment}.lz4") for key in booted.archive()) and time.monotonic() < deadline:
        time.sleep(1)
    assert any(key.endswith(f"/{segment}.lz4") for key in booted.archive()), f"{segment} was not archived in 60 s"
    # The stack sets the schedule short: the first backup at once (there was none), the next one interval later.
    deadline = time.monotonic() + 3 * BACKUP_INTERVAL
    while time.monotonic() < deadline:
        taken = sorted(when for key, when in booted.archive().items() if key.endswith("/backup.info"))
        if len(taken) >= 2:
            break
        time.sleep(2)
    assert len(taken) >= 2, (
        f"{len(taken)} base backups within {3 * BACKUP_INTERVAL} s of a {BACKUP_INTERVAL} s schedule"
    )
    assert (taken[1] - taken[0]).total_seconds() >= BACKUP_INTERVAL - 5, "the second backup came before it was due"


@pytest.mark.parametrize(
    ("role", "installed"),
    [
        ("router", ["usr/sbin/haproxy", "usr/bin/supervisord", "opt/bulkhead/ansible/bin/ansible-pull",
                    "opt/bulkhead/barman/bin/bulkhead"]),
        ("dyno_host", ["usr/bin/supervisord", "srv/bulkhead/apps/sample/app.py", "opt/bulkhead/barman/bin/bulkhead"]),
        ("primary", ["usr/lib/postgresql/15/bin/postgres", "opt/bulkhead/barman/bin/bulkhead",
                     "opt/bulkhead/barman/bin/barman-cloud-wal-archive"]),
        ("standby", ["usr/lib/postgresql/15/bin/postgres", "usr/bin/supervisord"]),
    ],
)  # fmt: skip
def test_first_boot__what_a_role_uses_it_installed_in_the_hosts_own_layer(booted, base_image, role, installed):
    upper = booted.sandboxes.directory / booted.chosen[role] / "layers" / "upper"
    for path in installed:
        assert (upper / path).exists(), f"{path} is not in {role}'s own layer"
        assert not (base_image.root / path).exists(), f"{path} came with the image"


def test_first_boot__a_second_converge_with_nothing_changed_runs_no_play(booted):
    # Given: hosts whose first boot converged and recorded its inputs (the database member read its SSM parameters)
    for host in (booted.chosen["router"], booted.chosen["standby"]):
        # When: each converges again, nothing having changed
        again = booted.run(host, "/usr/local/sbin/bulkhead-converge", timeout=600)
        # Then: it says so and runs no play
        assert again.returncode == 0, again.stderr[-2000:]
        assert "bulkhead-converge: nothing changed since the last converge (commit " in again.stdout, again.stdout
        assert "PLAY RECAP" not in again.stdout


def test_first_boot__a_forced_converge_runs_every_task_and_changes_nothing(booted):
    forced = booted.run(booted.chosen["router"], "/usr/local/sbin/bulkhead-converge", "--force", timeout=600)
    assert forced.returncode == 0, forced.stdout[-2000:]
    recap = forced.stdout.strip().splitlines()
    line = next(line for line in reversed(recap) if line.startswith("localhost"))
    assert " changed=0 " in line, line
    assert "bulkhead-converge: converged commit " in forced.stdout


def test_first_boot__a_database_host_without_an_instance_store_says_so_and_uses_the_root(booted):
    primary = booted.chosen["primary"]
    log = booted.sandboxes.boot_log(booted.spec(primary)).read_text()
    assert f"no instance store on {primary}: PGDATA stays on the root volume" in log
    data = booted.sandboxes.directory / primary / "layers/upper/var/lib/bulkhead/postgresql/15/main"
    assert (data / "PG_VERSION").read_text().strip() == "15"


def test_first_boot__the_host_cli_has_no_controller_dependencies(booted):
    listed = booted.run(booted.chosen["primary"], "/opt/bulkhead/barman/bin/pip", "list", "--format=json")
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "barman" in names and "bulkhead" in names
    assert not names & {"pulumi", "pulumi-aws", "moto"}


# --- a baked image of the router tier, in the same local cloud ---


def _launch_from_bake(region: Region) -> None:
    """Once the router tier's bake ends, a router like the program's, launched from the tier's launch template with
    the baked image instead of the base one, and its first boot started. What it finds (or the exception that
    stopped it) is left in `region.launched` for the `baked` fixture."""
    try:
        try:
            out, err = region.bake.communicate(timeout=BOOT_TIMEOUT)
        except subprocess.TimeoutExpired:
            region.bake.kill()
            pytest.fail(f"the router tier's bake did not end within {BOOT_TIMEOUT} s")
        assert region.bake.returncode == 0, f"bulkhead image bake exited {region.bake.returncode}: {err[-3000:]}"
        (result,) = json.loads(out[out.index("[") :])
        assert result["fresh"] is True, out
        info = server.running(region.store.directory)
        ec2 = boto3.client("ec2", endpoint_url=info.endpoint, region_name=REGION, **LOCAL_CREDENTIALS)
        (image_,) = ec2.describe_images(ImageIds=[result["image_id"]])["Images"]
        router = region.pick("router")
        (template,) = [t for t in ec2.describe_launch_templates()["LaunchTemplates"]
                       if t["LaunchTemplateName"].startswith(f"bulkhead-{REGION}-router-")]  # fmt: skip
        launched = ec2.run_instances(LaunchTemplate={"LaunchTemplateId": template["LaunchTemplateId"]},
                                     ImageId=image_["ImageId"], SubnetId=router["SubnetId"], MinCount=1,
                                     MaxCount=1)["Instances"][0]  # fmt: skip
        region.bulkhead("hosts", "up", "--from-image", "--region", REGION, "--only", launched["InstanceId"])
        region.launched = {"result": result, "image": image_, "instance": launched["InstanceId"], "ec2": ec2}
    except BaseException as error:  # pytest.fail's outcome too: the fixture raises it again
        region.launched = error


@pytest.fixture(scope="module")
def baked(booted):
    """The router tier baked (`bulkhead image bake`, started beside the first boots), then a router launched from its
    AMI (as soon as the bake ended) and booted."""
    booted.baked_launch.join(timeout=BOOT_TIMEOUT + 120)
    launched = getattr(booted, "launched", None)
    if isinstance(launched, BaseException):
        raise launched
    assert launched is not None, "the router tier's bake and the launch from it did not end"
    waited = booted.bulkhead("hosts", "wait", "--json", "--timeout", "600", check=False, timeout=660)
    return {**launched, "waited": waited,
            "again": booted.bulkhead(
                "image", "bake", "--region", REGION, "--tier", "router", "--json", timeout=300)}  # fmt: skip


def test_bake__the_router_tiers_image_is_named_for_its_install_inputs_encrypted_and_tagged(booted, baked):
    image_ = baked["image"]
    tags = {t["Key"]: t["Value"] for t in image_.get("Tags", [])}
    digest = tags["bulkhead:installDigest"]
    assert image_["Name"] == f"bulkhead-router-{digest}" and image_["State"] == "available"
    assert tags["bulkhead:tier"] == "router"
    commit = subprocess.run(["git", "-C", str(booted.project_dir), "rev-parse", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()  # fmt: skip
    assert tags["bulkhead:commit"] == commit
    assert all(m["Ebs"]["Encrypted"] for m in image_["BlockDeviceMappings"] if "Ebs" in m)
    # The bake left nothing of its own behind: its instance is terminated and its sandbox gone
    (reservation,) = baked["ec2"].describe_instances(InstanceIds=[baked["result"]["instance_id"]])["Reservations"]
    assert reservation["Instances"][0]["State"]["Name"] == "terminated"
    assert baked["result"]["instance_id"] not in {s.name for s in booted.sandboxes.recorded()}


def test_bake__a_second_bake_of_the_same_inputs_does_nothing(baked):
    (again,) = json.loads(baked["again"].stdout[baked["again"].stdout.index("[") :])
    assert again["image_id"] == baked["result"]["image_id"] and again["fresh"] is False
    assert "already baked (nothing to do)" in baked["again"].stdout


def test_bake__a_router_booted_from_it_installs_nothing_and_serves(booted, baked):
    assert baked["waited"].returncode == 0, baked["waited"].stderr[-3000:]
    spec = booted.spec(baked["instance"])
    log = booted.sandboxes.boot_log(spec).read_text()
    # Its own boot's part of the log: the image carries the bake's
    own = log[log.rindex(f"first boot of {spec.name} at ") :]
    assert "baked image: " in own and "its install part is in place" in own
    for download in ("apt-get", "Get:", "Collecting ", "Downloading ", "pip install"):
        assert download not in own, f"the boot from the baked image ran {download!r}"
    assert "bulkhead-converge: converged commit " in own
    # It is its own host: fresh host keys, its own facts
    keys = booted.run(spec.name, "cat", "/etc/ssh/ssh_host_ed25519_key.pub")
    bake_layer = booted.images / baked["image"]["ImageId"] / "layer"
    assert not list((bake_layer / "etc/ssh").glob("ssh_host_*")), "the image carries the bake's host keys"
    assert keys.returncode == 0 and keys.stdout.startswith("ssh-ed25519 ")
    facts = json.loads(booted.run(spec.name, "cat", "/etc/bulkhead/host.json").stdout)
    assert facts["bulkhead_instance_id"] == spec.name
    # And it serves: HAProxy answers on 443 (with the dyno host's app, or 503 while it has no route to one)
    answer = booted.run(spec.name, "curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
                        f"https://{spec.address}/")  # fmt: skip
    assert answer.stdout.strip() in ("200", "503"), (answer.stdout, answer.stderr)


# --- bad input, in a local cloud of its own ---


@pytest.fixture(scope="module")
def broken(project_dir, base_image, tmp_path_factory):
    region = Region(project_dir, tmp_path_factory.mktemp("broken-boot"))
    try:
        region.bulkhead("local", "up", "--stacks", REGION, "--ansible-ref", "no-such-ref", timeout=300)
        yield region
    finally:
        region.down()


def test_bad_input__user_data_that_fails_is_reported_with_the_host_and_its_log(broken):
    router = broken.pick("router")["InstanceId"]
    broken.bulkhead("hosts", "up", "--from-image", "--region", REGION, "--only", router)
    waited = broken.bulkhead("hosts", "wait", "--timeout", "600", check=False)
    assert waited.returncode == 1
    assert f"{router} (router" in waited.stderr
    assert "first boot failed" in waited.stderr
    assert "no-such-ref" in waited.stderr  # the tail of the boot log shows git's complaint


def test_bad_input__a_metadata_service_that_does_not_answer_times_out_clearly(broken):
    daemon = Sandboxes(Path(broken.env["BULKHEAD_HOSTS_DIR"])).helpers().get("fabric-daemon")
    if daemon is None:
        broken.bulkhead(
            "hosts", "up", "--from-image", "--region", REGION, "--only", broken.pick("router")["InstanceId"]
        )
        daemon = Sandboxes(Path(broken.env["BULKHEAD_HOSTS_DIR"])).helpers()["fabric-daemon"]
    dyno = broken.pick("dyno_host")["InstanceId"]
    os.kill(daemon, signal.SIGSTOP)  # it accepts connections and never answers
    try:
        broken.bulkhead("hosts", "up", "--from-image", "--region", REGION, "--only", dyno, "--metadata-timeout", "3")
        deadline = time.monotonic() + 30
        while broken.sandboxes.boot_result(broken.spec(dyno)) is None and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        os.kill(daemon, signal.SIGCONT)
    result = broken.sandboxes.boot_result(broken.spec(dyno))
    assert result is not None and (result["result"], result["exit"]) == ("failed", 1)
    assert 3 <= result["seconds"] <= 10
    log = broken.sandboxes.boot_log(broken.spec(dyno)).read_text()
    assert "the metadata service at 169.254.169.254 did not answer within 3 s" in log


def test_bad_input__a_missing_image_is_refused_with_the_command_to_run(broken, tmp_path):
    empty_cache = {**broken.env, "BULKHEAD_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-m", "bulkhead.cli", "--project", str(broken.project_dir), "hosts", "up", "--from-image"],
        env=empty_cache, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "no image at" in result.stderr and "run `bulkhead image build`" in result.stderr


def test_bad_input__a_corrupt_image_is_refused_with_the_command_to_run(broken, base_image, tmp_path):
    cache = tmp_path / "cache"
    (cache / "images").mkdir(parents=True)
    copy = image.Image(cache / "images" / base_image.path.name, base_image.digest)
    # Hard links, not a copy of the whole image (minutes here): the one file changed is unlinked and written anew,
    # so the image it was linked to stays as it was.
    linked = subprocess.run(["cp", "-al", str(base_image.path), str(copy.path.parent)], check=False)
    if linked.returncode != 0:  # the cache on another filesystem than the test's directory
        shutil.rmtree(copy.path, ignore_errors=True)
        subprocess.run(["cp", "-a", str(base_image.path), str(copy.path.parent)], check=True)
    status = copy.root / "var/lib/dpkg/status"
    tampered = status.read_text() + "\nPackage: tampered\n"
    status.unlink()
    status.write_text(tampered)
    result = subprocess.run(
        [sys.executable, "-m", "bulkhead.cli", "--project", str(broken.project_dir), "hosts", "up", "--from-image"],
        env={**broken.env, "BULKHEAD_CACHE": str(cache)}, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert "was changed after it was built" in line and line.endswith("run `bulkhead image build`")
