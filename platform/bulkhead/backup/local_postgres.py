"""A PostgreSQL 15 server on this machine, run as the postgres user: for tests, benchmarks and drills.

PostgreSQL refuses to run as root, and `archive_command` runs as the server's user, so everything here
goes through `runuser -u postgres`, with data under a directory that user owns. The server archives
into the local cloud's S3 with the local cloud's credentials. What cannot be done raises
`LocalPostgresError`, one line, like every other Bulkhead error.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from bulkhead.backup.settings import Archive, conf_lines, server_settings
from bulkhead.errors import BulkheadError
from bulkhead.localcloud.aws import local_environment

PG_BIN = Path("/usr/lib/postgresql/15/bin")


class LocalPostgresError(BulkheadError):
    """A local PostgreSQL server did not start, recover or archive in time."""


def as_postgres(*command: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    environment = [f"{k}={v}" for k, v in (env or {}).items()]
    return subprocess.run(
        ["runuser", "-u", "postgres", "--", "env", *environment, *command],
        capture_output=True, text=True, check=check, timeout=120,
    )  # fmt: skip


class PgServer:
    """One PostgreSQL server run as the postgres user, its data under a directory postgres owns."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir
        self.port = port

    @property
    def conninfo(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    @property
    def pg_ctl(self) -> Path:
        return PG_BIN / "pg_ctl"

    def init(self, archive: Archive, archive_timeout: int = 60, settings: dict[str, str] | None = None,
             remote_password_auth: bool = False, initdb_args: tuple[str, ...] = ()) -> None:  # fmt: skip
        """initdb (trust on this machine's loopback), archiving into `archive`; with `remote_password_auth`,
        clients from anywhere else may connect with a password."""
        made = as_postgres(str(PG_BIN / "initdb"), "-D", str(self.data_dir), "-A", "trust", "-U", "postgres",
                           *initdb_args, check=False)  # fmt: skip
        if made.returncode != 0:
            said = [line for line in (made.stderr + made.stdout).splitlines() if line.strip()] or ["no output"]
            raise LocalPostgresError(f"initdb of {self.data_dir} failed: {said[-1].strip()}")
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n".join(conf_lines({**server_settings(archive, archive_timeout), **(settings or {})})) + "\n")
        if remote_password_auth:
            with (self.data_dir / "pg_hba.conf").open("a") as hba:
                hba.write("host all all 0.0.0.0/0 scram-sha-256\n")

    def start(self, listen: str = "127.0.0.1", environment: dict[str, str] | None = None) -> None:
        """Start and wait; archive_command gets `environment` (default: the local cloud's credentials)."""
        options = f"-p {self.port} -k {self.data_dir.parent} -c listen_addresses={listen}"
        log = self.data_dir.parent / f"pg-{self.port}.log"
        result = as_postgres(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-o", options, "-l", str(log), "-w", "-t", "300", "start",
            env=local_environment() if environment is None else environment, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            last = (log.read_text(errors="replace").strip().splitlines() or [result.stderr.strip()])[-1]
            raise LocalPostgresError(f"PostgreSQL on port {self.port} did not start: {last}; see {log}")

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5)

    def wait_until_primary(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with self.connect() as connection:
                    if not connection.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                        return
            except psycopg.OperationalError:
                pass
            time.sleep(0.2)
        raise LocalPostgresError(f"PostgreSQL on port {self.port} did not finish recovery within {timeout:.0f} s")

    def switch_and_wait_archived(self, timeout: float = 60) -> str:
        """Close the current WAL segment and wait until archive_command has shipped it."""
        with self.connect() as connection:
            segment = connection.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                archived = connection.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()[0]
                if archived and archived >= segment:
                    return segment
                time.sleep(0.2)
        raise LocalPostgresError(f"WAL {segment} was not archived within {timeout:.0f} s; see the server log")

    def kill(self) -> None:
        """SIGKILL the postmaster, as a host that loses its disk or power would."""
        pid_file = self.data_dir / "postmaster.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text().splitlines()[0])
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            time.sleep(0.5)  # backends notice the postmaster's death and exit

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "stop", check=False)


def postgres_workdir(prefix: str = "bulkhead-pg-") -> Path:
    """A fresh directory the postgres user owns (pytest's and mkdtemp's are root's only)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    shutil.chown(path, "postgres", "postgres")
    return path
