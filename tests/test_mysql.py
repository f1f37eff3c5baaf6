"""The MySQL/MariaDB kind: descriptor, handle and probe, on Docker, local and external servers.

Docker runs ``svcenv-test/mariadb:10`` (built from Debian's packages by
tests/images/build.sh); local runs Debian's ``mariadbd``; external is exercised
against servers these tests start themselves.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pymysql
import pytest

import svcenv
from svcenv import ConfigurationError, Environment, MySQL, MySQLHandle, ServiceStartError
from svcenv.descriptors import KINDS

from .conftest import LeakCheck, containers, need

OWNED = ["docker", "local"]


def _local_available() -> None:
    from svcenv.backends.local import LocalBackend

    reason = LocalBackend().supports(MySQL())
    if reason:
        need(reason)


def _mariadbd_pids() -> set[int]:
    """Every running ``mariadbd`` on this machine (zombies excluded)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() not in ("mariadbd", "mysqld"):
                continue
            if "State:\tZ" in (entry / "status").read_text():
                continue
        except OSError:
            continue
        pids.add(int(entry.name))
    return pids


def _running(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


@pytest.fixture(params=OWNED)
def backend(request: pytest.FixtureRequest) -> Iterator[tuple[str, dict[str, str]]]:
    """``(backend, labels)``; on docker the labels are the leak check's, on local no mariadbd may be left."""
    name: str = request.param
    if name == "docker":
        request.getfixturevalue("mysql_image")
        check: LeakCheck = request.getfixturevalue("leaks")
        yield name, check.labels
        return
    _local_available()
    before = _mariadbd_pids()
    yield name, {"svcenv.test": uuid.uuid4().hex[:12]}
    deadline = time.monotonic() + 10
    while (_mariadbd_pids() - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _mariadbd_pids() - before == set(), "a mariadbd this test started is still running"


def _handle(env: Environment, key: str | MySQL = "mysql") -> MySQLHandle:
    handle = env[key]
    assert isinstance(handle, MySQLHandle)
    return handle


def _connect_url(url: str) -> pymysql.connections.Connection:
    """A PyMySQL connection from a ``mysql://`` URL (what a program reading MYSQL_URL would do)."""
    parts = urlsplit(url)
    assert parts.scheme == "mysql"
    return pymysql.connect(
        host=parts.hostname,
        port=parts.port or 3306,
        user=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        database=unquote(parts.path.removeprefix("/")),
        connect_timeout=5,
    )


# -- on a server svcenv owns --------------------------------------------------------------------


def test_start_connect_query_env_vars_and_leave_nothing(backend: tuple[str, dict[str, str]]) -> None:
    name, labels = backend
    began = time.monotonic()
    with Environment(MySQL(), backend=name, labels=labels) as env:
        started = time.monotonic() - began
        handle = _handle(env)
        assert handle.backend == name
        with handle.connect() as conn, conn.cursor() as cursor:
            cursor.execute("CREATE TABLE t (id INT PRIMARY KEY, name VARCHAR(20))")
            cursor.execute("INSERT INTO t VALUES (1, 'one'), (2, 'two')")
            conn.commit()
            cursor.execute("SELECT name FROM t ORDER BY id")
            assert cursor.fetchall() == (("one",), ("two",))
            cursor.execute("SELECT DATABASE(), CURRENT_USER()")
            assert cursor.fetchone() == ("test", "test@%")

        variables = env.env_vars()
        assert {"MYSQL_URL", "MYSQL_HOST", "MYSQL_PORT", "MYSQL_USER", "MYSQL_PASSWORD", "MYSQL_DATABASE"} <= set(
            variables
        )
        assert variables["MYSQL_PORT"] == str(handle.port)
        with _connect_url(variables["MYSQL_URL"]) as conn, conn.cursor() as cursor:
            cursor.execute("SELECT COUNT(*) FROM t")
            assert cursor.fetchone() == (2,)
        for secret in (handle.password, handle.root_password):
            assert [k for k, v in variables.items() if secret in v] == (
                ["MYSQL_URL", "MYSQL_PASSWORD"] if secret == handle.password else []
            )
            assert secret not in repr(handle)
            assert secret not in repr(handle.descriptor)

        # root logs in over TCP with the root password, and only with it.
        with pymysql.connect(host=handle.host, port=handle.port, user="root", password=handle.root_password) as root:
            assert root.open
        with pytest.raises(pymysql.err.OperationalError) as refused:
            pymysql.connect(host=handle.host, port=handle.port, user="root", password="", connect_timeout=5)
        assert refused.value.args[0] == 1045

        pid = int(handle.id) if name == "local" else None
        if pid is not None:
            assert _running(pid)
        env_id = env.id
        print(f"\nmysql on {name}: ready in {started:.2f}s")
    if name == "docker":
        assert containers(f"svcenv.environment={env_id}") == []
    else:
        assert pid is not None
        assert not _running(pid)


def test_root_user_gets_the_root_password_and_no_other_user(backend: tuple[str, dict[str, str]]) -> None:
    name, labels = backend
    db = MySQL(user="root", dbname="app_db")
    resolved = db.resolve()
    assert "MYSQL_USER" not in resolved.env
    assert "MYSQL_PASSWORD" not in resolved.env
    with Environment(db, backend=name, labels=labels) as env:
        handle = _handle(env, db)
        assert handle.user == "root"
        assert handle.password == handle.root_password
        with handle.connect() as conn, conn.cursor() as cursor:
            cursor.execute("SELECT DATABASE(), CURRENT_USER()")
            assert cursor.fetchone() == ("app_db", "root@%")
            cursor.execute("SELECT COUNT(*) FROM mysql.user WHERE user NOT IN ('root', 'mariadb.sys')")
            (others,) = cursor.fetchone()
            assert others in (0, 1)  # local: the unix_socket account of the OS user, if not root


def test_given_passwords_are_used(backend: tuple[str, dict[str, str]]) -> None:
    name, labels = backend
    db = MySQL(name="shop", user="app", password="p@ss:/w?rd#1", root_password="r00t pw", dbname="shop")
    with Environment(db, backend=name, labels=labels) as env:
        handle = _handle(env, db)
        assert handle.password == "p@ss:/w?rd#1"
        assert "p%40ss%3A%2Fw%3Frd%231" in handle.url  # quoted in the URL
        with _connect_url(handle.url) as conn, conn.cursor() as cursor:
            cursor.execute("SELECT CURRENT_USER()")
            assert cursor.fetchone() == ("app@%",)
        with pymysql.connect(host=handle.host, port=handle.port, user="root", password="r00t pw") as root:
            assert root.open
        assert env.env_vars()["SHOP_URL"] == handle.url


# -- external -----------------------------------------------------------------------------------


@pytest.fixture(params=OWNED)
def server(request: pytest.FixtureRequest) -> Iterator[MySQLHandle]:
    """A MariaDB these tests started (on local, or on docker), to be used as an external server."""
    labels = {"svcenv.test": uuid.uuid4().hex[:12]}
    if request.param == "docker":
        request.getfixturevalue("mysql_image")
        labels = request.getfixturevalue("leaks").labels
    else:
        _local_available()
    with Environment(MySQL(), backend=request.param, labels=labels) as env:
        yield _handle(env)


def test_external_with_the_right_url_connects(server: MySQLHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SVCENV_MYSQL_URL", server.url)
    with Environment(MySQL(), backend="external") as env:
        handle = _handle(env)
        assert handle.backend == "external"
        assert (handle.user, handle.password, handle.dbname, handle.port) == (
            server.user,
            server.password,
            server.dbname,
            server.port,
        )
        with handle.connect() as conn, conn.cursor() as cursor:
            cursor.execute("SELECT 41 + 1")
            assert cursor.fetchone() == (42,)
        assert env.env_vars()["MYSQL_URL"] == server.url


def test_external_wrong_password_fails_fast_naming_the_credentials(
    server: MySQLHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SVCENV_MYSQL_URL", f"mysql://test:wrong@127.0.0.1:{server.port}/test")
    env = Environment(MySQL(), backend="external")
    began = time.monotonic()
    with pytest.raises(ServiceStartError) as raised:
        env.start()
    assert time.monotonic() - began < 10
    message = str(raised.value)
    assert "credentials" in message
    assert "Access denied for user 'test'" in message
    assert "SVCENV_MYSQL_URL" in message
    assert "wrong" not in message.replace("(using password: YES)", "")
    assert server.password not in message
    assert server.exit_status() is None  # svcenv leaves a server it does not own alone


def test_external_url_without_port_defaults_to_3306(monkeypatch: pytest.MonkeyPatch) -> None:
    from svcenv.backends.external import parse_url

    target = parse_url(MySQL(), "mysql://u:p%40w@db.example/app")
    assert (target.scheme, target.host, target.port) == ("mysql", "db.example", 3306)
    assert dict(target.credentials) == {"scheme": "mysql", "user": "u", "password": "p@w", "dbname": "app"}
    with pytest.raises(ConfigurationError, match="mysql://"):
        parse_url(MySQL(), "postgresql://u:p@db.example/app")


# -- images -------------------------------------------------------------------------------------


def test_missing_image_fails_naming_the_image(leaks: LeakCheck) -> None:
    assert os.environ.get("SVCENV_PULL") == "never"
    env = Environment(MySQL(image="svcenv-test/nope:1"), backend="docker", labels=leaks.labels)
    began = time.monotonic()
    with pytest.raises(ServiceStartError) as raised:
        env.start()
    assert time.monotonic() - began < 30
    assert "svcenv-test/nope:1" in str(raised.value)
    assert env.state == "stopped"


def test_image_variable_and_default() -> None:
    assert MySQL.default_image == "mariadb:11"
    assert MySQL(image="mysql:8").effective_image == "mysql:8"


# -- the descriptor -----------------------------------------------------------------------------


def test_resolve_follows_the_official_image_contract() -> None:
    db = MySQL()
    assert KINDS["mysql"] is MySQL
    first, second = db.resolve(), db.resolve()
    password, root_password = first.secrets["password"], first.secrets["root_password"]
    assert password != second.secrets["password"]  # generated per environment
    assert password != root_password
    # Passwords travel as files (the images' *_FILE contract), never in the container's environment.
    root_file, user_file = first.env["MYSQL_ROOT_PASSWORD_FILE"], first.env["MYSQL_PASSWORD_FILE"]
    assert first.env["MARIADB_ROOT_PASSWORD_FILE"] == root_file
    assert first.env["MARIADB_PASSWORD_FILE"] == user_file
    assert first.files[root_file][0] == root_password.encode()
    assert first.files[user_file][0] == password.encode()
    assert not {"MYSQL_ROOT_PASSWORD", "MYSQL_PASSWORD", "MARIADB_ROOT_PASSWORD", "MARIADB_PASSWORD"} & set(first.env)
    assert all(password not in value and root_password not in value for value in first.env.values())
    assert first.env["MYSQL_USER"] == first.env["MARIADB_USER"] == "test"
    assert first.env["MYSQL_DATABASE"] == first.env["MARIADB_DATABASE"] == "test"
    assert first.ports == (3306,)
    assert password not in repr(first)
    assert root_password not in repr(first)
    assert db.effective_timeout == 60.0


def test_given_values_and_env_are_kept() -> None:
    resolved = MySQL(password="pw", root_password="rpw", env={"TZ": "UTC", "MYSQL_USER": "ignored"}).resolve()
    assert resolved.secrets == {"password": "pw", "root_password": "rpw"}
    assert resolved.env["TZ"] == "UTC"
    assert resolved.env["MYSQL_USER"] == "test"  # the descriptor's fields win
    root = MySQL(user="root", password="same").resolve()
    assert root.secrets == {"password": "same", "root_password": "same"}
    assert root.files[root.env["MYSQL_ROOT_PASSWORD_FILE"]][0] == b"same"
    assert "MYSQL_USER" not in root.env
    assert "MARIADB_PASSWORD_FILE" not in root.env
    assert MySQL(user="root", root_password="r").resolve().secrets["password"] == "r"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"root_password": 123}, "root_password must be a string"),
        ({"password": b"pw"}, "password must be a string"),
        ({"user": None}, "user must be a string"),
        ({"dbname": ""}, "must not be empty"),
        ({"user": "root", "password": "a", "root_password": "b"}, "not two different ones"),
    ],
)
def test_bad_values_are_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        MySQL(**kwargs)  # type: ignore[arg-type]


def test_import_svcenv_does_not_import_pymysql() -> None:
    code = "import sys, svcenv, svcenv.mysql, svcenv.backends.local; print('pymysql' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"
    assert svcenv.MySQL is MySQL
