"""The sandbox inventory's shape: groups named as the aws_ec2 plugin names them, facts per region."""

from __future__ import annotations

from pathlib import Path

import pytest

from bulkhead.hosts.inventory import group_name, inventory
from bulkhead.hosts.sandbox import HostSpec, Sandboxes

pytestmark = pytest.mark.unit


def _spec(name: str, role: str, az: str, **tags: str) -> HostSpec:
    return HostSpec(name, role, az[:-1], az, "10.30.128.10", 20,
                    {"bulkhead:role": role, "bulkhead:region": az[:-1], "bulkhead:az": az, **tags})  # fmt: skip


@pytest.mark.parametrize(
    ("prefix", "value", "expected"),
    [
        ("role", "dyno_host", "role_dyno_host"),
        ("region", "eu-west-1", "region_eu_west_1"),
        ("az", "eu-west-1a", "az_eu_west_1a"),
        ("postgres", "primary", "postgres_primary"),
        ("role", "web.tier/2", "role_web_tier_2"),
    ],
)
def test_group_name__characters_ansible_rejects_become_underscores(prefix, value, expected):
    assert group_name(prefix, value) == expected


def test_inventory__groups_by_tags_and_gives_each_host_its_regions_facts(tmp_path: Path):
    sandboxes = Sandboxes(tmp_path / "hosts")
    primary = _spec("i-1", "postgres", "eu-west-1a", **{"bulkhead:postgres": "primary"})
    router = _spec("i-2", "router", "eu-west-1b")
    facts = {"eu-west-1": {"postgres_archive_bucket": "bulkhead-eu-west-1-archive", "postgres_server_name": "pg-x"}}
    document = inventory([primary, router], sandboxes, facts)
    groups = {name: sorted(group["hosts"]) for name, group in document["all"]["children"].items()}
    assert groups == {
        "role_postgres": ["i-1"],
        "role_router": ["i-2"],
        "region_eu_west_1": ["i-1", "i-2"],
        "az_eu_west_1a": ["i-1"],
        "az_eu_west_1b": ["i-2"],
        "postgres_primary": ["i-1"],
    }
    host = document["all"]["hosts"]["i-1"]
    assert host["ansible_connection"] == "community.general.chroot"
    assert host["ansible_host"] == str(tmp_path / "hosts" / "i-1" / "root")
    assert host["postgres_archive_bucket"] == "bulkhead-eu-west-1-archive" and host["postgres_server_name"] == "pg-x"
    assert (host["bulkhead_address"], host["bulkhead_az"]) == ("10.30.128.10", "eu-west-1a")
