"""The external backend against real servers this module starts itself: a postgres and a redis-server.

The servers stand in for CI service containers or a shared dev database: svcenv
is only told their URLs. They run from the system binaries (Debian's
postgresql-15 and redis-server packages); without them the tests skip locally
and fail under ``CI=true``.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import psycopg
import pytest
import redis

from svcenv import (
    BackendUnavailable,
    ConfigurationError,
    Elasticsearch,
    Environment,
    Postgres,
    Redis,
    Service,
    ServiceStartError,
    TeardownWarning,
)
from svcenv.backends.external import (
    ExternalBackend,
    configured_url,
    parse_url,
    redact,
    url_variable,
)

from .conftest import need

LOOPBACK = "127.0.0.1"
# Characters that must be percent-encoded in a URL, to prove credentials round-trip.
PG_USER = "svc_admin"
PG_PASSWORD = "p@ss:w/rd%?#&"
PG_DBNAME = "appdb"
REDIS_PASSWORD = "x"
SECRET = "s3cr3t-pw"
INITDB_OPTIONS = ("-A", "scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--no-sync")
REDIS_OPTIONS = ("--save", "", "--appendonly", "no", "--requirepass", REDIS_PASSWORD)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _postgres_bin() -> Path | None:
    for candidate in ["/usr/lib/postgresql/15/bin", *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]:
        if os.access(f"{candidate}/postgres", os.X_OK) and os.access(f"{candidate}/initdb", os.X_OK):
            return Path(candidate)
    return None


def _postgres_settings(tmp: Path) -> list[str]:
    """Loopback TCP only, the socket in the private dir, no durability (nothing here must survive)."""
    settings = {
        "listen_addresses": LOOPBACK,
        "unix_socket_directories": str(tmp),
        "fsync": "off",
        "full_page_writes": "off",
    }
    return [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]


@dataclass
class Server:
    """A server process this module started, in a private temp dir."""

    proc: subprocess.Popen[bytes]
    port: int
    tmp: Path
    log: IO[bytes]

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int) -> None:
        """Stop the process (``sig``, then SIGKILL) and remove its directory; assert both are gone."""
        if self.running():
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
        assert self.proc.poll() is not None
        assert not self.tmp.exists()

    def log_text(self) -> str:
        return (self.tmp / "server.log").read_text(errors="replace")


def _wait_until(ready: Any, server: Server, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if not server.running():
            break
        try:
            ready()
            return
        except Exception as exc:
            last = exc
            time.sleep(0.1)
    log = server.log_text()
    server.stop(signal.SIGKILL)
    pytest.fail(f"{what} did not come up (last error: {last}); its log:\n{log}")


def _postgres_account() -> dict[str, Any]:
    """Popen arguments to run as the ``postgres`` account when we are root (Postgres refuses root)."""
    if os.geteuid() != 0:
        return {}
    try:
        account = pwd.getpwnam("postgres")
    except KeyError:
        need("running as root and there is no 'postgres' account to run the test postgres as")
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


@dataclass
class PostgresServer(Server):
    def url(self, password: str = PG_PASSWORD, dbname: str = PG_DBNAME) -> str:
        return f"postgresql://{PG_USER}:{quote(password, safe='')}@{LOOPBACK}:{self.port}/{dbname}"

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url(), autocommit=True, connect_timeout=2)


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[PostgresServer]:
    """A real postgres on 127.0.0.1 with role ``svc_admin`` (password :data:`PG_PASSWORD`) and db ``appdb``."""
    bindir = _postgres_bin()
    if bindir is None:
        need("no postgres server binaries under /usr/lib/postgresql/*/bin (apt-get install postgresql)")
    account = _postgres_account()
    tmp = Path(tempfile.mkdtemp(prefix="svcenv-external-pg-"))
    try:
        _initdb(bindir, account, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    port = _free_port()
    log = (tmp / "server.log").open("wb")
    proc = subprocess.Popen(
        [bindir / "postgres", "-D", tmp / "data", "-p", str(port), *_postgres_settings(tmp)],
        stdout=log,
        stderr=subprocess.STDOUT,
        **account,
    )
    server = PostgresServer(proc, port, tmp, log)

    def create_db() -> None:
        with psycopg.connect(server.url(dbname="postgres"), autocommit=True, connect_timeout=1) as conn:
            conn.execute(f"CREATE DATABASE {PG_DBNAME}")

    _wait_until(create_db, server, "the test postgres")
    yield server
    server.stop(signal.SIGINT)  # fast shutdown: disconnects clients and exits


def _initdb(bindir: Path, account: dict[str, Any], tmp: Path) -> None:
    """A cluster in ``tmp/data`` whose superuser is :data:`PG_USER`, owned by ``account``."""
    pwfile = tmp / "pwfile"
    pwfile.write_text(PG_PASSWORD + "\n")
    for path in (tmp, pwfile):
        if account:
            os.chown(path, account["user"], account["group"])
    initdb = subprocess.run(
        [bindir / "initdb", "-D", tmp / "data", "-U", PG_USER, f"--pwfile={pwfile}", *INITDB_OPTIONS],
        capture_output=True,
        text=True,
        timeout=120,
        **account,
    )
    if initdb.returncode != 0:
        pytest.fail(f"initdb failed:\n{initdb.stdout}\n{initdb.stderr}")


@dataclass
class RedisServer(Server):
    def url(self, password: str = REDIS_PASSWORD, db: int = 0) -> str:
        return f"redis://:{password}@{LOOPBACK}:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis.from_url(self.url(db=db), socket_timeout=2)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on 127.0.0.1, no persistence, AUTH password :data:`REDIS_PASSWORD`."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.access(binary, os.X_OK):
        need("no redis-server binary (apt-get install redis-server)")
    tmp = Path(tempfile.mkdtemp(prefix="svcenv-external-redis-"))
    port = _free_port()
    log = (tmp / "server.log").open("wb")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", LOOPBACK, "--dir", str(tmp), *REDIS_OPTIONS],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = RedisServer(proc, port, tmp, log)

    def ping() -> None:
        with server.client() as client:
            client.ping()

    _wait_until(ping, server, "the test redis-server")
    yield server
    server.stop(signal.SIGTERM)


@pytest.fixture(autouse=True)
def no_outside_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees only the SVCENV_*_URL variables it sets itself."""
    for key in list(os.environ):
        if key.startswith("SVCENV_") and key.endswith("_URL"):
            monkeypatch.delenv(key)


def _stop_quietly(env: Environment) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", TeardownWarning)
        env.stop()


# -- URLs and their variables (no server needed) -------------------------------------------------


def test_url_variable_follows_the_service_name() -> None:
    assert url_variable("postgres") == "SVCENV_POSTGRES_URL"
    assert url_variable("elasticsearch") == "SVCENV_ELASTICSEARCH_URL"
    assert url_variable("postgres-replica") == "SVCENV_POSTGRES_REPLICA_URL"
    assert url_variable("pg.replica_2") == "SVCENV_PG_REPLICA_2_URL"


def test_configured_url_reads_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert configured_url("pg-replica") is None
    monkeypatch.setenv("SVCENV_PG_REPLICA_URL", "")
    assert configured_url("pg-replica") is None, "an empty variable counts as unset"
    monkeypatch.setenv("SVCENV_PG_REPLICA_URL", "postgresql://u:p@db:5432/x")
    assert configured_url("pg-replica") == "postgresql://u:p@db:5432/x"


@pytest.mark.parametrize(
    ("service", "url", "expected"),
    [
        (
            Postgres(),
            "postgres://bob:p%40ss@db.example:6543/shop",
            ("postgresql", "db.example", 6543, {"user": "bob", "password": "p@ss", "dbname": "shop"}),
        ),
        (
            Postgres(user="u0", dbname="d0", password="given"),
            "postgresql://db",
            ("postgresql", "db", 5432, {"user": "u0", "password": "given", "dbname": "d0"}),
        ),
        (
            Postgres(),
            "postgresql://db/x",
            ("postgresql", "db", 5432, {"user": "postgres", "password": "", "dbname": "x"}),
        ),
        (Redis(), "rediss://:pw@cache:6380/3", ("rediss", "cache", 6380, {"password": "pw", "db": "3"})),
        (Redis(), "redis://alice:pw@cache", ("redis", "cache", 6379, {"user": "alice", "password": "pw", "db": "0"})),
        (Elasticsearch(), "http://search:9200/", ("http", "search", 9200, {})),
        (Elasticsearch(), "https://search.example", ("https", "search.example", 443, {})),
        (Service("mq", image="unused", ports=(5672,)), "amqp://broker:5672", ("amqp", "broker", 5672, {})),
    ],
)
def test_parse_url_accepts(service: Service, url: str, expected: tuple[str, str, int, dict[str, str]]) -> None:
    target = parse_url(service, url)
    scheme, host, port, credentials = expected
    assert (target.scheme, target.host, target.port) == (scheme, host, port)
    assert dict(target.credentials) == {"scheme": scheme, **credentials}


@pytest.mark.parametrize(
    ("service", "url", "problem"),
    [
        (Postgres(), f"mysql://u:{SECRET}@db:3306/x", "a postgres URL starts with postgresql:// or postgres://"),
        (Postgres(), f"postgresql://u:{SECRET}@db:port/x", "port that is not a number"),
        (Postgres(), f"postgresql://u:{SECRET}@db:99999/x", "port that is not a number"),
        (Postgres(), f"postgresql://u:{SECRET}@/x", "names no host"),
        (Postgres(), f"postgresql://u:{SECRET}", "port that is not a number"),
        (Postgres(), f"postgresql://u:{SECRET}/x@db/x", "percent-encode"),
        (Postgres(), f"postgresql://u:{SECRET}@db/x?sslmode=require&password={SECRET}", "PGSSLMODE"),
        (Postgres(), f"u:{SECRET}@db:5432", "not a URL"),
        (Redis(), f"http://:{SECRET}@cache:6379", "a redis URL starts with redis:// or rediss://"),
        (Redis(), f"redis://:{SECRET}@cache:6379/zero", "not a database number"),
        (Elasticsearch(), "http://search", "names no port"),
        (Elasticsearch(), f"http://elastic:{SECRET}@search:9200", "carries credentials"),
        (Service("web", image="unused", ports=(80,)), "http://web", "names no port"),
        (Service("web", image="unused", ports=(80,)), "http://web:80/api", "has a path"),
    ],
)
def test_parse_url_rejects_without_showing_the_password(service: Service, url: str, problem: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        parse_url(service, url, url_variable(service.name))
    message = str(raised.value)
    assert problem in message
    assert f"service {service.name!r}" in message
    assert url_variable(service.name) in message
    assert SECRET not in message
    if SECRET in url and "://" in url:
        assert "***" in message


def test_redact_hides_password_query_values_and_malformed_ports() -> None:
    assert redact("postgresql://u:pw@h:1/d?sslmode=require#frag") == "postgresql://u:***@h:1/d?sslmode=***"
    assert redact("redis://h:6379/0") == "redis://h:6379/0"
    assert redact("postgresql://u:pw") == "postgresql://u:***"
    assert "pw" not in redact("pw")


# -- availability --------------------------------------------------------------------------------


def test_unconfigured_services_are_unavailable_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = ExternalBackend()
    with pytest.raises(BackendUnavailable, match="SVCENV_<NAME>_URL"):
        backend.check()
    assert backend.supports("postgres") == "SVCENV_POSTGRES_URL is not set"

    monkeypatch.setenv("SVCENV_POSTGRES_URL", "postgresql://u:p@db/x")
    backend.check()
    assert backend.supports("postgres") is None
    assert backend.supports("redis") == "SVCENV_REDIS_URL is not set"
    with pytest.raises(BackendUnavailable, match=r"'redis' has no URL: SVCENV_REDIS_URL is not set"):
        backend.create(Redis().resolve(), {})

    with_argument = ExternalBackend(urls={"cache": "redis://cache"})
    with_argument.check()
    assert with_argument.supports("cache") is None
    assert "no entry for 'redis'" in (with_argument.supports("redis") or "")


def test_a_service_without_url_fails_the_start_naming_the_variable(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SVCENV_POSTGRES_URL", postgres_server.url())
    env = Environment(Postgres(), Redis(), backend=ExternalBackend())
    with pytest.raises(BackendUnavailable, match="service 'redis' cannot run on the external backend") as raised:
        env.start()
    assert "SVCENV_REDIS_URL is not set" in str(raised.value)
    assert env.state == "stopped"


# -- on the real servers -------------------------------------------------------------------------


def test_environment_uses_running_servers_and_leaves_them_and_their_data(
    postgres_server: PostgresServer, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SVCENV_POSTGRES_URL", postgres_server.url())
    monkeypatch.setenv("SVCENV_REDIS_URL", redis_server.url(db=2))
    pg, cache = Postgres(), Redis()
    env = Environment(pg, cache, backend=ExternalBackend()).start()
    try:
        handle = env[pg]
        assert (handle.backend, handle.host, handle.port) == ("external", LOOPBACK, postgres_server.port)
        assert (handle.user, handle.password, handle.dbname) == (PG_USER, PG_PASSWORD, PG_DBNAME)
        assert PG_PASSWORD not in repr(handle)
        assert PG_PASSWORD not in handle.id
        assert "not available" in handle.logs()
        assert handle.exit_status() is None
        with handle.connect(autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (v text)")
            conn.execute("INSERT INTO kept VALUES ('written through svcenv')")

        variables = env.env_vars()
        assert variables["PGPASSWORD"] == PG_PASSWORD
        with psycopg.connect(variables["DATABASE_URL"]) as conn:
            assert conn.execute("SELECT current_user, current_database()").fetchone() == (PG_USER, PG_DBNAME)

        client = env[cache].client()
        client.set("kept", "written through svcenv")
        assert client.get("kept") == b"written through svcenv"
        client.close()
        assert variables["REDIS_URL"] == redis_server.url(db=2)
    finally:
        _stop_quietly(env)

    assert postgres_server.running()
    assert redis_server.running()
    with postgres_server.connect() as conn:
        assert conn.execute("SELECT v FROM kept").fetchall() == [("written through svcenv",)]
        conn.execute("DROP TABLE kept")
    with redis_server.client(db=2) as client:
        assert client.get("kept") == b"written through svcenv"
        client.delete("kept")


def test_urls_argument_wins_over_the_variable(postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SVCENV_POSTGRES_URL", "postgresql://nobody:wrong@192.0.2.1:1/none")
    pg = Postgres(timeout=10)
    with Environment(pg, backend=ExternalBackend(urls={"postgres": postgres_server.url()})) as env:
        assert env[pg].port == postgres_server.port
        with env[pg].connect() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_dashed_service_name_reads_its_own_variable(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SVCENV_PG_REPLICA_URL", postgres_server.url(dbname="postgres"))
    replica = Postgres(name="pg-replica")
    with Environment(replica, backend=ExternalBackend()) as env:
        assert env.env_vars()["PG_REPLICA_URL"] == postgres_server.url(dbname="postgres")
        with env[replica].connect() as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("postgres",)


def test_redis_acl_user_from_the_url(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    with redis_server.client() as admin:
        admin.acl_setuser("tester", enabled=True, passwords=["+t3st pw"], keys=["*"], commands=["+@all"])
    try:
        monkeypatch.setenv("SVCENV_REDIS_URL", f"redis://tester:{quote('t3st pw')}@{LOOPBACK}:{redis_server.port}/5")
        cache = Redis()
        with Environment(cache, backend=ExternalBackend()) as env, env[cache].client() as client:
            assert client.acl_whoami() == "tester"
            assert client.connection_pool.connection_kwargs["db"] == 5
    finally:
        with redis_server.client() as admin:
            admin.acl_deluser("tester")


def test_wrong_password_fails_the_start_with_the_authentication_error(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SVCENV_POSTGRES_URL", postgres_server.url(password=SECRET))
    env = Environment(Postgres(timeout=2), backend=ExternalBackend())
    began = time.monotonic()
    with pytest.raises(ServiceStartError) as raised:
        env.start()
    assert time.monotonic() - began < 15
    message = str(raised.value)
    assert "external backend" in message
    assert "password authentication failed" in message
    assert SECRET not in message
    assert env.state == "stopped"
    assert postgres_server.running()


def test_malformed_url_fails_the_start_without_showing_the_password(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SVCENV_POSTGRES_URL", f"postgresql://{PG_USER}:{SECRET}@{LOOPBACK}:notaport/{PG_DBNAME}")
    env = Environment(Postgres(), backend=ExternalBackend())
    with pytest.raises(ServiceStartError) as raised:
        env.start()
    message = str(raised.value)
    assert "SVCENV_POSTGRES_URL" in message
    assert "port that is not a number" in message
    assert SECRET not in message
    assert postgres_server.running()


def test_attached_environment_keeps_the_url_credentials(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SVCENV_POSTGRES_URL", postgres_server.url())
    pg = Postgres()
    with Environment(pg, backend=ExternalBackend()) as env:
        attached = Environment.attach(env.snapshot(), pg)
        assert attached[pg].url == env[pg].url
        with attached[pg].connect() as conn:
            assert conn.execute("SELECT current_user").fetchone() == (PG_USER,)
        attached.stop()


def test_plugin_never_flushes_foreign_data_on_an_external_redis(
    redis_server: RedisServer, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    with redis_server.client(db=1) as client:
        client.set("theirs", "precious")
    pytester.makepyfile(test_ext="def test_it(redis_client):\n    redis_client.set('mine', '1')\n")
    monkeypatch.setenv("SVCENV_REDIS_URL", redis_server.url())
    try:
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--svcenv-backend", "external")
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines(["*logical db 1 of the external server already holds 1 keys*"])
        with redis_server.client(db=1) as client:
            assert client.get("theirs") == b"precious"
            client.delete("theirs")
        # An empty db is svcenv's to use: the same test now passes, and leaves the db empty.
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--svcenv-backend", "external")
        result.assert_outcomes(passed=1)
        with redis_server.client(db=1) as client:
            assert client.dbsize() == 0
    finally:
        with redis_server.client(db=1) as client:
            client.flushdb()
