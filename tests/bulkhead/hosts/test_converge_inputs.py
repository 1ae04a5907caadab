"""What a pushed converge counts as a host's inputs, and which hosts it leaves out (no Ansible run here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bulkhead.hosts.converge import host_inputs, inputs_digest, to_run, tree_digest

pytestmark = pytest.mark.unit


def _inventory() -> dict:
    return {
        "all": {
            "hosts": {
                "i-pg1": {"bulkhead_address": "10.30.0.10", "bulkhead_role": "postgres"},
                "i-pg2": {"bulkhead_address": "10.30.16.10", "bulkhead_role": "postgres"},
                "i-router": {"bulkhead_address": "10.30.0.20", "bulkhead_role": "router"},
                "i-dyno": {"bulkhead_address": "10.30.16.30", "bulkhead_role": "dyno_host"},
            },
            "children": {
                "role_postgres": {"hosts": {"i-pg1": None, "i-pg2": None}},
                "postgres_primary": {"hosts": {"i-pg1": None}},
                "role_router": {"hosts": {"i-router": None}},
                "role_dyno_host": {"hosts": {"i-dyno": None}},
            },
        }
    }


SHARED = {"roles": "r1", "playbook": "site.yml", "extra": {"a": 1}, "secrets": {}}


def _digests(document: dict, shared: dict = SHARED) -> dict[str, str]:
    return {host: inputs_digest(shared, own) for host, own in host_inputs(document).items()}


def test_host_inputs__a_host_has_its_vars_its_groups_and_the_database_members():
    owns = host_inputs(_inventory())
    assert owns["i-pg1"]["groups"] == ["postgres_primary", "role_postgres"]
    assert owns["i-router"] == {
        "vars": {"bulkhead_address": "10.30.0.20", "bulkhead_role": "router"},
        "groups": ["role_router"],
        "database_members": ["10.30.0.10", "10.30.16.10"],
    }


def test_inputs_digest__another_hosts_own_variable_changes_only_that_host():
    before = _digests(_inventory())
    document = _inventory()
    document["all"]["hosts"]["i-dyno"]["bulkhead_cell"] = "2"
    after = _digests(document)
    assert [h for h in before if before[h] != after[h]] == ["i-dyno"]


def test_inputs_digest__a_moved_database_member_changes_every_host():
    before = _digests(_inventory())
    document = _inventory()
    document["all"]["hosts"]["i-pg2"]["bulkhead_address"] = "10.30.32.10"
    after = _digests(document)
    assert all(before[h] != after[h] for h in before)


def test_inputs_digest__the_primary_moving_changes_the_two_members_only():
    before = _digests(_inventory())
    document = _inventory()
    document["all"]["children"]["postgres_primary"]["hosts"] = {"i-pg2": None}
    after = _digests(document)
    assert sorted(h for h in before if before[h] != after[h]) == ["i-pg1", "i-pg2"]


@pytest.mark.parametrize("key", ["roles", "playbook", "extra", "secrets"])
def test_inputs_digest__a_shared_input_changes_every_host(key):
    before = _digests(_inventory())
    after = _digests(_inventory(), {**SHARED, key: "changed"})
    assert all(before[h] != after[h] for h in before)


def test_to_run__leaves_hosts_whose_record_matches_unless_forced():
    wanted = {"i-1": "a", "i-2": "b", "i-3": "c"}
    recorded = {"i-1": "a", "i-2": "old", "i-3": None}
    assert to_run(wanted, recorded, force=False) == (["i-2", "i-3"], ["i-1"])
    assert to_run(wanted, recorded, force=True) == (["i-1", "i-2", "i-3"], [])


def test_tree_digest__changes_with_a_files_content_or_name_only(tmp_path: Path):
    (tmp_path / "router/tasks").mkdir(parents=True)
    (tmp_path / "router/tasks/main.yml").write_text("---\n")
    first = tree_digest(tmp_path)
    assert tree_digest(tmp_path) == first
    (tmp_path / "router/tasks/main.yml").write_text("--- # changed\n")
    second = tree_digest(tmp_path)
    assert second != first
    (tmp_path / "router/tasks/main.yml").rename(tmp_path / "router/tasks/other.yml")
    assert tree_digest(tmp_path) not in (first, second)
