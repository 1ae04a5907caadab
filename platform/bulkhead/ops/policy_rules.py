"""The security rules and the production checklist that `bulkhead check` and the policy tests apply.

Each rule is a plain function of the items (`policy_model.Item`) and the repository (roles, runbooks),
yielding one verdict per resource it judges. Rules never read AWS or Pulumi themselves, so a test
can break one resource and watch exactly its rule fail. Waivers live in `policy-waivers.toml` under
version control: each names a rule, a resource, a reason and an expiry date, and an expired waiver
fails like the finding it waived.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import ipaddress
import re
import tomllib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bulkhead import topology
from bulkhead.errors import UsageError
from bulkhead.ops.policy_model import ACCESS_LOGS, ARCHIVE, PURPOSE_TAG, Item, as_list

WAIVERS_FILE = "policy-waivers.toml"
# Any address outside every VPC: what "from anywhere" means when a network ACL is evaluated.
INTERNET_PROBE = ipaddress.ip_address("203.0.113.10")
REMOTE_ADMIN_PORTS = (22, 3389)
HTTP_PORTS = {80, 443}
# What no host role may do to an archive: the backups survive a compromised host.
DESTRUCTIVE_S3 = ("s3:DeleteObject", "s3:DeleteObjectVersion", "s3:BypassGovernanceRetention",
                  "s3:PutObjectRetention", "s3:PutObjectLegalHold", "s3:PutBucketObjectLockConfiguration",
                  "s3:PutLifecycleConfiguration", "s3:DeleteBucket", "s3:PutBucketPolicy")  # fmt: skip
# Services that send aws:SourceAccount when they assume a role, so a trust policy can demand it. EC2
# does not send it for instance profiles (see infra/components/host_helpers.py).
SOURCE_ACCOUNT_SERVICES = {"s3.amazonaws.com", "vpc-flow-logs.amazonaws.com", "logging.s3.amazonaws.com"}
INSTANCE_SERVICE = "ec2.amazonaws.com"
SECRET_IN_TEXT = re.compile(r"(password|secret|passwd)[\"']?\s*[:=]\s*[\"']?(?![{\"'$<])[^\s\"',}]{6,}", re.I)


@dataclass(frozen=True)
class Service:
    """A service the program declares, and where the checklist finds its evidence in the repository."""

    name: str
    # Which items are this service's: a tag and the value it has.
    tag: tuple[str, str]
    # (file, regular expression) pairs that prove TLS and JSON logs in what the roles install; None
    # with a reason where the service has no such thing.
    tls: tuple[tuple[str, str], ...]
    json_logs: tuple[tuple[str, str], ...] | str


SERVICES = (
    Service("router", ("bulkhead:role", "router"),
            tls=(("roles/router/templates/haproxy.cfg.j2", r"ssl crt"),
                 ("roles/router/templates/haproxy.cfg.j2", r"redirect scheme https")),
            json_logs=(("roles/router/templates/haproxy.cfg.j2", r"log-format '\{"),
                       ("roles/router/templates/router-sync.conf.j2", r"--log-json agent router-sync"))),
    Service("dyno_host", ("bulkhead:role", "dyno_host"),
            tls=(("roles/postgres_endpoint/tasks/configure.yml", r"sslmode=require"),),
            json_logs=(("roles/postgres_endpoint/templates/haproxy.cfg.j2", r"log-format '\{"),
                       ("roles/dyno_host/templates/dyno-manager.conf.j2", r"--log-json agent dyno-manager"))),
    Service("postgres", ("bulkhead:role", "postgres"),
            tls=(("roles/postgres/templates/patroni.yml.j2", r"ssl: ['\"]?on"),
                 ("roles/postgres/templates/patroni.yml.j2", r"hostssl")),
            json_logs=(("roles/postgres/templates/patroni.yml.j2", r"log_destination: jsonlog"),
                       ("roles/postgres/templates/patroni.yml.j2", r"type: json"))),
    Service("etcd", ("bulkhead:etcd", "member"),
            tls=(("roles/etcd/templates/etcd.conf.j2", r"--client-cert-auth"),
                 ("roles/etcd/templates/etcd.conf.j2", r"--peer-client-cert-auth")),
            json_logs=(("roles/etcd/templates/etcd.conf.j2", r"--logger zap"),)),
    Service("status_site", ("bulkhead:service", "status_site"), tls=(),
            json_logs="a static site in S3 behind CloudFront runs no process of its own to log"),
)  # fmt: skip


@dataclass(frozen=True)
class Verdict:
    """One rule on one resource."""

    rule: str
    resource: str
    stack: str
    status: str  # pass, fail or waived
    fix: str
    note: str = ""


Check = Callable[[list[Item], Path], Iterator[tuple[Item | str, str, bool, str]]]


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    fix: str
    check: Check


RULES: dict[str, Rule] = {}


def rule(rule_id: str, title: str, fix: str) -> Callable[[Check], Check]:
    def register(check: Check) -> Check:
        RULES[rule_id] = Rule(rule_id, title, fix, check)
        return check

    return register


def _kind(items: list[Item], kind: str) -> list[Item]:
    return [i for i in items if i.kind == kind]


def _archives(items: list[Item]) -> list[Item]:
    return [b for b in _kind(items, "bucket") if b.tags.get(PURPOSE_TAG) == ARCHIVE]


def _verdict(item: Item, ok: bool, note: str = "") -> tuple[Item, str, bool, str]:
    return item, item.stack, ok, note


# --- 1. encryption at rest ---


@rule(
    "ebs-encryption-by-default",
    "EBS encryption by default is on in every region stack",
    "declare aws.ebs.EncryptionByDefault(enabled=True) in the region stack (AccountBaseline)",
)
def _ebs_default(items: list[Item], root: Path):
    regions = {(i.stack, i.region) for i in _kind(items, "vpc")}
    enabled = {(i.stack, i.region) for i in _kind(items, "ebs_default") if i.attrs.get("enabled")}
    for stack, region in sorted(regions):
        yield f"ebs:{region}", stack, (stack, region) in enabled, ""


@rule(
    "volumes-encrypted",
    "every launch template and instance encrypts its volumes",
    "set encrypted on the root block device (host_helpers.launch_template, the instance's root_block_device)",
)
def _volumes(items: list[Item], root: Path):
    for item in _kind(items, "launch_template") + _kind(items, "instance"):
        yield _verdict(item, bool(item.attrs.get("volumes_encrypted")))


@rule(
    "archive-kms-key",
    "archive buckets use a customer-managed KMS key whose policy names the roles using it",
    "encrypt the bucket with aws:kms and the component's own aws.kms.Key, naming its roles in the key policy",
)
def _archive_kms(items: list[Item], root: Path):
    keys = {k.name: k for k in _kind(items, "kms_key")}
    for bucket in _archives(items):
        key = keys.get(bucket.attrs.get("kms_key") or "")
        named = key is not None and any(
            ":role/" in principal
            for st in key.attrs.get("policy", []) if st.get("Effect") == "Allow"
            for principal in as_list((st.get("Principal") or {}).get("AWS") if isinstance(st.get("Principal"), dict)
                                     else None)
        )  # fmt: skip
        ok = bucket.attrs.get("sse") == "aws:kms" and bool(bucket.attrs.get("kms_customer_managed")) and named
        yield _verdict(bucket, ok, "" if ok else f"sse={bucket.attrs.get('sse')} key={bucket.attrs.get('kms_key')}")


@rule(
    "buckets-private-tls-only",
    "archive and log buckets block public access and refuse requests without TLS",
    "add the public access block and a Deny of s3:* when aws:SecureTransport is false",
)
def _private_tls(items: list[Item], root: Path):
    for bucket in _kind(items, "bucket"):
        if bucket.tags.get(PURPOSE_TAG) not in (ARCHIVE, ACCESS_LOGS):
            continue
        tls_only = any(
            st.get("Effect") == "Deny" and st.get("Principal") in ("*", {"AWS": "*"})
            and str(((st.get("Condition") or {}).get("Bool") or {}).get("aws:SecureTransport")).lower() == "false"
            for st in bucket.attrs.get("policy", [])
        )  # fmt: skip
        ok = tls_only and bool(bucket.attrs.get("public_blocked"))
        note = bucket.attrs.get("policy_note", "")
        yield _verdict(
            bucket, ok, note if ok else f"tls_only={tls_only} public_blocked={bucket.attrs.get('public_blocked')}"
        )


# --- 2. IMDSv2 ---


@rule(
    "imdsv2-required",
    "every launch template and instance requires IMDSv2 tokens",
    "set metadata_options http_tokens='required'",
)
def _imdsv2(items: list[Item], root: Path):
    for item in _kind(items, "launch_template") + _kind(items, "instance"):
        tokens = item.attrs.get("http_tokens")
        yield _verdict(item, tokens == "required", f"http_tokens={tokens}")


# --- 3. backups that a host cannot destroy ---


@rule(
    "archive-object-lock",
    "archive buckets are object-locked with a default retention",
    "declare aws.s3.BucketObjectLockConfiguration (GOVERNANCE, archiveRetentionDays) on the versioned bucket",
)
def _lock(items: list[Item], root: Path):
    for bucket in _archives(items):
        mode, days = bucket.attrs.get("lock_mode"), bucket.attrs.get("lock_days")
        ok = bool(bucket.attrs.get("versioning")) and mode in ("GOVERNANCE", "COMPLIANCE") and bool(days)
        yield _verdict(bucket, ok, f"mode={mode} days={days}")


@rule(
    "archive-lifecycle",
    "archive objects expire through the lifecycle, after their retention",
    "add a lifecycle expiration of retention days plus the base-backup interval",
)
def _lifecycle(items: list[Item], root: Path):
    for bucket in _archives(items):
        expiry, days = bucket.attrs.get("expiration_days"), bucket.attrs.get("lock_days") or 0
        yield _verdict(bucket, expiry is not None and expiry > days, f"expires after {expiry} days, locked {days}")


def _allows(statement: dict, patterns: Iterable[str]) -> list[str]:
    if statement.get("Effect") != "Allow":
        return []
    actions = as_list(statement.get("Action"))
    return sorted({p for p in patterns for a in actions if fnmatch.fnmatch(p.lower(), str(a).lower())})


def _instance_roles(items: list[Item]) -> list[Item]:
    return [
        r for r in _kind(items, "role")
        if any(INSTANCE_SERVICE in as_list((st.get("Principal") or {}).get("Service")) for st in r.attrs["trust"]
               if isinstance(st.get("Principal"), dict))
    ]  # fmt: skip


@rule(
    "hosts-cannot-destroy-backups",
    "no host role may delete, overwrite-lock or unlock an archived object",
    "remove s3:Delete*, s3:BypassGovernanceRetention and lock/lifecycle/policy writes from the instance role",
)
def _no_destroy(items: list[Item], root: Path):
    for role in _instance_roles(items):
        found = sorted({a for st in role.attrs["policy"] for a in _allows(st, DESTRUCTIVE_S3)})
        yield _verdict(role, not found, ", ".join(found))


@rule(
    "archive-writes-confined",
    "a host role writes the archive only under its own server prefix",
    "grant s3:PutObject on arn:aws:s3:::BUCKET/SERVER/* only",
)
def _confined(items: list[Item], root: Path):
    archives = {b.name for b in _archives(items)}
    for role in _instance_roles(items):
        wide = []
        for st in role.attrs["policy"]:
            if not _allows(st, ("s3:PutObject",)):
                continue
            for resource in as_list(st.get("Resource")):
                bucket, _, path = str(resource).removeprefix("arn:aws:s3:::").partition("/")
                if "*" in bucket or (bucket in archives and (path == "" or path.startswith("*"))):
                    wide.append(str(resource))
        yield _verdict(role, not wide, ", ".join(wide))


# --- 4. network boundaries ---


@rule("vpc-flow-logs", "every VPC has flow logs of all traffic", "declare aws.ec2.FlowLog for the VPC")
def _flow_logs(items: list[Item], root: Path):
    for vpc in _kind(items, "vpc"):
        yield _verdict(vpc, bool(vpc.attrs.get("flow_logs")))


@rule(
    "archive-access-logs",
    "archive buckets write S3 access logs into a log bucket of their own",
    "declare aws.s3.BucketLogging into the archive's -logs bucket",
)
def _access_logs(items: list[Item], root: Path):
    logs = {b.name for b in _kind(items, "bucket") if b.tags.get(PURPOSE_TAG) == ACCESS_LOGS}
    for bucket in _archives(items):
        target = bucket.attrs.get("logging_target")
        yield _verdict(bucket, target in logs and target != bucket.name, f"target={target}")


@rule(
    "s3-endpoint-platform-buckets",
    "the S3 gateway endpoint admits only the platform's own buckets",
    "give the endpoint a policy whose Allow names the archive bucket ARNs, never *",
)
def _endpoint(items: list[Item], root: Path):
    known = {b.name for b in _kind(items, "bucket")}
    for endpoint in _kind(items, "s3_endpoint"):
        allowed = [str(r) for st in endpoint.attrs.get("policy", []) if st.get("Effect") == "Allow"
                   for r in as_list(st.get("Resource"))]  # fmt: skip
        stray = [r for r in allowed if r.removeprefix("arn:aws:s3:::").split("/")[0] not in known]
        yield _verdict(endpoint, bool(allowed) and not stray, ", ".join(stray) or ("" if allowed else "no policy"))


def admits(entries: list[dict], protocol: str, port: int, source=INTERNET_PROBE) -> bool:
    """Whether a network ACL's ingress entries admit `protocol`/`port` from `source`, as AWS evaluates them:
    the lowest-numbered matching entry decides; nothing matching is a deny."""
    numbers = {"tcp": "6", "udp": "17"}
    for entry in sorted(entries, key=lambda e: e["rule"]):
        entry_protocol = numbers.get(entry["protocol"], entry["protocol"])
        if entry_protocol not in ("-1", "all", numbers.get(protocol, protocol)):
            continue
        if entry_protocol not in ("-1", "all") and not entry["from"] <= port <= entry["to"]:
            continue
        if source not in ipaddress.ip_network(entry["cidr"], strict=False):
            continue
        return entry["action"] == "allow"
    return False


@rule(
    "nacl-no-remote-admin",
    "no network ACL admits 22 or 3389 from anywhere",
    "deny tcp/udp 22 and 3389 from 0.0.0.0/0 before any broader allow",
)
def _nacl_admin(items: list[Item], root: Path):
    for acl in _kind(items, "network_acl"):
        open_ports = [f"{p}/{proto}" for p in REMOTE_ADMIN_PORTS for proto in ("tcp", "udp")
                      if admits(acl.attrs["ingress"], proto, p)]  # fmt: skip
        yield _verdict(acl, not open_ports, ", ".join(open_ports))


@rule(
    "nacl-tier-ports",
    "from anywhere, ACLs admit only what their tier serves: 80/443 on public subnets",
    "allow 80/443 from 0.0.0.0/0 on the public tier only, and the ephemeral range for replies",
)
def _nacl_tier(items: list[Item], root: Path):
    for acl in _kind(items, "network_acl"):
        served = HTTP_PORTS if acl.attrs.get("tier") == "public" else set()
        admitted = {p for p in range(1, 1024) if admits(acl.attrs["ingress"], "tcp", p)}
        if acl.attrs.get("default"):
            # Every subnet has its tier's ACL: the default one must admit nothing at all.
            admitted |= {p for p in (1024, 8080, 65535) if admits(acl.attrs["ingress"], "tcp", p)}
        extra = sorted(admitted - served)
        yield _verdict(acl, not extra, f"also admits {extra[:5]}{'...' if len(extra) > 5 else ''}" if extra else "")


@rule(
    "default-security-group-empty",
    "each VPC's default security group holds no rules",
    "declare aws.ec2.DefaultSecurityGroup with no ingress or egress",
)
def _default_group(items: list[Item], root: Path):
    for group in _kind(items, "security_group"):
        if group.attrs.get("default"):
            yield _verdict(group, group.attrs.get("rule_count", 0) == 0, f"{group.attrs.get('rule_count')} rules")


@rule(
    "world-ingress-http-only",
    "only 80 and 443 are open to the internet in any security group",
    "restrict cidr 0.0.0.0/0 ingress to tcp 80 and 443 on the load balancer's group",
)
def _world_ingress(items: list[Item], root: Path):
    for group in _kind(items, "security_group"):
        wide = [
            f"{r['protocol']}:{r['from']}-{r['to']}"
            for r in group.attrs.get("ingress", [])
            if {"0.0.0.0/0", "::/0"} & set(r["cidrs"])
            and not (r["protocol"] in ("tcp", "6") and r["from"] == r["to"] and r["from"] in HTTP_PORTS)
        ]
        yield _verdict(group, not wide, ", ".join(wide))


# --- 6. credentials ---


@rule(
    "no-secrets-in-user-data",
    "no password or secret appears in any user data",
    "read credentials from SSM SecureString at boot instead of passing them in user data",
)
def _user_data(items: list[Item], root: Path):
    for item in _kind(items, "launch_template") + _kind(items, "instance"):
        found = SECRET_IN_TEXT.search(item.attrs.get("user_data") or "")
        yield _verdict(item, found is None, found.group(1) if found else "")


@rule(
    "passwords-are-secure-strings",
    "every password parameter is an SSM SecureString",
    "put the parameter with Type=SecureString",
)
def _secure_strings(items: list[Item], root: Path):
    for parameter in _kind(items, "parameter"):
        if "password" in parameter.name.lower():
            yield _verdict(parameter, parameter.attrs.get("type") == "SecureString", parameter.attrs.get("type", ""))


# --- 7. trust policies ---


@rule(
    "trust-one-service",
    "each role trusts only its own service, with aws:SourceAccount where AWS sends it",
    "name one service principal; add Condition StringEquals aws:SourceAccount for s3, logs and flow logs",
)
def _trust(items: list[Item], root: Path):
    for role in _kind(items, "role"):
        problems = []
        for st in role.attrs["trust"]:
            if st.get("Effect") != "Allow":
                continue
            principal = st.get("Principal") if isinstance(st.get("Principal"), dict) else {"*": st.get("Principal")}
            services = as_list(principal.get("Service"))
            others = {k: v for k, v in principal.items() if k != "Service"}
            if others:
                arn_like = (st.get("Condition") or {}).get("ArnLike", {}).get("aws:PrincipalArn")
                if not (role.name == topology.HEARTBEAT_ROLE and set(others) == {"AWS"} and arn_like):
                    problems.append(f"trusts {others}")
            if len(services) > 1:
                problems.append(f"trusts {len(services)} services")
            for service in services:
                conditions = st.get("Condition") or {}
                has_account = any("aws:SourceAccount" in block for block in conditions.values())
                if service in SOURCE_ACCOUNT_SERVICES and not has_account:
                    problems.append(f"{service} without aws:SourceAccount")
        yield _verdict(role, not problems, "; ".join(problems))


# --- the production checklist, per service ---


def _service_items(items: list[Item], service: Service) -> list[Item]:
    key, value = service.tag
    return [i for i in items if i.tags.get(key) == value and i.kind not in ("alarm",)]


def _evidence(root: Path, pairs: tuple[tuple[str, str], ...]) -> list[str]:
    missing = []
    for relative, pattern in pairs:
        path = root / relative
        if not path.exists() or not re.search(pattern, path.read_text()):
            missing.append(f"{relative} lacks /{pattern}/")
    return missing


def _services_by_stack(items: list[Item]) -> Iterator[tuple[Service, str, list[Item]]]:
    for service in SERVICES:
        found = _service_items(items, service)
        for stack in sorted({i.stack for i in found}):
            yield service, stack, [i for i in found if i.stack == stack]


@rule(
    "service-owner",
    "every resource of a service carries a bulkhead:owner tag",
    "set bulkhead:owner in the stack's config (bulkhead:owner) so that every tag set carries it",
)
def _owner(items: list[Item], root: Path):
    for service, stack, found in _services_by_stack(items):
        untagged = [i.name for i in found if not i.tags.get("bulkhead:owner")]
        yield service.name, stack, not untagged, ", ".join(untagged[:3])


@rule("service-alarm", "every service has an alarm on its health", "add an alarm tagged bulkhead:service=SERVICE")
def _alarm(items: list[Item], root: Path):
    for service, stack, _ in _services_by_stack(items):
        alarms = [a for a in _kind(items, "alarm") if a.tags.get("bulkhead:service") == service.name]
        yield service.name, stack, bool(alarms), ", ".join(a.name for a in alarms)


@rule("service-tls", "every service speaks TLS", "configure TLS in the service's role (see the note)")
def _tls(items: list[Item], root: Path):
    for service, stack, found in _services_by_stack(items):
        missing = _evidence(root, service.tls)
        for distribution in (i for i in found if i.kind == "distribution"):
            if distribution.attrs.get("viewer_protocol") not in ("redirect-to-https", "https-only"):
                missing.append(f"viewer protocol {distribution.attrs.get('viewer_protocol')}")
        yield service.name, stack, not missing, "; ".join(missing)


@rule(
    "service-json-logs",
    "every service logs one JSON object per line",
    "set the service's log format to JSON in its role",
)
def _json_logs(items: list[Item], root: Path):
    for service, stack, _ in _services_by_stack(items):
        if isinstance(service.json_logs, str):
            yield service.name, stack, True, f"not applicable: {service.json_logs}"
            continue
        missing = _evidence(root, service.json_logs)
        yield service.name, stack, not missing, "; ".join(missing)


def runbook_services(root: Path) -> dict[str, list[str]]:
    """Service -> the runbooks whose `Services:` line names it."""
    named: dict[str, list[str]] = {}
    for path in sorted((root / "runbooks").glob("*.md")):
        for line in path.read_text().splitlines():
            if line.startswith("Services:"):
                for name in line.removeprefix("Services:").replace(",", " ").split():
                    named.setdefault(name.strip("`"), []).append(path.name)
    return named


@rule(
    "service-runbook",
    "every service has a runbook in runbooks/ that names it",
    "add the service to the `Services:` line of the runbook that recovers it",
)
def _runbook(items: list[Item], root: Path):
    named = runbook_services(root)
    for service, stack, _ in _services_by_stack(items):
        yield service.name, stack, bool(named.get(service.name)), ", ".join(named.get(service.name, []))


# --- waivers and the run ---


@dataclass(frozen=True)
class Waiver:
    rule: str
    resource: str
    reason: str
    expires: dt.date


def load_waivers(root: Path) -> list[Waiver]:
    """The waivers file of a checkout; a malformed entry is an error that names it."""
    path = root / WAIVERS_FILE
    if not path.exists():
        return []
    try:
        document = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"{path}: not valid TOML ({error}); fix the file") from None
    waivers = []
    for index, entry in enumerate(document.get("waiver", []), 1):
        missing = [k for k in ("rule", "resource", "reason", "expires") if not entry.get(k)]
        if missing:
            raise UsageError(f"{path}: waiver {index} lacks {', '.join(missing)}; every waiver names all four")
        if entry["rule"] not in RULES:
            raise UsageError(
                f"{path}: waiver {index} names unknown rule {entry['rule']!r}; see `bulkhead check --rules`"
            )
        if not isinstance(entry["expires"], dt.date):
            raise UsageError(f"{path}: waiver {index}: expires must be a date such as 2027-01-31")
        waivers.append(Waiver(entry["rule"], str(entry["resource"]), str(entry["reason"]), entry["expires"]))
    return waivers


def evaluate(
    items: list[Item], root: Path, waivers: list[Waiver] | None = None, today: dt.date | None = None,
    rules: Iterable[str] | None = None,
) -> list[Verdict]:  # fmt: skip
    """Every rule (or those named) over the items, waivers applied: one verdict per rule and resource."""
    today = today or dt.date.today()
    waivers = load_waivers(root) if waivers is None else waivers
    verdicts = []
    for rule_id in rules or RULES:
        current = RULES[rule_id]
        for subject, stack, ok, note in current.check(items, root):
            name = subject.name if isinstance(subject, Item) else subject
            if isinstance(subject, Item) and subject.notes:
                note = "; ".join([note, *subject.notes]) if note else "; ".join(subject.notes)
            status = "pass" if ok else "fail"
            if not ok:
                waiver = next((w for w in waivers if w.rule == rule_id and w.resource == name), None)
                if waiver and waiver.expires >= today:
                    status, note = "waived", f"until {waiver.expires}: {waiver.reason}"
                elif waiver:
                    note = f"waiver expired on {waiver.expires} ({waiver.reason}); fix it or renew the waiver"
            verdicts.append(Verdict(rule_id, name, stack, status, current.fix if status == "fail" else "", note))
    return verdicts
