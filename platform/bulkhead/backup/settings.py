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
# lz4, not gzip: archiving must keep up with a bulk load (over 100 MiB/s of WAL here). On bulk-load WAL,
# lz4's fast mode compressed at 680 MiB/s of one core and gzip at 30 (barman's default level 6; 82 at
# level 1), for 1.9x smaller against 2.7x. Snappy needs an extra package on every host; lz4 is in barman[lz4].
WAL_COMPRESSION = "lz4"
# lz4's fast mode. barman's default ("medium", LZ4 HC level 6) compressed at 66 MiB/s, ten times slower.
WAL_COMPRESSION_LEVEL = "low"
# Segments shipped at once by the WAL shipper (bulkhead.backup.shipper).
DEFAULT_MAX_PARALLEL = 4
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


def _command(archive: Archive, tool: str, *args: str, tool_args: bool = True) -> str:
    environment = [f"{k}={v}" for k, v in tool_environment(archive).items()]
    prefix = ["env", *environment] if environment else []
    words = [*prefix, str(barman_bin() / tool), *(archive.tool_args() if tool_args else []), *args]
    return " ".join(shlex.quote(w) if not w.startswith("%") else w for w in words)


def serial_archive_command(archive: Archive) -> str:
    """barman-cloud-wal-archive, one process per segment: what the shipper replaced, kept to compare with."""
    return _command(archive, "barman-cloud-wal-archive", f"--{WAL_COMPRESSION}", "--compression-level",
                    WAL_COMPRESSION_LEVEL, archive.url, archive.server, "%p")  # fmt: skip


def archive_command(archive: Archive, max_parallel: int = DEFAULT_MAX_PARALLEL) -> str:
    """The `archive_command`: a few lines of shell in front of the WAL shipper (bulkhead.backup.shipper).

    PostgreSQL runs it in the data directory, once per segment. The segment's marker (written only after S3
    has the object) answers at once; while a shipper runs, it waits for the marker or the shipper's failure;
    with no shipper, `bulkhead db archive-wal` checks, starts one and waits.
    """
    from bulkhead.backup.shipper import LEDGER_ROOT, LOCK_NAME, ledger_name

    ledger = f"{LEDGER_ROOT}/{ledger_name(archive)}"
    endpoint = ["--endpoint-url", archive.endpoint_url] if archive.endpoint_url else []
    python_path = _command(archive, "bulkhead", "--log-json", "db", "archive-wal", "--archive", archive.url,
                           "--server", archive.server, *endpoint, "--max-parallel", str(max_parallel), "%p",
                           tool_args=False)  # fmt: skip
    return (
        f"d={shlex.quote(ledger)}; n=0; while [ $n -lt 600 ]; do "
        '[ -f "$d/%f" ] && exit 0; '
        f'flock -n -s -E 75 "$d/{LOCK_NAME}" true 2>/dev/null; [ $? -eq 75 ] || break; '
        '[ -f "$d/%f.failed" ] && { cat "$d/%f.failed" >&2; exit 1; }; '
        "sleep 0.05; n=$((n+1)); done; "
        f"exec {python_path}"
    )


def restore_command(archive: Archive) -> str:
    """The `restore_command` that fetches WAL during recovery, prefetching a few segments in parallel."""
    return _command(
        archive, "barman-cloud-wal-restore", "-p", str(WAL_PREFETCH), archive.url, archive.server, "%f", "%p"
    )


def replica_command(archive: Archive) -> str:
    """barman-cloud-restore of the newest base backup, less its target directory: how a member is rebuilt
    from the archive (Patroni's create_replica_method), so that rebuilding never loads the leader."""
    return _command(archive, "barman-cloud-restore", archive.url, archive.server, "latest")


def heal_command(archive: Archive) -> str:
    """`bulkhead db archive-heal`, less its --data-dir: what the new leader runs on promotion to archive the
    earlier timeline's segments a lost leader never did (bulkhead.backup.heal)."""
    endpoint = ["--endpoint-url", archive.endpoint_url] if archive.endpoint_url else []
    return _command(archive, "bulkhead", "--log-json", "db", "archive-heal", "--archive", archive.url,
                    "--server", archive.server, *endpoint, tool_args=False)  # fmt: skip


def server_settings(archive: Archive, archive_timeout: int = DEFAULT_ARCHIVE_TIMEOUT,
                    max_parallel: int = DEFAULT_MAX_PARALLEL) -> dict[str, str]:  # fmt: skip
    """Every postgresql.conf setting continuous archiving needs, as name -> value."""
    return {
        "wal_level": "replica",
        "archive_mode": "on",
        # A quiet server still ships its WAL at least this often: the bound on data lost (RPO).
        "archive_timeout": f"{archive_timeout}s",
        "archive_command": archive_command(archive, max_parallel),
        "restore_command": restore_command(archive),
    }


def conf_lines(settings: dict[str, str]) -> list[str]:
    """Settings as postgresql.conf lines, values quoted as PostgreSQL expects."""
    return [f"{name} = '{value.replace(chr(39), chr(39) * 2)}'" for name, value in settings.items()]
