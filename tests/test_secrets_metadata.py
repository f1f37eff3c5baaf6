"""Secrets stay out of a container's argv and metadata, asserted on real containers and images.

A Redis password is in a config file copied into the container before it starts,
not on ``redis-server``'s command line (``ps`` on the host) nor in ``docker
inspect``. The Postgres cache seed gets its password through
``POSTGRES_PASSWORD_FILE`` (removed before ``docker commit``), so the committed
image's metadata (``Config``, ``ContainerConfig``) holds no password.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import redis

from svcenv import Environment, Postgres, Redis
from svcenv.backends import pgcache
from svcenv.backends.docker import DockerBackend

from .conftest import LeakCheck, docker


def host_cmdlines() -> list[bytes]:
    """The argv of every process this host's /proc shows (a container's processes among them)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            found.append(cmdline.read_bytes())
        except OSError:  # the process ended meanwhile
            continue
    return found


def test_a_redis_password_is_in_no_argv_and_no_inspect(leaks: LeakCheck) -> None:
    with Environment(Redis(), backend="docker", labels=leaks.labels) as env:
        handle = env["redis"]
        password = handle.password
        assert len(password) >= 22
        inspected = docker("inspect", handle.id)
        assert password not in inspected, "the password is in `docker inspect`"
        assert "requirepass" not in inspected
        cmdlines = host_cmdlines()
        assert any(b"redis-server" in line for line in cmdlines), "no redis-server process seen from the host"
        assert not [line for line in cmdlines if password.encode() in line], "the password is in a process's argv"

        with redis.Redis(host=handle.host, port=handle.port, password=password, socket_timeout=5) as client:
            assert client.ping()
            assert client.config_get("save") == {"save": ""}
            assert client.config_get("appendonly") == {"appendonly": "no"}
        with (
            redis.Redis(host=handle.host, port=handle.port, socket_timeout=5) as anonymous,
            pytest.raises(redis.AuthenticationError),
        ):
            anonymous.ping()
        with (
            redis.Redis(host=handle.host, port=handle.port, password="wrong", socket_timeout=5) as wrong,
            pytest.raises(redis.AuthenticationError),
        ):
            wrong.ping()


def test_a_redis_password_redis_conf_must_quote_works(leaks: LeakCheck) -> None:
    password = 'p "w\\ d#x'
    with (
        Environment(Redis(password=password), backend="docker", labels=leaks.labels) as env,
        redis.Redis(host=env["redis"].host, port=env["redis"].port, password=password, socket_timeout=5) as client,
    ):
        assert client.ping()
        assert password not in docker("inspect", env["redis"].id)


def test_a_redis_descriptor_command_still_runs_after_the_config_file(leaks: LeakCheck) -> None:
    rd = Redis(command=("redis-server", "--maxmemory", "5mb"))
    with Environment(rd, backend="docker", labels=leaks.labels) as env:
        handle = env["redis"]
        with redis.Redis(host=handle.host, port=handle.port, password=handle.password, socket_timeout=5) as client:
            assert client.config_get("maxmemory") == {"maxmemory": str(5 * 1024 * 1024)}
        assert handle.password
        assert handle.password not in docker("inspect", handle.id)


def test_a_fresh_cache_image_keeps_no_seed_password(leaks: LeakCheck, monkeypatch: pytest.MonkeyPatch) -> None:
    used: list[str] = []
    original = pgcache.seed_password

    def recorded() -> str:
        used.append(original())
        return used[-1]

    monkeypatch.setattr(pgcache, "seed_password", recorded)
    pg = Postgres(dbname=f"meta_{uuid.uuid4().hex[:10]}")  # a new key: the cache is built now
    backend = DockerBackend()
    backend.check()
    key = pgcache.cache_key(backend.client, pg.resolve())
    try:
        with Environment(pg, backend="docker", labels=leaks.labels) as env:
            handle = env["postgres"]
            assert used, "no cache seed ran: the key was not new"
            image = json.loads(docker("inspect", "-f", "{{json .Config.Image}}", handle.id))
            assert image == f"{pgcache.CACHE_REPOSITORY}:{key}"
            with handle.connect() as conn:
                assert conn.execute("select 1").fetchone() == (1,)
            assert handle.password not in docker("inspect", handle.id)
        (seed,) = used
        inspected = docker("image", "inspect", f"{pgcache.CACHE_REPOSITORY}:{key}")
        assert seed not in inspected, "the seed's password is in the cache image's metadata"
        (attrs,) = json.loads(inspected)
        for section in ("Config", "ContainerConfig"):
            for entry in (attrs.get(section) or {}).get("Env") or []:
                assert not entry.startswith("POSTGRES_PASSWORD="), f"{section}.Env has {entry.split('=')[0]}"
        # Nor in the committed filesystem: the password file was removed before the commit.
        probe = f"test ! -e {pgcache.SEED_PASSWORD_FILE} && echo gone"
        ran = docker("run", "--rm", "--entrypoint", "sh", f"{pgcache.CACHE_REPOSITORY}:{key}", "-c", probe)
        assert ran.strip() == "gone"
    finally:
        pgcache.clear(backend.client, key)
        backend.close()
    assert not backend_images(key)


def backend_images(key: str) -> list[str]:
    return docker("images", "-q", "--filter", f"label={pgcache.KEY_LABEL}={key}").split()


def test_mysql_passwords_are_in_no_inspect_and_no_argv(leaks: LeakCheck, mysql_image: str) -> None:
    from svcenv import MySQL

    with Environment(MySQL(), backend="docker", labels=leaks.labels) as env:
        handle = env["mysql"]
        inspected = docker("inspect", handle.id)
        for secret in (handle.password, handle._resolved.secrets["root_password"]):
            assert len(secret) >= 22
            assert secret not in inspected, "a MySQL password is in `docker inspect`"
            assert not [line for line in host_cmdlines() if secret.encode() in line], "a password is in an argv"
        assert "MYSQL_ROOT_PASSWORD_FILE" in inspected
        with handle.connect() as conn, conn.cursor() as cur:  # type: ignore[attr-defined]
            cur.execute("SELECT CURRENT_USER()")
            assert cur.fetchone()[0].startswith("test@")
