"""Bad input gets a typed svcenv error that names the service and the cause, quickly, and leaves nothing.

Each case is what a user could really write: a descriptor with a wrong value or
type, a project config with a wrong key or type, an external URL that is
malformed or has the wrong password, an image that does not exist, a
``DOCKER_HOST`` that answers nothing. Start failures are checked for leftovers
with the ``leaks`` fixture (containers and volumes by label).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from svcenv import (
    BackendUnavailable,
    ConfigurationError,
    Environment,
    Postgres,
    Redis,
    Service,
    ServiceStartError,
)
from svcenv.backends.external import ExternalBackend
from svcenv.config import load_config

from .conftest import LeakCheck

WRONG_TYPES: list[tuple[Callable[[], object], str]] = [
    (lambda: Postgres(user=5), "service 'postgres': user must be a string, got 5"),  # type: ignore[arg-type]
    (lambda: Postgres(tuned="yes"), "service 'postgres': tuned must be True or False"),  # type: ignore[arg-type]
    (lambda: Postgres(settings={"work_mem": None}), "service 'postgres': settings['work_mem'] must be"),  # type: ignore[dict-item]
    (lambda: Redis(password=123), "service 'redis': password must be a string, got 123"),  # type: ignore[arg-type]
    (lambda: Service("web", image=5), "service 'web': image must be an image name"),  # type: ignore[arg-type]
    (lambda: Service("web", image="i", ports=("80",)), "service 'web': ports must be"),  # type: ignore[arg-type]
    (lambda: Service("web", image="i", ports=(True,)), "service 'web': ports must be"),
    (lambda: Service("web", image="i", ports=80), "service 'web': ports must be a sequence"),  # type: ignore[arg-type]
    (lambda: Service("web", image="i", env={"MODE": ["a"]}), "service 'web': env['MODE'] must be"),  # type: ignore[dict-item]
    (lambda: Service("web", image="i", command=["run", 1]), "service 'web': command must be a sequence of strings"),  # type: ignore[list-item]
    (lambda: Service("web", image="i", depends_on=[5]), "service 'web': depends_on must be"),  # type: ignore[list-item]
    (lambda: Postgres(timeout="10"), "service 'postgres': timeout must be a number of seconds"),  # type: ignore[arg-type]
    (lambda: Service(5), "a service name must be a string"),  # type: ignore[arg-type]
]
BAD_VALUES: list[tuple[Callable[[], object], str]] = [
    (lambda: Service("web", image="i", ports=(0,)), "service 'web': port 0 is not in 1..65535"),
    (lambda: Service("web", image="i", ports=(70000,)), "service 'web': port 70000 is not in 1..65535"),
    (lambda: Postgres(timeout=0), "service 'postgres': timeout must be a finite number of seconds > 0, got 0"),
    (lambda: Redis(timeout=-1), "service 'redis': timeout must be a finite number of seconds > 0, got -1"),
    (lambda: Environment(Redis(), timeout=0), "Environment timeout must be a finite number of seconds > 0, got 0"),
    (lambda: Redis(timeout=float("inf")), "service 'redis': timeout must be a finite number of seconds > 0, got inf"),
    (lambda: Redis(timeout=float("nan")), "service 'redis': timeout must be a finite number of seconds > 0, got nan"),
    (lambda: Environment(Redis(), timeout=float("inf")), "Environment timeout must be a finite number"),
    (
        lambda: Environment(Redis(name="cache-a"), Redis(name="cache_a")),
        "services 'cache-a' and 'cache_a' would both set CACHE_A_HOST/_PORT/_URL; rename one",
    ),
    (
        lambda: Environment(Redis(name="cache.a"), Redis(name="cache-a")),
        "services 'cache.a' and 'cache-a' would both set CACHE_A_HOST",
    ),
    (lambda: Redis(backend="cloud"), "service 'redis': unknown backend 'cloud'"),
    (lambda: Service("Web Server", image="i"), "service name 'Web Server' is not valid"),
]


@pytest.mark.parametrize(("make", "message"), WRONG_TYPES + BAD_VALUES)
def test_descriptor_values_are_checked_when_written(make: Callable[[], object], message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        make()
    assert message in str(info.value)


def test_a_command_string_is_split_into_words_not_given_to_a_shell() -> None:
    service = Service("web", image="i", command="serve --name 'a b' $HOME")
    assert service.command == ("serve", "--name", "a b", "$HOME")


CONFIG_ERRORS = [
    ('[services.postgres]\ntimeout = "soon"\n', "services.postgres.timeout: must be a number of seconds, got 'soon'"),
    ('[services.web]\nimage = "nginx"\nports = ["80"]\n', "services.web.ports: must be a list of port numbers"),
    ("[services.postgres]\nuser = 5\n", "services.postgres.user: must be a string, got 5"),
    ("[services.postgres]\npasword = 'x'\n", "services.postgres.pasword: unknown key; allowed here:"),
    (
        '[services.web]\nimage = "nginx"\ndepends_on = ["db"]\n',
        "services.web.depends_on: 'db' is not a declared service",
    ),
    ("[services.redis]\ntimeout = 0\n", "services.redis.timeout: must be a finite number of seconds > 0"),
    ("[services.redis]\ntimeout = inf\n", "services.redis.timeout: must be a finite number of seconds > 0, got inf"),
    ("[services.redis]\ntimeout = nan\n", "services.redis.timeout: must be a finite number of seconds > 0, got nan"),
]


def test_a_config_file_that_is_not_utf8_is_a_configuration_error(tmp_path: Path) -> None:
    # A latin-1 pyproject.toml, even without [tool.svcenv]: a clear error, not a bare UnicodeDecodeError.
    (tmp_path / "pyproject.toml").write_bytes('[project]\nname = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(ConfigurationError, match=r"pyproject\.toml: not UTF-8 .*re-save it as UTF-8"):
        load_config(start=tmp_path)


@pytest.mark.parametrize(("text", "message"), CONFIG_ERRORS)
def test_config_errors_name_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "svcenv.toml"
    path.write_text(text)
    with pytest.raises(ConfigurationError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_an_unknown_service_in_config_lists_the_known_ones(tmp_path: Path) -> None:
    path = tmp_path / "svcenv.toml"
    path.write_text("[services.postgres]\n[services.cache]\nkind = 'redis'\n")
    with pytest.raises(ConfigurationError, match=r"unknown service 'search'; known services: postgres, cache"):
        load_config(path).select(["search"])


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "service 'postgres'"),
        ("http://u:hunter22@127.0.0.1:5432/db", "service 'postgres'"),
        ("postgresql://u:hunter22@127.0.0.1:notaport/db", "service 'postgres'"),
        ("postgresql://u:hunter22@127.0.0.1:5432/db?sslmode=require&x=1#frag", "service 'postgres'"),
    ],
)
def test_a_malformed_external_url_is_a_configuration_error(
    url: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SVCENV_POSTGRES_URL", url)
    with pytest.raises((ConfigurationError, ServiceStartError)) as info:
        Environment(Postgres(), backend="external").start()
    assert message in str(info.value)
    assert "hunter22" not in str(info.value), "the password must not appear in the message"


@pytest.mark.parametrize(
    ("name", "detail"), [("postgres", "password authentication failed"), ("redis", "invalid username-password pair")]
)
def test_a_wrong_password_for_an_external_service_fails_at_once(name: str, detail: str, leaks: LeakCheck) -> None:
    # One service per environment: the first failure cancels the others, so two refusals in one
    # start would race for which one is reported.
    descriptors = {"postgres": Postgres, "redis": Redis}
    with Environment(descriptors[name](), labels=leaks.labels) as real:
        handle = real[name]
        urls = {
            "postgres": f"postgresql://postgres:not-the-password@{handle.host}:{handle.port}/test",
            "redis": f"redis://:not-the-password@{handle.host}:{handle.port}/0",
        }
        started = time.monotonic()
        with pytest.raises(ServiceStartError) as info:
            Environment(descriptors[name](timeout=30), backend=ExternalBackend(urls={name: urls[name]})).start()
        elapsed = time.monotonic() - started
    assert elapsed < 10, f"a refused password must not wait out the 30 s timeout ({elapsed:.1f}s)"
    message = str(info.value)
    assert info.value.services == (name,)
    assert f"service '{name}' (external backend" in message
    assert "the server refuses the credentials" in message
    assert detail.lower() in message.lower()
    assert "not-the-password" not in message


def test_a_nonexistent_image_fails_fast_naming_service_and_image(leaks: LeakCheck) -> None:
    started = time.monotonic()
    with pytest.raises(ServiceStartError) as info:
        Environment(
            Redis(), Service("ghost", image="svcenv-test/does-not-exist:1", ports=(80,)), labels=leaks.labels
        ).start()
    assert time.monotonic() - started < 15
    assert info.value.services == ("ghost",)
    assert "svcenv-test/does-not-exist:1" in str(info.value)
    assert "not on the engine" in str(info.value)


@pytest.mark.parametrize("docker_host", ["unix:///nonexistent/docker.sock", "tcp://127.0.0.1:1"])
def test_an_unreachable_docker_host_is_backend_unavailable_within_seconds(
    docker_host: str, leaks: LeakCheck, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DOCKER_HOST is restored before leaks counts leftovers (whatever order plugins set fixtures up in).
    started = time.monotonic()
    with monkeypatch.context() as patch, pytest.raises(BackendUnavailable) as info:
        patch.setenv("DOCKER_HOST", docker_host)
        Environment(Postgres(), Redis(), backend="docker", labels=leaks.labels).start()
    assert time.monotonic() - started < 10
    assert "'postgres'" in str(info.value)
    assert "docker" in str(info.value).lower()
