"""The one place that says how a PostgreSQL server archives and restores WAL.

`bulkhead db archive-command` prints these lines, the Ansible role of the database hosts templates
them, and the tests configure their servers from them. `archive_command` runs as the postgres user,
so the barman-cloud tools it calls live in a venv that user can execute (`BARMAN_BIN`), not in the
project's .venv, whose Python sits under a directory only root can read.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from bulkhead import s3compat
from bulkhead.errors import BulkheadError

DEFAULT_BARMAN_BIN = Path("/opt/bulkhead/barman/bin")
DEFAULT_ARCHIVE_TIMEOUT = 60
WAL_PREFETCH = 4
# gzip, not snappy: snappy needs an extra package on every host and otherwise fails every archive.
WAL_COMPRESSION = "--gzip"
# Base backups use lz4: a restore is bound by decompression (gunzip ran at about 320 MiB/s of database
# on one core here, 9.5x the time of the download), and lz4 decompresses several times faster.
BACKUP_COMPRESSION = "--lz4"


class BackupError(BulkheadError):
    """A backup command cannot do what was asked; the message is one line with the fix."""


def barman_bin() -> Path:
    """Where the barman-cloud tools are: `$BULKHEAD_BARMAN_BIN` or /opt/bulkhead/barman/bin."""
    return Path(os.environ.get("BULKHEAD_BARMAN_BIN") or DEFAULT_BARMAN_BIN)


@dataclass(frozen=True)
class Archive:
    """Where one server's backups and WAL live: `s3://BUCKET/PREFIX`, the server name, the endpoint."""

    url: str
    server: str
    endpoint_url: str | None = None

    def __post_init__(self) -> None:
        parsed = urlparse(self.url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise BackupError(f"--archive {self.url!r} is not an S3 URL; write it as s3://BUCKET/PREFIX")
        if not self.server or "/" in self.server:
            raise BackupError(f"--server {self.server!r} is not a server name; use a name such as pg-us-east-1")

    @property
    def bucket(self) -> str:
        return urlparse(self.url).netloc

    @property
    def prefix(self) -> str:
        """The key prefix under which barman keeps this server: `PREFIX/SERVER/`."""
        base = urlparse(self.url).path.strip("/")
        return f"{base}/{self.server}/" if base else f"{self.server}/"

    def tool_args(self) -> list[str]:
        """The options every barman-cloud tool takes to reach this archive."""
        args = ["--cloud-provider", "aws-s3"]
        if self.endpoint_url:
            args += ["--endpoint-url", self.endpoint_url]
        return args


def tool_environment(archive: Archive) -> dict[str, str]:
    """Extra environment for barman-cloud against this archive (see `bulkhead.s3compat`)."""
    return s3compat.environment(archive.endpoint_url)


def _command(archive: Archive, tool: str, *args: str) -> str:
    environment = [f"{k}={v}" for k, v in tool_environment(archive).items()]
    prefix = ["env", *environment] if environment else []
    words = [*prefix, str(barman_bin() / tool), *archive.tool_args(), *args]
    return " ".join(shlex.quote(w) if not w.startswith("%") else w for w in words)


def archive_command(archive: Archive) -> str:
    """The `archive_command` that ships each WAL segment to the archive, gzip-compressed."""
    return _command(archive, "barman-cloud-wal-archive", WAL_COMPRESSION, archive.url, archive.server, "%p")


def restore_command(archive: Archive) -> str:
    """The `restore_command` that fetches WAL during recovery, prefetching a few segments in parallel."""
    return _command(
        archive, "barman-cloud-wal-restore", "-p", str(WAL_PREFETCH), archive.url, archive.server, "%f", "%p"
    )


def replica_command(archive: Archive) -> str:
    """barman-cloud-restore of the newest base backup, less its target directory: how a member is rebuilt
    from the archive (Patroni's create_replica_method), so that rebuilding never loads the leader."""
    return _command(archive, "barman-cloud-restore", archive.url, archive.server, "latest")


def server_settings(archive: Archive, archive_timeout: int = DEFAULT_ARCHIVE_TIMEOUT) -> dict[str, str]:
    """Every postgresql.conf setting continuous archiving needs, as name -> value."""
    return {
        "wal_level": "replica",
        "archive_mode": "on",
        # A quiet server still ships its WAL at least this often: the bound on data lost (RPO).
        "archive_timeout": f"{archive_timeout}s",
        "archive_command": archive_command(archive),
        "restore_command": restore_command(archive),
    }


def conf_lines(settings: dict[str, str]) -> list[str]:
    """Settings as postgresql.conf lines, values quoted as PostgreSQL expects."""
    return [f"{name} = '{value.replace(chr(39), chr(39) * 2)}'" for name, value in settings.items()]
