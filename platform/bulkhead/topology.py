"""The platform's topology: what one region stack or the global stack lays out, validated from config.

Everything here is pure: `infra/__main__.py` reads the raw config values and hands them to
`region_spec` or `global_spec`, which either return a frozen spec the components are built from or
raise `ConfigError` with one line that names the key and the fix. Nothing is created before that.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bulkhead.errors import UsageError

# Regions whose AZ names follow the `<region><letter>` rule; a typo here must fail before any resource.
KNOWN_REGIONS = frozenset(
    {
        "us-east-1", "us-east-2", "us-west-1", "us-west-2",
        "ca-central-1", "sa-east-1",
        "eu-west-1", "eu-west-2", "eu-west-3", "eu-central-1", "eu-central-2", "eu-north-1", "eu-south-1",
        "ap-northeast-1", "ap-northeast-2", "ap-northeast-3", "ap-southeast-1", "ap-southeast-2",
        "ap-south-1", "ap-east-1", "me-south-1", "af-south-1",
    }
)  # fmt: skip
GLOBAL_STACK = "global"
MIN_AZS = 3


class ConfigError(UsageError):
    """A stack's config cannot be deployed; the message is one line naming the key and the fix."""


def _fail(stack: str, key: str, problem: str, fix: str) -> ConfigError:
    return ConfigError(f"stack {stack}: {key} {problem}; {fix}")


# Every key a stack may set: the program reads these, and `local up --config` accepts no other.
REGION_KEYS = (
    "bulkhead:partnerRegion", "bulkhead:availabilityZones", "bulkhead:vpcCidr", "bulkhead:cells",
    "bulkhead:routersPerAz", "bulkhead:routerWarmPool", "bulkhead:dynoHostsPerCellAz",
    "bulkhead:maxConnectionsPerBackend", "bulkhead:routerInstanceType", "bulkhead:dynoInstanceType",
    "bulkhead:postgresInstanceType", "bulkhead:imageOwner", "bulkhead:imageNamePattern", "bulkhead:ansibleRepo",
    "bulkhead:ansibleRef", "bulkhead:imageSource",
    "bulkhead:alertEmail", "bulkhead:alertWebhook", "bulkhead:archiveRetentionDays",
    "bulkhead:baseBackupIntervalSeconds",
    "bulkhead:synchronousCommit", "bulkhead:maximumLagOnFailover", "bulkhead:owner",
)  # fmt: skip
# Where each AZ's database member lives, counted back from the top of its private subnet: fixed, so that
# the etcd members can name their peers before any instance exists, and far from where EC2 (and moto,
# which counts up from the bottom) hands out addresses to the Auto Scaling groups' instances.
DATABASE_ADDRESS_FROM_TOP = 10
GLOBAL_KEYS = (
    "bulkhead:domain", "bulkhead:primaryRegion", "bulkhead:secondaryRegion", "bulkhead:services",
    "bulkhead:stackOrganization", "bulkhead:statusRegion", "bulkhead:statusRoleArn", "bulkhead:statusDomain",
    "bulkhead:owner",
)  # fmt: skip
# Who is paged for a service: every service's resources carry it as their `bulkhead:owner` tag.
DEFAULT_OWNER = "platform-oncall"
# The one role in the status account that the platform may assume (the alerting agent's heartbeat), and
# the only namespace it may write; the policy rules know the role by this name.
HEARTBEAT_ROLE = "bulkhead-heartbeat"
HEARTBEAT_NAMESPACE = "Bulkhead/Heartbeat"
# Each host's metrics agent counts itself in once per publish; the status region's alarm per platform region
# pages when a whole period passes with no host of that region counted.
HEARTBEAT_METRIC = "Heartbeat"


def heartbeat_parameter(region: str) -> str:
    """The SSM parameter that tells a region's hosts where their heartbeat goes ({"roleArn", "region"})."""
    return f"/bulkhead/{region}/heartbeat"


def heartbeat_destination(global_config: Mapping[str, Any]) -> dict[str, str] | None:
    """Where the platform's heartbeats go, from the global stack's file: the status account's heartbeat role and
    the status region; None while the status site has no account of its own (no bulkhead:statusRoleArn)."""
    role, region = global_config.get("bulkhead:statusRoleArn"), global_config.get("bulkhead:statusRegion")
    if not role or not region:
        return None
    account = str(role).split(":")[4]
    return {"roleArn": f"arn:aws:iam::{account}:role/{HEARTBEAT_ROLE}", "region": str(region)}


# The status account's topic: the heartbeat alarms page through it, and `bulkhead status post` announces to it.
STATUS_TOPIC = "bulkhead-status"


@dataclass(frozen=True)
class Subnets:
    """The CIDRs of one AZ: a public subnet (load balancer, NAT) and a private one (every host)."""

    az: str
    public_cidr: str
    private_cidr: str


@dataclass(frozen=True)
class RegionSpec:
    """One region stack, validated."""

    stack: str
    region: str
    partner_region: str
    availability_zones: tuple[str, ...]
    vpc_cidr: str
    cells: int
    routers_per_az: int
    router_warm_pool: int
    dyno_hosts_per_cell_az: int
    max_connections_per_backend: int
    router_instance_type: str
    dyno_instance_type: str
    postgres_instance_type: str
    image_owner: str
    image_name_pattern: str
    ansible_repo: str
    ansible_ref: str
    alert_email: str | None
    archive_retention_days: int
    base_backup_interval_seconds: int
    # Patroni's synchronous_mode (non-strict): an acknowledged commit is on two members.
    synchronous_commit: bool = True
    # Where each tier's AMI comes from: `baked` (`bulkhead image bake`'s, of the install inputs at the deployed
    # commit) or `base` (the Debian image, everything installed at first boot).
    image_source: str = "base"
    # Patroni's maximum_lag_on_failover, in bytes: a replica further behind is never promoted.
    maximum_lag_on_failover: int = 1048576
    owner: str = DEFAULT_OWNER
    # An HTTPS endpoint (a pager's or chat's webhook) subscribed to the region's alarm topic.
    alert_webhook: str | None = None

    def database_members(self) -> dict[str, str]:
        """AZ -> the private address of that AZ's PostgreSQL + etcd member: one per AZ, so losing one keeps a quorum."""
        return {
            subnets.az: str(ipaddress.ip_network(subnets.private_cidr).broadcast_address - DATABASE_ADDRESS_FROM_TOP)
            for subnets in self.subnets()
        }

    def subnets(self) -> list[Subnets]:
        """Split the VPC into sixteen equal blocks: public subnets take the first, private the ninth on."""
        network = ipaddress.ip_network(self.vpc_cidr)
        blocks = list(network.subnets(prefixlen_diff=4))
        return [
            Subnets(az=az, public_cidr=str(blocks[i]), private_cidr=str(blocks[8 + i]))
            for i, az in enumerate(self.availability_zones)
        ]

    @property
    def name(self) -> str:
        """Prefix for every physical name in this stack (buckets, parameters, roles)."""
        return f"bulkhead-{self.region}"

    @property
    def archive_bucket(self) -> str:
        """The WAL archive bucket; its copy in the partner region adds `-replica`."""
        return f"{self.name}-archive"

    @property
    def database_server(self) -> str:
        """The barman server name, which is also the archive prefix the database role may write."""
        return f"pg-{self.region}"


@dataclass(frozen=True)
class GlobalSpec:
    """The global stack, validated."""

    region: str
    domain: str
    primary_region: str
    secondary_region: str
    services: tuple[str, ...]
    stack_organization: str
    status_region: str
    status_role_arn: str | None
    status_domain: str
    owner: str = DEFAULT_OWNER
    # Every region stack: each one's heartbeat is watched from the status region.
    platform_regions: tuple[str, ...] = ()

    def region_stack_name(self, region: str) -> str:
        """The fully qualified name of a region stack, as a StackReference wants it."""
        return f"{self.stack_organization}/bulkhead/{region}"


# --- parsing helpers: every raw value arrives as a string (or None), as `pulumi.Config.get` gives it ---


def _required(stack: str, raw: Mapping[str, Any], key: str) -> str:
    value = raw.get(key)
    if value is None or str(value).strip() == "":
        raise _fail(stack, key, "is missing", f"set it with `pulumi config set {key} VALUE -s {stack}`")
    return str(value).strip()


def _or(raw: Mapping[str, Any], key: str, default: Any) -> Any:
    value = raw.get(key)
    return default if value is None or value == "" else value


def _int(stack: str, key: str, value: Any, minimum: int) -> int:
    try:
        number = int(str(value))
    except ValueError:
        raise _fail(stack, key, f"is {value!r}, not a whole number", f"set a number of at least {minimum}") from None
    if number < minimum:
        raise _fail(stack, key, f"is {number}, below the minimum of {minimum}", f"set it to {minimum} or more")
    return number


def _bool(stack: str, key: str, value: Any) -> bool:
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise _fail(stack, key, f"is {value!r}, not true or false", "set true or false")


def _list(stack: str, key: str, value: Any) -> list[str]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise _fail(stack, key, "is not a list", 'give a YAML list, e.g. ["a", "b", "c"]') from None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _fail(stack, key, "is not a list of strings", 'give a YAML list, e.g. ["a", "b", "c"]')
    return value


def _region(stack: str, key: str, value: str) -> str:
    if value not in KNOWN_REGIONS:
        raise _fail(stack, key, f"is {value!r}, not a known AWS region", "use a region code such as us-east-1")
    return value


def region_spec(stack: str, raw: Mapping[str, Any], peer_cidrs: Mapping[str, str] | None = None) -> RegionSpec:
    """Validate a region stack's raw config; `peer_cidrs` maps every other region stack to its VPC CIDR."""
    region = _region(stack, "aws:region", _required(stack, raw, "aws:region"))
    if region != stack:
        raise _fail(stack, "aws:region", f"is {region} but the stack is named {stack}", f"set it to {stack}")
    partner = _region(stack, "bulkhead:partnerRegion", _required(stack, raw, "bulkhead:partnerRegion"))
    if partner == region:
        raise _fail(
            stack,
            "bulkhead:partnerRegion",
            f"is {partner}, the stack's own region",
            "name another region to hold the backup copy and take failover, e.g. us-west-2",
        )
    zones = _list(stack, "bulkhead:availabilityZones", _required(stack, raw, "bulkhead:availabilityZones"))
    if len(set(zones)) < MIN_AZS:
        raise _fail(
            stack,
            "bulkhead:availabilityZones",
            f"lists {len(set(zones))} distinct AZs",
            f"list at least {MIN_AZS}, e.g. {region}a, {region}b, {region}c",
        )
    if len(set(zones)) != len(zones):
        raise _fail(stack, "bulkhead:availabilityZones", "lists an AZ twice", "list each AZ once")
    for zone in zones:
        if not (zone.startswith(region) and len(zone) == len(region) + 1 and zone[-1].isalpha()):
            raise _fail(stack, "bulkhead:availabilityZones", f"has {zone!r}, not an AZ of {region}", f"use {region}a")
    cidr = _vpc_cidr(stack, _required(stack, raw, "bulkhead:vpcCidr"), peer_cidrs or {})
    return RegionSpec(
        stack=stack,
        region=region,
        partner_region=partner,
        availability_zones=tuple(zones),
        vpc_cidr=cidr,
        cells=_int(stack, "bulkhead:cells", _required(stack, raw, "bulkhead:cells"), minimum=1),
        routers_per_az=_int(stack, "bulkhead:routersPerAz", _or(raw, "bulkhead:routersPerAz", 2), minimum=1),
        router_warm_pool=_int(stack, "bulkhead:routerWarmPool", _or(raw, "bulkhead:routerWarmPool", 2), minimum=0),
        dyno_hosts_per_cell_az=_int(
            stack, "bulkhead:dynoHostsPerCellAz", _or(raw, "bulkhead:dynoHostsPerCellAz", 1), minimum=1
        ),
        max_connections_per_backend=_int(
            stack, "bulkhead:maxConnectionsPerBackend", _or(raw, "bulkhead:maxConnectionsPerBackend", 64), minimum=1
        ),
        router_instance_type=str(raw.get("bulkhead:routerInstanceType") or "c6i.large"),
        dyno_instance_type=str(raw.get("bulkhead:dynoInstanceType") or "m6id.large"),
        postgres_instance_type=str(raw.get("bulkhead:postgresInstanceType") or "m6id.xlarge"),
        image_owner=str(raw.get("bulkhead:imageOwner") or "136693071363"),
        image_name_pattern=str(raw.get("bulkhead:imageNamePattern") or "debian-12-amd64-*"),
        ansible_repo=str(raw.get("bulkhead:ansibleRepo") or "https://github.com/bulkhead-platform/bulkhead.git"),
        ansible_ref=str(raw.get("bulkhead:ansibleRef") or "main"),
        image_source=_image_source(stack, raw.get("bulkhead:imageSource")),
        alert_email=(str(raw["bulkhead:alertEmail"]) if raw.get("bulkhead:alertEmail") else None),
        alert_webhook=_webhook(stack, raw.get("bulkhead:alertWebhook")),
        archive_retention_days=_int(
            stack, "bulkhead:archiveRetentionDays", _or(raw, "bulkhead:archiveRetentionDays", 35), minimum=7
        ),
        base_backup_interval_seconds=_int(
            stack,
            "bulkhead:baseBackupIntervalSeconds",
            _or(raw, "bulkhead:baseBackupIntervalSeconds", 86400),
            minimum=10,
        ),
        synchronous_commit=_bool(stack, "bulkhead:synchronousCommit", _or(raw, "bulkhead:synchronousCommit", True)),
        maximum_lag_on_failover=_int(
            stack, "bulkhead:maximumLagOnFailover", _or(raw, "bulkhead:maximumLagOnFailover", 1048576), minimum=0
        ),
        owner=str(raw.get("bulkhead:owner") or DEFAULT_OWNER),
    )


IMAGE_SOURCES = ("baked", "base")


def _image_source(stack: str, value: Any) -> str:
    chosen = str(value or "base")
    if chosen not in IMAGE_SOURCES:
        raise _fail(stack, "bulkhead:imageSource", f"is {chosen!r}", "use baked (`bulkhead image bake`'s AMIs) or base")
    return chosen


def _webhook(stack: str, value: Any) -> str | None:
    if value is None or str(value).strip() == "":
        return None
    url = urllib.parse.urlsplit(str(value).strip())
    if url.scheme != "https" or not url.hostname:
        raise _fail(stack, "bulkhead:alertWebhook", f"is {value!r}, not an https:// URL",
                    "give the pager's HTTPS endpoint, e.g. https://events.example.com/sns")  # fmt: skip
    return url.geturl()


def _vpc_cidr(stack: str, value: str, peer_cidrs: Mapping[str, str]) -> str:
    key = "bulkhead:vpcCidr"
    try:
        network = ipaddress.ip_network(value)
    except ValueError:
        raise _fail(stack, key, f"is {value!r}, not a network", "use a block such as 10.10.0.0/16") from None
    if network.version != 4 or not 16 <= network.prefixlen <= 20:
        raise _fail(stack, key, f"is {value}", "use an IPv4 block between /16 and /20, e.g. 10.10.0.0/16")
    for peer, peer_value in sorted(peer_cidrs.items()):
        try:
            peer_network = ipaddress.ip_network(peer_value)
        except ValueError:
            continue  # the peer's own validation reports it
        if network.overlaps(peer_network):
            raise _fail(
                stack,
                key,
                f"{value} overlaps {peer_value} of stack {peer}",
                "give each region stack its own block so the regions can be peered, e.g. 10.20.0.0/16",
            )
    return str(network)


def global_spec(raw: Mapping[str, Any], region_stacks: Mapping[str, str]) -> GlobalSpec:
    """Validate the global stack; `region_stacks` maps each region stack to its partner region."""
    stack = GLOBAL_STACK
    region = _region(stack, "aws:region", _required(stack, raw, "aws:region"))
    primary = _region(stack, "bulkhead:primaryRegion", _required(stack, raw, "bulkhead:primaryRegion"))
    secondary = _region(stack, "bulkhead:secondaryRegion", _required(stack, raw, "bulkhead:secondaryRegion"))
    for key, value in (("bulkhead:primaryRegion", primary), ("bulkhead:secondaryRegion", secondary)):
        if value not in region_stacks:
            have = ", ".join(sorted(region_stacks)) or "none"
            raise _fail(stack, key, f"is {value}, which has no region stack", f"use one of: {have}")
    if primary == secondary:
        raise _fail(stack, "bulkhead:secondaryRegion", f"equals the primary {primary}", "name the partner region")
    if region_stacks[primary] != secondary:
        raise _fail(
            stack,
            "bulkhead:secondaryRegion",
            f"is {secondary} but {primary}'s partner (where its backups go) is {region_stacks[primary]}",
            f"set it to {region_stacks[primary]}",
        )
    services = _list(stack, "bulkhead:services", _required(stack, raw, "bulkhead:services"))
    if not services:
        raise _fail(stack, "bulkhead:services", "is empty", 'list the DNS names to fail over, e.g. ["apps", "api"]')
    status_region = _region(stack, "bulkhead:statusRegion", _required(stack, raw, "bulkhead:statusRegion"))
    if status_region in (primary, secondary):
        raise _fail(
            stack,
            "bulkhead:statusRegion",
            f"is {status_region}, a platform region",
            "host the status site in a region the platform does not run in, e.g. ca-central-1",
        )
    domain = _required(stack, raw, "bulkhead:domain").rstrip(".")
    return GlobalSpec(
        region=region,
        domain=domain,
        primary_region=primary,
        secondary_region=secondary,
        services=tuple(services),
        stack_organization=str(raw.get("bulkhead:stackOrganization") or "organization"),
        status_region=status_region,
        status_role_arn=(str(raw["bulkhead:statusRoleArn"]) if raw.get("bulkhead:statusRoleArn") else None),
        status_domain=str(raw.get("bulkhead:statusDomain") or f"status.{domain}"),
        owner=str(raw.get("bulkhead:owner") or DEFAULT_OWNER),
        platform_regions=tuple(sorted(region_stacks)),
    )


# --- the stack files themselves, for the checks that span stacks ---


def stack_names(project_dir: Path) -> list[str]:
    """Every stack that has a `Pulumi.<stack>.yaml`, region stacks first, then the global stack."""
    names = sorted(path.name[len("Pulumi.") : -len(".yaml")] for path in project_dir.glob("Pulumi.*.yaml"))
    return [name for name in names if name != GLOBAL_STACK] + [name for name in names if name == GLOBAL_STACK]


def select_stacks(project_dir: Path, value: str | None) -> list[str]:
    """Stacks named in a comma-separated `--stacks` value (all when empty), in deployment order."""
    known = stack_names(project_dir)
    if not value:
        return known
    wanted = [s.strip() for s in value.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in known]
    if unknown:
        raise ConfigError(f"unknown stack {', '.join(unknown)}; choose from {', '.join(known)}")
    return [s for s in known if s in wanted]


def read_stack_config(project_dir: Path, stack: str) -> dict[str, Any]:
    """The `config:` map of `Pulumi.<stack>.yaml`, values as written (strings, numbers or lists)."""
    path = project_dir / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        have = ", ".join(stack_names(project_dir)) or "none"
        raise ConfigError(f"stack {stack}: {path.name} does not exist; create it or pick one of: {have}")
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        line = getattr(getattr(error, "problem_mark", None), "line", -1) + 1
        raise ConfigError(f"stack {stack}: {path.name} is not valid YAML (line {line}); fix the file") from None
    config = document.get("config") or {}
    if not isinstance(config, dict):
        raise ConfigError(f"stack {stack}: {path.name} has no config map; put the keys under `config:`")
    return config


def config_strings(config: Mapping[str, Any]) -> dict[str, str]:
    """Stack config as the pulumi CLI hands it to a program: strings, with lists and maps as JSON."""
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in config.items()}


class StackFiles:
    """The stack files of one project, each read at most once: the checks that span stacks need several."""

    def __init__(self, project_dir: Path, configs: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        """`configs` stands in for the files of the stacks it names (tests try bad configs with it)."""
        self.project_dir = project_dir
        self._configs: dict[str, dict[str, Any]] = {stack: dict(c) for stack, c in (configs or {}).items()}

    @functools.cached_property
    def _names(self) -> list[str]:
        return stack_names(self.project_dir)

    def names(self) -> list[str]:
        """Every stack, region stacks first, then the global stack (the directory is listed once)."""
        return list(self._names)

    def config(self, stack: str) -> dict[str, Any]:
        """The stack's config map as written (read from its file the first time)."""
        if stack not in self._configs:
            self._configs[stack] = read_stack_config(self.project_dir, stack)
        return self._configs[stack]

    def peer_vpc_cidrs(self, stack: str) -> dict[str, str]:
        """The VPC CIDR of every other region stack, for the overlap check."""
        peers = {}
        for name in self.names():
            if name not in (stack, GLOBAL_STACK) and self.config(name).get("bulkhead:vpcCidr"):
                peers[name] = str(self.config(name)["bulkhead:vpcCidr"])
        return peers

    def partner_regions(self) -> dict[str, str]:
        """Each region stack mapped to the partner region its config names."""
        return {
            name: str(self.config(name).get("bulkhead:partnerRegion", ""))
            for name in self.names()
            if name != GLOBAL_STACK
        }

    def spec(self, stack: str) -> RegionSpec | GlobalSpec:
        """Validate one stack from its file exactly as the program does, with nothing declared."""
        raw = config_strings(self.config(stack))
        if stack == GLOBAL_STACK:
            return global_spec(raw, self.partner_regions())
        return region_spec(stack, raw, self.peer_vpc_cidrs(stack))

    def specs(self, stacks: list[str]) -> dict[str, RegionSpec | GlobalSpec]:
        """Validate several stacks; the first bad one raises."""
        return {stack: self.spec(stack) for stack in stacks}
