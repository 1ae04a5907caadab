"""The topology model: derived subnets and the config rules, independent of Pulumi."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulkhead import topology

pytestmark = pytest.mark.unit


def _raw(cidr: str, **extra: str) -> dict[str, str]:
    return {
        "aws:region": "us-east-1",
        "bulkhead:partnerRegion": "us-west-2",
        "bulkhead:availabilityZones": json.dumps(["us-east-1a", "us-east-1b", "us-east-1c"]),
        "bulkhead:vpcCidr": cidr,
        "bulkhead:cells": "1",
        **extra,
    }


@given(
    first_octet=st.integers(min_value=1, max_value=223),
    second_octet=st.integers(min_value=0, max_value=255),
    prefix=st.integers(min_value=16, max_value=20),
)
def test_subnets__inside_the_vpc_one_pair_per_az_and_never_overlapping(first_octet, second_octet, prefix):
    cidr = str(ipaddress.ip_network(f"{first_octet}.{second_octet}.0.0/{prefix}", strict=False))
    spec = topology.region_spec("us-east-1", _raw(cidr))
    vpc = ipaddress.ip_network(spec.vpc_cidr)
    blocks = [ipaddress.ip_network(c) for s in spec.subnets() for c in (s.public_cidr, s.private_cidr)]
    assert [s.az for s in spec.subnets()] == ["us-east-1a", "us-east-1b", "us-east-1c"]
    assert all(block.subnet_of(vpc) for block in blocks)
    assert not any(a.overlaps(b) for i, a in enumerate(blocks) for b in blocks[i + 1 :])


def test_region_spec__defaults_apply_when_keys_are_unset():
    spec = topology.region_spec("us-east-1", _raw("10.10.0.0/16", **{"bulkhead:routersPerAz": None}))
    assert spec.routers_per_az == 2 and spec.max_connections_per_backend == 64


def test_region_spec__a_vpc_too_small_to_split_fails_clearly():
    with pytest.raises(topology.ConfigError, match=r"bulkhead:vpcCidr is 10.10.0.0/24; use an IPv4 block"):
        topology.region_spec("us-east-1", _raw("10.10.0.0/24"))


def test_read_stack_config__unknown_stack_names_the_ones_that_exist(tmp_path):
    (tmp_path / "Pulumi.us-east-1.yaml").write_text("config:\n  aws:region: us-east-1\n")
    with pytest.raises(topology.ConfigError, match=r"Pulumi\.eu-north-1\.yaml does not exist.*pick one of: us-east-1"):
        topology.read_stack_config(tmp_path, "eu-north-1")


def test_read_stack_config__broken_yaml_names_the_line(tmp_path):
    (tmp_path / "Pulumi.us-east-1.yaml").write_text("config:\n  aws:region: [us-east-1\n")
    with pytest.raises(topology.ConfigError, match=r"not valid YAML \(line \d+\)"):
        topology.read_stack_config(tmp_path, "us-east-1")


def test_stack_files__each_file_is_read_once_however_many_checks_need_it(project_dir, monkeypatch):
    reads: list[str] = []
    original = topology.read_stack_config
    monkeypatch.setattr(topology, "read_stack_config", lambda d, s: reads.append(s) or original(d, s))
    files = topology.StackFiles(project_dir)
    specs = files.specs(["eu-west-1", "us-east-1", "us-west-2", "global"])
    assert sorted(reads) == ["eu-west-1", "global", "us-east-1", "us-west-2"]
    assert specs["us-east-1"].vpc_cidr == "10.10.0.0/16" and specs["global"].secondary_region == "us-west-2"


def test_config_strings__lists_and_numbers_become_json_as_the_pulumi_cli_passes_them():
    assert topology.config_strings({"a": "x", "b": ["p", "q"], "c": 2}) == {"a": "x", "b": '["p", "q"]', "c": "2"}
