"""The CLI's one error root and its exit codes: 1 for a failed operation, 2 for bad usage or config, 130 on Ctrl-C."""

from __future__ import annotations

import argparse
import importlib
import pkgutil

import pytest

import bulkhead
from bulkhead import cli
from bulkhead.errors import BulkheadError

pytestmark = pytest.mark.unit


def _all_modules() -> list[str]:
    return [m.name for m in pkgutil.walk_packages(bulkhead.__path__, "bulkhead.")]


def test_errors__every_error_class_in_the_package_derives_from_bulkhead_error():
    strays = []
    for name in _all_modules():
        module = importlib.import_module(name)
        for value in vars(module).values():
            if (isinstance(value, type) and issubclass(value, Exception) and value.__module__ == name
                    and not issubclass(value, BulkheadError)):  # fmt: skip
                strays.append(f"{name}.{value.__name__}")
    # ReplaceRequired is a signal between a translator and the engine, never shown to an operator.
    assert strays == ["bulkhead.localcloud.translators.ReplaceRequired"]


def _run(monkeypatch, error: BaseException, capsys) -> tuple[int, str]:
    """`bulkhead plan` with its handler raising `error`: the exit code and what stderr said."""

    def handler(args: argparse.Namespace) -> int:
        raise error

    monkeypatch.setattr(cli, "cmd_plan", handler)
    code = cli.main(["plan"])
    return code, capsys.readouterr().err


def test_main__an_error_from_any_area_is_one_line_with_its_exit_code(monkeypatch, capsys):
    from bulkhead.backup.settings import BackupError
    from bulkhead.localcloud.translators import UnknownResourceType
    from bulkhead.topology import ConfigError

    class NewAreaError(BulkheadError):
        """An error of a module written after the CLI: it needs no change there."""

    for error, code in ((BackupError("the archive is gone; check --archive"), 1),
                        (UnknownResourceType("no translator for aws:x/y:Z"), 1),
                        (NewAreaError("a new module failed; do this"), 1),
                        (ConfigError("stack eu-west-1: bulkhead:cells is 0; set it to 1 or more"), 2)):  # fmt: skip
        assert _run(monkeypatch, error, capsys) == (code, f"bulkhead: error: {error}\n")


def test_main__ctrl_c_exits_130(monkeypatch, capsys):
    assert _run(monkeypatch, KeyboardInterrupt(), capsys) == (130, "bulkhead: interrupted\n")


def test_main__bad_usage_exits_2_as_argparse_does(capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.main(["db", "restore", "--server", "pg-x"])
    assert stopped.value.code == 2
    assert "the following arguments are required: --archive, --to" in capsys.readouterr().err


def test_main__a_bad_archive_url_is_one_line_and_exit_1(capsys):
    code = cli.main(["db", "list", "--archive", "http://bucket/pg", "--server", "pg-x"])
    assert (code, capsys.readouterr().err) == (
        1, "bulkhead: error: --archive 'http://bucket/pg' is not an S3 URL; write it as s3://BUCKET/PREFIX\n",
    )  # fmt: skip


@pytest.mark.parametrize(
    "argv",
    [
        ["drill", "az-loss", "--region", "eu-west-1"],
        ["drill", "ebs-loss", "--region", "eu-west-1", "--json"],
        ["db", "status", "--region", "eu-west-1"],
        ["db", "failover", "--region", "eu-west-1", "--to", "i-1"],
    ],
)
def test_drills_and_cluster_verbs__without_hosts_say_so_in_one_line_and_change_nothing(
    argv, project_dir, monkeypatch, tmp_path, capsys
):
    monkeypatch.setenv("BULKHEAD_HOSTS_DIR", str(tmp_path / "hosts"))
    code = cli.main(["--project", str(project_dir), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err == (
        "bulkhead: error: no hosts of region eu-west-1 are reachable from here: run `bulkhead hosts up --region "
        "eu-west-1` and `bulkhead hosts configure` (reaching hosts on AWS through SSM port forwarding is not "
        "built yet)"
    )
    assert not (tmp_path / "hosts").exists()
    assert not (project_dir / ".bulkhead" / "drills").exists() or not any(
        p.stat().st_mtime > tmp_path.stat().st_mtime for p in (project_dir / ".bulkhead" / "drills").glob("*.json")
    )


def test_command_word__skips_the_global_options_and_the_projects_directory():
    assert cli.command_word(["--project", "db", "--log-json", "hosts", "up"]) == "hosts"
    assert cli.command_word(["-v", "--project=x", "db", "check"]) == "db"
    assert cli.command_word(["--help"]) is None and cli.command_word([]) is None


def test_build_parser__a_named_group_alone_and_every_group_otherwise():
    def groups(parser: argparse.ArgumentParser) -> set[str]:
        (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        return set(action.choices)

    assert groups(cli.build_parser("db")) == {"plan", "db"}
    every = {name for name, _, _ in cli.GROUPS} | {"plan"}
    assert groups(cli.build_parser(None)) == every and groups(cli.build_parser("no-such")) == every
