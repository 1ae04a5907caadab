"""Decisions about a Patroni cluster, from what its REST API said: plain values in, plain values out.

Nothing here talks to a host (`bulkhead.ha.reach` does); the tests give these functions Patroni's own
answers, written down.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

from bulkhead.errors import BulkheadError

# Patroni's roles for a member that may take writes; every other role is a replica.
LEADER_ROLES = frozenset({"leader", "master", "primary", "standby_leader"})


class ClusterError(BulkheadError):
    """The cluster cannot do what was asked (no leader, a lagging target); the message says what to do."""


@dataclass(frozen=True)
class Member:
    """One database member as `bulkhead db status` shows it."""

    host: str
    az: str
    role: str  # "leader" | "replica"
    state: str  # Patroni's state ("running", "streaming", ...), or "unreachable"
    timeline: int | None
    lag_bytes: int | None
    address: str = ""
    synchronous: bool = False

    def as_json(self) -> dict:
        """The pinned shape of `db status --json`: host, az, role, state, timeline, lag_bytes."""
        document = asdict(self)
        return {key: document[key] for key in ("host", "az", "role", "state", "timeline", "lag_bytes")}


def members(cluster: Mapping, hosts: Mapping[str, tuple[str, str]]) -> list[Member]:
    """Every member of the region: those Patroni's /cluster lists, then those it does not (unreachable).

    `hosts` maps each database host's name to its (AZ, address).
    """
    seen = []
    for entry in cluster.get("members", []):
        name = entry["name"]
        lag = entry.get("lag")
        az, address = hosts.get(name, ("?", entry.get("host", "")))
        seen.append(
            Member(
                host=name,
                az=az,
                role="leader" if entry.get("role") in LEADER_ROLES else "replica",
                state=str(entry.get("state", "unknown")),
                timeline=entry.get("timeline"),
                lag_bytes=0 if entry.get("role") in LEADER_ROLES else (lag if isinstance(lag, int) else None),
                address=address,
                synchronous=entry.get("role") == "sync_standby",
            )
        )
    listed = {m.host for m in seen}
    missing = [
        Member(host=name, az=az, role="replica", state="unreachable", timeline=None, lag_bytes=None, address=address)
        for name, (az, address) in sorted(hosts.items())
        if name not in listed
    ]
    return sorted(seen, key=lambda m: (m.role != "leader", m.host)) + missing


def leader(found: Iterable[Member]) -> Member | None:
    """The member that holds the leader key and runs, if any."""
    return next((m for m in found if m.role == "leader" and m.state == "running"), None)


def switchover_target(found: list[Member], to: str | None) -> tuple[Member, Member | None]:
    """The current leader, and the replica to hand over to (None: Patroni picks the healthiest)."""
    current = leader(found)
    if current is None:
        raise ClusterError("the cluster has no running leader: a switchover needs one; see `bulkhead db status` "
                           "and use `bulkhead db failover --to HOST` instead")  # fmt: skip
    if to is None:
        return current, None
    target = _named(found, to)
    if target.host == current.host:
        raise ClusterError(f"{to} already leads the cluster; name a replica with --to, or leave --to out")
    if target.state not in ("running", "streaming"):
        raise ClusterError(f"replica {to} is {target.state}, not streaming: choose another with --to")
    synchronous = [m for m in found if m.synchronous]
    if synchronous and not target.synchronous:
        # Patroni's synchronous mode hands over only to the replica that holds every acknowledged commit.
        raise ClusterError(f"replica {to} is not the synchronous one, so it may lack acknowledged commits: name "
                           f"{synchronous[0].host} with --to, or leave --to out")  # fmt: skip
    return current, target


def failover_refusal(found: list[Member], to: str, maximum_lag: int, force: bool) -> str | None:
    """Why a failover to `to` must not happen (it lags beyond `maximum_lag` bytes, it is down), or None."""
    target = _named(found, to)
    if target.role == "leader" and target.state == "running":
        return f"{to} already leads the cluster; nothing to fail over"
    if target.state not in ("running", "streaming"):
        return f"{to} is {target.state}: it cannot take over; choose a running replica"
    if force:
        return None
    if target.lag_bytes is None:
        return f"{to}'s lag is unknown; pass --force to promote it anyway, accepting lost writes"
    if target.lag_bytes > maximum_lag:
        return (
            f"{to} lags {target.lag_bytes} bytes, beyond the maximum of {maximum_lag} "
            "(bulkhead:maximumLagOnFailover): promoting it loses those writes; pass --force to accept that"
        )
    return None


def _named(found: list[Member], name: str) -> Member:
    for member in found:
        if name in (member.host, member.address):
            return member
    raise ClusterError(f"no database member {name!r}; members: {', '.join(m.host for m in found)}")


def expectation_problem(found: list[Member], leader_not: str | None = None, leader_outside_az: str | None = None,
                        streaming: tuple[str, ...] = ()) -> str | None:  # fmt: skip
    """What keeps the cluster from the state a runbook's check expects, in one line; None when it holds."""
    current = leader(found)
    if current is None or current.state != "running":
        return "no member leads and runs yet"
    if leader_not and current.host == leader_not:
        return f"{leader_not} still leads"
    if leader_outside_az and current.az == leader_outside_az:
        return f"the leader {current.host} is still in {leader_outside_az}"
    by_host = {m.host: m for m in found}
    for host in streaming:
        member = by_host.get(host)
        if member is None:
            return f"{host} is not a member of this cluster"
        if member.role != "replica" or member.state != "streaming":
            return f"{host} is {member.role}, {member.state}: not a streaming replica yet"
    return None
