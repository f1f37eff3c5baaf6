"""Descriptors, validation and the light import: no service needed."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

from svcenv import ConfigurationError, Elasticsearch, Environment, Postgres, Redis, Service
from svcenv.backends.docker_host import engine_host
from svcenv.probes import HTTP, TCP, AllOf, LogLine


def test_descriptors_are_frozen_and_hashable() -> None:
    pg = Postgres(settings={"fsync": "off"})
    assert hash(pg) == hash(Postgres(settings={"fsync": "off"}))
    assert {pg, Postgres(settings={"fsync": "off"})} == {pg}
    with pytest.raises(AttributeError):
        pg.name = "other"  # type: ignore[misc]
    generic = Service("web", "nginx", ports=[80], env={"A": "1"}, command="serve")
    assert generic.ports == (80,)
    assert generic.command == ("serve",)
    assert hash(generic) == hash(Service("web", "nginx", ports=(80,), env={"A": "1"}, command=("serve",)))


def test_default_names_and_contracts() -> None:
    pg, rd, es = Postgres(), Redis(), Elasticsearch()
    assert (pg.name, rd.name, es.name) == ("postgres", "redis", "elasticsearch")
    pg_env = pg.resolve().env
    assert pg_env["POSTGRES_USER"] == "postgres"
    assert pg_env["POSTGRES_DB"] == "test"
    assert len(pg_env["POSTGRES_PASSWORD"]) >= 22
    assert pg.resolve().env["POSTGRES_PASSWORD"] != pg_env["POSTGRES_PASSWORD"]  # per environment
    assert Postgres(password="given").resolve().env["POSTGRES_PASSWORD"] == "given"
    es_env = es.resolve().env
    assert es_env["discovery.type"] == "single-node"
    assert es_env["xpack.security.enabled"] == "false"
    assert es_env["ES_JAVA_OPTS"] == "-Xms512m -Xmx512m"
    rd_resolved = rd.resolve()
    rd_password = rd_resolved.secrets["password"]
    assert rd_resolved.command == ("redis-server", "/run/svcenv/redis.conf")  # the password is in no argv
    assert f'requirepass "{rd_password}"' in rd_resolved.files["/run/svcenv/redis.conf"][0].decode()
    assert b"requirepass" not in Redis(password="").resolve().files["/run/svcenv/redis.conf"][0]
    assert Postgres(tuned=False, settings={"fsync": "off"}).resolve().command == ("postgres", "-c", "fsync=off")
    assert Postgres(tuned=False).resolve().command is None
    tuned = Postgres(settings={"fsync": "on", "work_mem": "8MB"}).resolve().command or ()
    assert "fsync=on" in tuned
    assert "fsync=off" not in tuned
    assert {"synchronous_commit=off", "full_page_writes=off", "work_mem=8MB"} <= set(tuned)


def test_images_follow_override_order(monkeypatch: pytest.MonkeyPatch) -> None:
    for kind in ("POSTGRES", "REDIS", "ELASTICSEARCH"):
        monkeypatch.delenv(f"SVCENV_{kind}_IMAGE", raising=False)
    assert Postgres().effective_image == "postgres:16-alpine"
    assert Redis().effective_image.startswith("redis:7")
    assert Elasticsearch().effective_image.endswith(":8.15.0")
    monkeypatch.setenv("SVCENV_POSTGRES_IMAGE", "local/pg:15")
    assert Postgres().effective_image == "local/pg:15"
    assert Postgres(image="mine:1").effective_image == "mine:1"


def test_secrets_stay_out_of_repr() -> None:
    pg = Postgres(password="hunter2-secret")
    assert "hunter2-secret" not in repr(pg)
    assert "hunter2-secret" not in repr(pg.resolve())
    assert "hunter2-secret" not in repr(Redis(password="hunter2-secret"))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Service("Bad Name", "img"), "service name 'Bad Name' is not valid"),
        (lambda: Service("web", "img", ports=(0,)), "port 0 is not in 1..65535"),
        (lambda: Service("web", "img", ports=(70000,)), "port 70000"),
        (lambda: Postgres(timeout=0), "timeout must be a finite number of seconds > 0"),
        (lambda: Redis(timeout=-1), "timeout must be a finite number of seconds > 0"),
        (lambda: Postgres(user=""), "user and dbname must not be empty"),
        (lambda: Service("a", "img", depends_on=("a",)), "cannot depend on itself"),
        (lambda: Environment(Postgres(), Postgres()), "two services are named 'postgres'"),
        (lambda: Environment(Postgres(depends_on=("nope",))), "depends on 'nope'"),
        (
            lambda: Environment(Service("a", "i", depends_on=("b",)), Service("b", "i", depends_on=("a",))),
            "dependency cycle: a -> b -> a",
        ),
        (lambda: Environment(Redis(), timeout=0), "timeout must be a finite number of seconds > 0"),
        (lambda: Environment(Redis(), backend="nowhere").start(), "unknown backend 'nowhere'"),
    ],
)
def test_bad_input_is_a_typed_error_naming_the_cause(make: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(")):
        make()  # type: ignore[operator]


def test_probes_compose() -> None:
    probe = TCP() & HTTP("/health") & LogLine("ready")
    assert isinstance(probe, AllOf)
    assert len(probe.probes) == 3
    assert hash(probe) == hash(TCP() & HTTP("/health") & LogLine("ready"))


def test_import_is_light() -> None:
    code = (
        "import sys, svcenv; heavy = [m for m in ('psycopg', 'redis', 'docker', 'testcontainers', "
        "'elasticsearch', 'tenacity', 'urllib.request') if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def _client(base_url: str) -> SimpleNamespace:
    # A remote engine cannot be real here (and no traffic may leave loopback): the
    # function under test only reads the client's base URL, so a stand-in object is enough.
    return SimpleNamespace(api=SimpleNamespace(base_url=base_url))


def test_engine_host_is_loopback_for_a_local_engine_and_the_host_for_a_remote_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.delenv("SVCENV_DOCKER_HOST_IP", raising=False)
    from testcontainers.core.config import testcontainers_config

    monkeypatch.setattr(testcontainers_config, "tc_host_override", None)
    assert engine_host(_client("http+docker://localhost")) == "127.0.0.1"  # type: ignore[arg-type]
    assert engine_host(_client("http://127.0.0.1:2375")) == "127.0.0.1"  # type: ignore[arg-type]
    assert engine_host(_client("http://docker.example.internal:2376")) == "docker.example.internal"  # type: ignore[arg-type]
    monkeypatch.setenv("SVCENV_DOCKER_HOST_IP", "10.0.0.7")
    assert engine_host(_client("http+docker://localhost")) == "10.0.0.7"  # type: ignore[arg-type]
