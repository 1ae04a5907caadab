"""Credential rotation on a real PostgreSQL 15 with its secrets in the local cloud's SSM, under a writer."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
import uuid

import boto3
import psycopg
import pytest

from bulkhead.backup.local_postgres import PgServer, postgres_workdir
from bulkhead.backup.settings import Archive
from bulkhead.localcloud import server
from bulkhead.localcloud.aws import LOCAL_CREDENTIALS
from bulkhead.ops import secrets

pytestmark = pytest.mark.postgres
PATH = "/bulkhead/eu-west-1/postgres/pg-eu-west-1"
# Not loopback's 127.0.0.1, which initdb trusts: here the password is checked (scram-sha-256).
ADDRESS = "127.0.0.2"


@pytest.fixture
def ssm(tmp_path):
    info = server.start(tmp_path / "moto")
    yield boto3.client("ssm", endpoint_url=info.endpoint, region_name="eu-west-1", **LOCAL_CREDENTIALS)
    server.stop(tmp_path / "moto")


@pytest.fixture
def database(ssm):
    """A primary whose superuser and apps' passwords are published as the initial primary publishes them."""
    workdir = postgres_workdir()
    pg = PgServer(workdir / "primary", server.free_port())
    pg.init(Archive(f"s3://unused-{uuid.uuid4().hex[:8]}/pg", "pg-test", None), remote_password_auth=True,
            settings={"archive_mode": "off"})  # fmt: skip
    pg.start(listen=f"127.0.0.1,{ADDRESS}")
    superuser, app = "su-" + uuid.uuid4().hex, "app-" + uuid.uuid4().hex
    with pg.connect() as connection:
        connection.execute(f"ALTER ROLE postgres PASSWORD '{superuser}'")
        connection.execute(f"CREATE ROLE app LOGIN PASSWORD '{app}'")
        connection.execute("CREATE TABLE ledger (id bigserial PRIMARY KEY, by_user text NOT NULL) ")
        connection.execute("ALTER TABLE ledger OWNER TO app")
    for name, value in (("superuser-password", superuser), ("app-password", app)):
        ssm.put_parameter(Name=f"{PATH}/{name}", Type="SecureString", Value=value)
    yield pg
    pg.stop()
    shutil.rmtree(workdir, ignore_errors=True)


def _login(pg, user: str, password: str) -> psycopg.Connection:
    return psycopg.connect(f"host={ADDRESS} port={pg.port} dbname=postgres user={user} connect_timeout=5",
                           password=password, autocommit=True)  # fmt: skip


class Writer(threading.Thread):
    """A consumer as the contract asks: each new connection re-reads the login, then commits a few rows."""

    def __init__(self, pg, ssm) -> None:
        super().__init__(daemon=True)
        self.pg, self.ssm = pg, ssm
        self.stop = threading.Event()
        self.committed, self.failed, self.users = 0, [], set()

    def run(self) -> None:
        while not self.stop.is_set():
            login = secrets.current_login(self.ssm, PATH)
            try:
                with _login(self.pg, login["user"], login["password"]) as connection:
                    for _ in range(5):
                        connection.execute("INSERT INTO ledger (by_user) VALUES (session_user)")
                        self.committed += 1
                self.users.add(login["user"])
            except psycopg.Error as error:
                self.failed.append(f"{login['user']}: {error}")
            time.sleep(0.01)


def test_rotate_app__twice_under_a_writer_fails_no_transaction_and_locks_the_old_logins_out(database, ssm):
    # Given a writer committing through the published login
    writer = Writer(database, ssm)
    writer.start()
    time.sleep(0.5)
    # When the apps' login is rotated twice (app -> app_green -> app_blue)
    lines: list[str] = []
    first = secrets.rotate_app(ssm, PATH, ADDRESS, database.port, grace=1.0, say=lines.append)
    time.sleep(0.5)
    second = secrets.rotate_app(ssm, PATH, ADDRESS, database.port, grace=1.0, say=lines.append)
    time.sleep(0.5)
    writer.stop.set()
    writer.join(timeout=10)
    # Then no transaction failed, every colour wrote, and the rows are the owner's whoever wrote them
    assert writer.failed == []
    assert (first["from"], first["to"], second["from"], second["to"]) == ("app", "app_green", "app_green", "app_blue")
    assert writer.users == {"app", "app_green", "app_blue"} and writer.committed > 100
    with database.connect() as connection:
        writers = {row[0] for row in connection.execute("SELECT DISTINCT by_user FROM ledger")}
        owner = connection.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'ledger'").fetchone()[0]
        roles = "SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname IN ('app', 'app_blue', 'app_green')"
        logins = dict(connection.execute(roles).fetchall())
    assert writers == {"app", "app_green", "app_blue"} and owner == "app"
    assert logins == {"app": False, "app_green": False, "app_blue": True}
    # And the published login is one SecureString whose user and password belong together
    parameter = ssm.get_parameter(Name=f"{PATH}/app-login", WithDecryption=True)["Parameter"]
    assert parameter["Type"] == "SecureString"
    login = json.loads(parameter["Value"])
    with _login(database, login["user"], login["password"]) as connection:
        assert connection.execute("SELECT current_user, session_user").fetchone() == ("app", "app_blue")
    assert len(lines) == 8 and not any(login["password"] in line for line in lines)


def test_secrets_list__shows_each_credential_its_use_and_age_but_no_value(database, ssm):
    rows = secrets.listing(ssm, PATH)
    assert [r["credential"] for r in rows] == ["app", "replication", "superuser"]
    assert rows[0]["type"] == "SecureString" and rows[0]["age_days"] < 1
    assert rows[1]["type"] == "missing"
    text = json.dumps(rows, default=str)
    for name in ("superuser-password", "app-password"):
        value = ssm.get_parameter(Name=f"{PATH}/{name}", WithDecryption=True)["Parameter"]["Value"]
        assert value not in text


def test_secrets_rotate__a_credential_that_does_not_rotate_here_is_refused_in_one_line(project_dir):
    done = subprocess.run([sys.executable, "-m", "bulkhead.cli", "secrets", "rotate", "replication", "--region",
                           "eu-west-1", "--host", "127.0.0.1"], capture_output=True, text=True, cwd=project_dir,
                          timeout=60)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "replication does not rotate with this command" in done.stderr
