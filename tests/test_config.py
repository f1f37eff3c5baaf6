"""Project configuration: discovery, validation with precise errors, specs, reuse hashes, the plugin's universe."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from svcenv import ConfigurationError, Postgres, Redis, Service
from svcenv.config import build_service, find_config, load_config, spec_of
from svcenv.probes import HTTP, TCP, AllOf, LogLine
from svcenv.reuse import config_hash

GOOD = """
[tool.svcenv]
reuse = true
backend = "docker"
timeout = 30

[tool.svcenv.services.postgres]
kind = "postgres"
version = "15"
user = "app"
dbname = "shop"
settings = { max_connections = 50 }

[tool.svcenv.services.cache]
kind = "redis"

[tool.svcenv.services.web]
image = "nginx:1.27"
ports = [80, 443]
env = { MODE = "test", DEBUG = true }
command = "nginx -g 'daemon off;'"
probe = [{ tcp = true }, { http = "/health", status = 204 }]
depends_on = ["postgres"]
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


def test_pyproject_table_is_read_with_types_and_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SVCENV_POSTGRES_IMAGE", "registry.example/pg:16")
    write(tmp_path, "pyproject.toml", GOOD)
    sub = tmp_path / "src" / "pkg"
    sub.mkdir(parents=True)
    config = load_config(start=sub)
    assert config.path == (tmp_path / "pyproject.toml").resolve()
    assert config.project_dir == tmp_path.resolve()
    assert (config.reuse, config.backend, config.timeout, config.declared) == (True, "docker", 30.0, True)
    postgres, cache, web = config.descriptors()
    assert isinstance(postgres, Postgres)
    assert postgres.image == "registry.example/pg:15"  # version replaces the tag of the kind's image
    assert (postgres.user, postgres.dbname, dict(postgres.settings)) == ("app", "shop", {"max_connections": "50"})
    assert isinstance(cache, Redis)
    assert cache.name == "cache"
    assert cache.backend == "docker"
    assert cache.timeout == 30.0
    assert type(web) is Service
    assert web.ports == (80, 443)
    assert dict(web.env) == {"MODE": "test", "DEBUG": "true"}
    assert web.command == ("nginx", "-g", "daemon off;")
    assert web.probe == AllOf((TCP(), HTTP("/health", status=204)))
    assert web.depends_on == ("postgres",)


def test_svcenv_toml_wins_and_selection_adds_dependencies(tmp_path: Path) -> None:
    write(tmp_path, "pyproject.toml", GOOD)
    write(
        tmp_path,
        "svcenv.toml",
        '[services.db]\nkind = "postgres"\n[services.app]\nimage = "x:1"\nports = [8000]\n'
        'probe = { log = "ready", times = 2 }\ndepends_on = ["db"]\n',
    )
    config = load_config(start=tmp_path)
    assert config.path is not None
    assert config.path.name == "svcenv.toml"
    assert [s.name for s in config.descriptors(["app"])] == ["db", "app"]
    assert config.descriptors(["app"])[1].probe == LogLine("ready", times=2)
    with pytest.raises(ConfigurationError, match="unknown service 'mysql'; known services: db, app"):
        config.select(["mysql"])


def test_search_stops_at_a_pyproject_without_a_table(tmp_path: Path) -> None:
    write(tmp_path, "svcenv.toml", "[services.redis]\n")
    inner = tmp_path / "inner"
    inner.mkdir()
    write(inner, "pyproject.toml", "[project]\nname = 'x'\n")
    assert find_config(inner) is None
    config = load_config(start=inner)
    assert config.path is None
    assert config.known == ["postgres", "redis", "elasticsearch", "mysql"]
    assert [s["name"] for s in config.select()] == ["postgres", "redis", "elasticsearch"]  # what runs by default
    assert not config.declared


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[services.postgres]\nprots = [1]\n", r"services\.postgres\.prots: unknown key; allowed here: kind, image"),
        ("[services.web]\nimage = 'x'\nports = '80'\n", r"services\.web\.ports: must be a list of port numbers"),
        ("[services.web]\nimage = 'x'\nprobe = { tcp = true, http = '/' }\n", r"name exactly one of tcp, http"),
        ("[services.web]\nimage = 'x'\nprobe = { http = '/', times = 2 }\n", r"probe\.times: unknown key"),
        ("[services.web]\nports = [80]\n", r"services\.web\.image: a generic service needs an image"),
        ("[services.redis]\ndepends_on = ['pg']\n", r"'pg' is not a declared service; declared: redis"),
        ("[services.redis]\ntimeout = -1\n", r"services\.redis\.timeout: must be a finite number of seconds > 0"),
        ("backend = 'podman'\n", r"backend: must be one of auto, docker, local, external, got 'podman'"),
        ("[services.pg]\nkind = 'oracle'\n", r"services\.pg\.kind: must be one of postgres, redis"),
        ("[services.redis]\nimage = 'a'\nversion = '7'\n", r"give image or version, not both"),
        ("[services.Bad]\nkind = 'redis'\n", r"services\.Bad: service name 'Bad' is not valid"),
        ("reuse = 'yes'\n", r"reuse: must be true or false"),
        ("[services\n", r"not valid TOML"),
    ],
)
def test_errors_name_the_file_the_key_and_what_is_allowed(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, "svcenv.toml", text)
    with pytest.raises(ConfigurationError, match=message) as info:
        load_config(start=tmp_path)
    assert str(info.value).startswith(f"{path}: ")


def test_pyproject_errors_use_the_full_key(tmp_path: Path) -> None:
    write(tmp_path, "pyproject.toml", "[tool.svcenv.services.postgres]\nusr = 'x'\n")
    with pytest.raises(ConfigurationError, match=r"pyproject.toml: tool\.svcenv\.services\.postgres\.usr: unknown"):
        load_config(start=tmp_path)


def test_spec_round_trip_and_reuse_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SVCENV_REDIS_IMAGE", "svcenv-test/redis:7")
    web = Service("web", image="nginx:1", ports=(80,), probe=HTTP("/") & TCP(80), env={"A": "1"})
    for service in (Postgres(settings={"work_mem": "8MB"}), Redis(), web):
        rebuilt = build_service(spec_of(service))
        assert spec_of(rebuilt) == spec_of(service)
    a, b = tmp_path / "a", tmp_path / "b"
    assert config_hash(Redis(), a) == config_hash(Redis(), a)  # generated passwords are not in it
    assert config_hash(Redis(), a) != config_hash(Redis(), b)  # per project
    assert config_hash(Redis(), a) != config_hash(Redis(image="svcenv-test/redis:8"), a)
    assert config_hash(Redis(), a) == config_hash(Redis(timeout=5), a)  # how long one waits is not the server
    assert config_hash(web, a) != config_hash(Service("web", image="nginx:1", ports=(80,), env={"A": "2"}), a)
    assert config_hash(Redis(password="s1"), a) != config_hash(Redis(password="s2"), a)


def test_cli_exits_2_naming_the_bad_key(tmp_path: Path) -> None:
    write(tmp_path, "svcenv.toml", "[services.redis]\npasword = 'x'\n")
    for command in (["up"], ["run", "--", "true"], ["env"], ["doctor"]):
        result = subprocess.run(
            [sys.executable, "-m", "svcenv", *command], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 2, (command, result.stderr)
        assert "services.redis.pasword: unknown key" in result.stderr
        assert "svcenv.toml" in result.stderr
        assert "Traceback" not in result.stderr


def test_pytest_plugin_takes_the_declared_services_as_its_universe(pytester: pytest.Pytester) -> None:
    pytester.makefile(
        ".toml",
        svcenv='[services.db]\nkind = "postgres"\ndbname = "app"\n[services.cache]\nkind = "redis"\n'
        '[services.postgres]\nkind = "postgres"\n',
    )
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(
        test_universe="""
        from svcenv.pytest.fixtures import MANAGER

        def test_universe(pytestconfig, request):
            manager = pytestconfig.stash[MANAGER]
            manager.needed = {"db", "cache", "postgres"}
            assert [(s.name, s.kind, getattr(s, "dbname", None)) for s in manager.descriptors()] == [
                ("db", "postgres", "app"), ("cache", "redis", None), ("postgres", "postgres", "test")
            ]
            manager.needed = {"postgres", "redis"}  # what fixtures ask for: by name
            assert [s.name for s in manager.descriptors()] == ["postgres", "redis"]
            manager.needed = set()
            assert manager.descriptors() == ()
            # Declared services get the factory's fixtures.
            declared = pytestconfig.pluginmanager.get_plugin("svcenv-declared-fixtures")
            assert all(hasattr(declared, f) for f in ("db_connection", "db_transaction", "cache_client"))
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
