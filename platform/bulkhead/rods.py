"""Control rods: flags that switch parts of the platform off during an incident (seeds 001, 002).

Each rod is an SSM parameter per region, declared by the region stack at its normal value. Nothing reads
them yet: the host agents that obey them, and a `bulkhead rods` command to flip them, are still to come.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rod:
    """One control rod: its parameter name suffix, value when the platform runs normally, and purpose."""

    name: str
    default: str
    purpose: str


RODS: tuple[Rod, ...] = (
    Rod("api-maintenance", "off", "Refuse platform API writes; apps keep serving (the June 2012 control rod)."),
    Rod("app-management-lockdown", "off", "Freeze deploys, restarts and scaling so working apps stay up (Feb 2012)."),
    Rod("dyno-launch-rate", "30", "Dyno launches per minute per cell; the flow control that breaks a boot storm."),
    Rod("router-read-only", "off", "Routers keep the last good route table and ignore the dyno stream."),
)


def parameter_name(region: str, rod: Rod) -> str:
    """The SSM parameter that holds a rod in one region."""
    return f"/bulkhead/{region}/rods/{rod.name}"
