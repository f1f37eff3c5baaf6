"""The Compose reader: interpolation, every key's forms, profiles, kinds, credentials and every error message.

Pure parsing: no Docker engine, no service started.
"""

from __future__ import annotations

import dataclasses
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from svcenv import Elasticsearch, MySQL, Postgres, Redis, Service
from svcenv.compose import (
    ComposeBuild,
    ComposeDependency,
    ComposeError,
    ComposeFile,
    ComposeHealthcheck,
    ComposePort,
    ComposeService,
    ComposeVolume,
    image_kind,
    load_compose,
    parse_bytes,
    parse_compose,
    parse_duration,
    select_services,
)
from svcenv.errors import ConfigurationError
from svcenv.probes import AllOf, Command, Completed, LogLine, PostgresQuery, RedisPing, from_record, to_record

# -- helpers ---------------------------------------------------------------------------------


def write(tmp_path: Path, text: str, dotenv: str | None = None) -> Path:
    path = tmp_path / "compose.yaml"
    path.write_text(textwrap.dedent(text))
    if dotenv is not None:
        (tmp_path / ".env").write_text(textwrap.dedent(dotenv))
    return path


def parse(
    tmp_path: Path, text: str, environ: Mapping[str, str] | None = None, dotenv: str | None = None
) -> ComposeFile:
    return parse_compose(write(tmp_path, text, dotenv), environ={} if environ is None else environ)


def service(tmp_path: Path, body: str, environ: Mapping[str, str] | None = None, **top: str) -> ComposeService:
    """The service ``s`` whose keys are ``body`` (YAML, as if indented under it)."""
    indented = textwrap.indent(textwrap.dedent(body), "    ")
    extra = "".join(f"{k}:\n{textwrap.indent(textwrap.dedent(v), '  ')}" for k, v in top.items())
    return parse(tmp_path, f"services:\n  s:\n{indented}{extra}", environ)["s"]


def fails(tmp_path: Path, text: str, *, environ: Mapping[str, str] | None = None, **kwargs: Any) -> str:
    """The message of the ComposeError that loading ``text`` raises."""
    path = write(tmp_path, text)
    with pytest.raises(ComposeError) as caught:
        load_compose(path, environ={} if environ is None else environ, **kwargs)
    assert str(caught.value).startswith(f"{path.resolve()}: "), str(caught.value)
    return str(caught.value)


def descriptors(tmp_path: Path, text: str, environ: Mapping[str, str] | None = None, **kwargs: Any) -> dict[str, Any]:
    found = load_compose(write(tmp_path, text), environ={} if environ is None else environ, **kwargs)
    return {d.name: d for d in found}


def one(tmp_path: Path, body: str, environ: Mapping[str, str] | None = None) -> Any:
    indented = textwrap.indent(textwrap.dedent(body), "    ")
    return descriptors(tmp_path, f"services:\n  s:\n{indented}", environ)["s"]


# -- interpolation ---------------------------------------------------------------------------


def env_of(tmp_path: Path, value: str, environ: Mapping[str, str], dotenv: str | None = None) -> str:
    text = f"services:\n  s:\n    image: busybox\n    environment:\n      V: '{value}'\n"
    return parse(tmp_path, text, environ, dotenv)["s"].environment["V"]


@pytest.mark.parametrize(
    ("value", "environ", "expected"),
    [
        ("$A", {"A": "x"}, "x"),
        ("${A}", {"A": "x"}, "x"),
        ("pre-${A}-post", {"A": "x"}, "pre-x-post"),
        ("$A$B", {"A": "1", "B": "2"}, "12"),
        ("${A:-d}", {}, "d"),
        ("${A:-d}", {"A": ""}, "d"),
        ("${A:-d}", {"A": "x"}, "x"),
        ("${A-d}", {}, "d"),
        ("${A-d}", {"A": ""}, ""),
        ("${A:?boom}", {"A": "x"}, "x"),
        ("${A?boom}", {"A": ""}, ""),
        ("${A:+alt}", {"A": "x"}, "alt"),
        ("${A:+alt}", {"A": ""}, ""),
        ("${A+alt}", {"A": ""}, "alt"),
        ("${A+alt}", {}, ""),
        ("${A:-${B:-deep}}", {}, "deep"),
        ("${A:-${B}}", {"B": "b"}, "b"),
        ("$$A", {"A": "x"}, "$A"),
        ("$${A}", {"A": "x"}, "${A}"),
        ("cost: $$5", {}, "cost: $5"),
        ("$A_B", {"A": "x", "A_B": "y"}, "y"),
        ("${A}_B", {"A": "x"}, "x_B"),
        ("$UNSET", {}, ""),
    ],
)
def test_interpolation_forms(tmp_path: Path, value: str, environ: dict[str, str], expected: str) -> None:
    assert env_of(tmp_path, value, environ) == expected


@pytest.mark.parametrize(
    ("value", "environ", "says"),
    [
        ("${A:?set A please}", {}, "required variable A is missing a value: set A please"),
        ("${A:?set A please}", {"A": ""}, "required variable A is missing a value: set A please"),
        ("${A?need A}", {}, "required variable A is missing a value: need A"),
        ("${A:?}", {}, "required variable A is missing a value"),
        ("price $ 5", {}, "a lone '$'"),
        ("${A", {}, "unclosed '${'"),
        ("${1A}", {}, "expected a variable name"),
        ("${A*b}", {}, "use :- - :? ? :+ or + after the name"),
    ],
)
def test_interpolation_errors_name_the_file_key_and_message(
    tmp_path: Path, value: str, environ: dict[str, str], says: str
) -> None:
    text = f"services:\n  s:\n    image: busybox\n    environment:\n      V: '{value}'\n"
    message = fails(tmp_path, text, environ=environ)
    assert "services.s.environment.V: " in message
    assert says in message


def test_interpolation_applies_to_every_value_and_lists(tmp_path: Path) -> None:
    s = service(
        tmp_path,
        """
        image: "postgres:${TAG:-16}"
        ports: ["${PORT}:5432"]
        command: ["postgres", "-c", "work_mem=${MEM}"]
        """,
        {"PORT": "6000", "MEM": "64MB"},
    )
    assert s.image == "postgres:16"
    assert s.ports == (ComposePort(5432, "6000"),)
    assert s.command == ("postgres", "-c", "work_mem=64MB")


def test_an_error_in_a_list_names_its_index(tmp_path: Path) -> None:
    message = fails(tmp_path, "services:\n  s:\n    image: x\n    command: [a, '${B:?no B}']\n")
    assert "services.s.command[1]: required variable B is missing a value: no B" in message


def test_extensions_are_not_interpolated(tmp_path: Path) -> None:
    text = "x-notes: 'costs $ 5'\nservices:\n  s:\n    image: x\n    x-doc: 'a lone $ here'\n"
    assert parse(tmp_path, text).names == ("s",)


def test_unset_variables_become_empty_with_a_notice(tmp_path: Path) -> None:
    notices: list[str] = []
    path = write(tmp_path, "services:\n  s:\n    image: 'busybox$NOPE'\n    environment: [A=$NOPE]\n")
    (s,) = load_compose(path, environ={}, notices=notices)
    assert s.image == "busybox"
    assert notices == ["variable NOPE is not set: it is an empty string"]


def test_dotenv_beside_the_file_and_environ_over_it(tmp_path: Path) -> None:
    dotenv = """
        # a comment
        PLAIN=plain value  # inline comment
        export EXPORTED=yes
        SINGLE='literal $PLAIN # kept'
        DOUBLE="line1\\nline2 ${PLAIN} \\"q\\""
        MULTI="first
        second"
        REF=${PLAIN}-ref
        EMPTY=
        OVERRIDDEN=from-dotenv
        """
    environ = {"OVERRIDDEN": "from-environ"}
    names = ["PLAIN", "EXPORTED", "SINGLE", "DOUBLE", "MULTI", "REF", "EMPTY", "OVERRIDDEN"]
    env = "".join(f"      {n}: ${{{n}}}\n" for n in names)
    text = f"services:\n  s:\n    image: busybox\n    environment:\n{env}"
    got = parse(tmp_path, text, environ, dotenv)["s"].environment
    assert dict(got) == {
        "PLAIN": "plain value",
        "EXPORTED": "yes",
        "SINGLE": "literal $PLAIN # kept",
        "DOUBLE": 'line1\nline2 plain value "q"',
        "MULTI": "first\nsecond",
        "REF": "plain value-ref",
        "EMPTY": "",
        "OVERRIDDEN": "from-environ",
    }


def test_os_environ_is_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SVCENV_COMPOSE_TEST_TAG", "17")
    path = write(tmp_path, "services:\n  db:\n    image: postgres:${SVCENV_COMPOSE_TEST_TAG}\n")
    assert parse_compose(path)["db"].image == "postgres:17"


@pytest.mark.parametrize(
    ("dotenv", "says"),
    [("OK=1\nnot a line\n", "line 2: 'not a line' is not a variable name"), ('A="open\n', "unterminated")],
)
def test_bad_dotenv_lines_are_named(tmp_path: Path, dotenv: str, says: str) -> None:
    path = write(tmp_path, "services:\n  s:\n    image: x\n", dotenv)
    with pytest.raises(ComposeError, match=str(tmp_path / ".env")) as caught:
        parse_compose(path, environ={})
    assert says in str(caught.value)


# -- image, build, command, entrypoint -------------------------------------------------------


def test_build_short_and_long_forms(tmp_path: Path) -> None:
    assert service(tmp_path, "build: ./app\n").build == ComposeBuild(str(tmp_path / "app"))
    long = service(
        tmp_path,
        """
        build:
          context: sub
          dockerfile: Dockerfile.test
          args: [A=1, FROM_ENV]
          target: dev
        """,
        {"FROM_ENV": "e"},
    )
    assert long.build == ComposeBuild(str(tmp_path / "sub"), "Dockerfile.test", {"A": "1", "FROM_ENV": "e"}, "dev")
    assert service(tmp_path, "build: {args: {N: 5}}\n").build == ComposeBuild(str(tmp_path), args={"N": "5"})


def test_build_unknown_key_is_named(tmp_path: Path) -> None:
    message = fails(tmp_path, "services:\n  s:\n    build: {context: ., cache_from: [x]}\n")
    assert (
        "services.s.build.cache_from: not supported by svcenv (supported: context, dockerfile, args, target)" in message
    )


def test_command_and_entrypoint_forms(tmp_path: Path) -> None:
    s = service(tmp_path, """image: x\ncommand: sh -c 'echo "a b"'\nentrypoint: [tini, "--", 5]\n""")
    assert s.command == ("sh", "-c", 'echo "a b"')
    assert s.entrypoint == ("tini", "--", "5")
    assert service(tmp_path, "image: x\nentrypoint: ''\n").entrypoint == ()
    message = fails(tmp_path, "services:\n  s:\n    image: x\n    command: {a: b}\n")
    assert "services.s.command: expected a string or a list of strings" in message


def test_a_service_needs_an_image_or_a_build(tmp_path: Path) -> None:
    assert "services.s: a service needs an image or a build" in fails(tmp_path, "services:\n  s:\n    ports: [80]\n")


# -- environment and env_file ----------------------------------------------------------------


def test_environment_list_and_map_forms(tmp_path: Path) -> None:
    environ = {"FROM_ENV": "e"}
    listed = service(tmp_path, "image: x\nenvironment: [A=1, B=, C=x=y, FROM_ENV, MISSING]\n", environ)
    assert dict(listed.environment) == {"A": "1", "B": "", "C": "x=y", "FROM_ENV": "e"}
    mapped = service(tmp_path, "image: x\nenvironment: {A: 1, B: true, C: null, FROM_ENV: null, D: 1.5}\n", environ)
    assert dict(mapped.environment) == {"A": "1", "B": "true", "FROM_ENV": "e", "D": "1.5"}


def test_env_file_forms_order_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "a.env").write_text("A=from-a\nB=from-a\n")
    (tmp_path / "b.env").write_text("B=from-b\nC=from-b\n")
    s = service(
        tmp_path,
        "image: x\nenv_file: [a.env, {path: b.env}, {path: gone.env, required: false}]\nenvironment: [C=own]\n",
    )
    assert dict(s.environment) == {"A": "from-a", "B": "from-b", "C": "own"}
    assert s.env_file == tuple(str(tmp_path / n) for n in ("a.env", "b.env", "gone.env"))
    assert dict(service(tmp_path, "image: x\nenv_file: a.env\n").environment) == {"A": "from-a", "B": "from-a"}


def test_a_missing_env_file_is_named(tmp_path: Path) -> None:
    message = fails(tmp_path, "services:\n  s:\n    image: x\n    env_file: nope.env\n")
    assert f"services.s.env_file: {tmp_path / 'nope.env'} does not exist" in message


# -- ports and expose ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ('"80"', [ComposePort(80)]),
        ("80", [ComposePort(80)]),
        ('"8080:80"', [ComposePort(80, "8080")]),
        ("22:22", [ComposePort(22, "22")]),  # YAML 1.1 would read a base-60 number
        ('"127.0.0.1:8080:80/tcp"', [ComposePort(80, "8080", "127.0.0.1")]),
        ('"127.0.0.1::80"', [ComposePort(80, None, "127.0.0.1")]),
        ('"[::1]:8080:80"', [ComposePort(80, "8080", "::1")]),
        ('"53:53/udp"', [ComposePort(53, "53", protocol="udp")]),
        ('"8000-8001:9000-9001"', [ComposePort(9000, "8000"), ComposePort(9001, "8001")]),
        ('"8000-8010:80"', [ComposePort(80, "8000-8010")]),
        ('"7000-7001"', [ComposePort(7000), ComposePort(7001)]),
        ("{target: 80, published: 8080, protocol: tcp, mode: host}", [ComposePort(80, "8080")]),
        ('{target: "80", host_ip: 127.0.0.1}', [ComposePort(80, None, "127.0.0.1")]),
    ],
)
def test_port_forms(tmp_path: Path, item: str, expected: list[ComposePort]) -> None:
    assert list(service(tmp_path, f"image: x\nports:\n  - {item}\n").ports) == expected


@pytest.mark.parametrize(
    ("item", "key", "says"),
    [
        ('"abc"', "ports[0]", "'abc' is not a port (forms: "),
        ('"70000"', "ports[0]", "port '70000' is not in 1..65535"),
        ('"0"', "ports[0]", "not in 1..65535"),
        ('"999.1.1.1:80:80"', "ports[0]", "is not an IP address"),
        ('"8000-8002:9000-9001"', "ports[0]", "differ in length"),
        ('"8000:9000-9001"', "ports[0]", "needs a host port range"),
        ('"80/icmp"', "ports[0]", "is not a port"),
        ("{published: 80}", "ports[0]", "needs a target"),
        ("{target: 80, published: abc}", "ports[0].published", "'abc' is not a port or port range"),
        ("{target: 80, protocol: icmp}", "ports[0].protocol", "'icmp' is not tcp, udp or sctp"),
        ("{target: 80, color: red}", "ports[0].color", "not supported by svcenv (supported: target, published"),
        ("{target: true}", "ports[0].target", "expected an integer >= 1"),
    ],
)
def test_bad_ports_are_named(tmp_path: Path, item: str, key: str, says: str) -> None:
    message = fails(tmp_path, f"services:\n  s:\n    image: x\n    ports:\n      - {item}\n")
    assert f"services.s.{key}: " in message
    assert says in message


def test_ports_must_be_a_list(tmp_path: Path) -> None:
    assert "services.s.ports: expected a list of ports" in fails(
        tmp_path, "services:\n  s:\n    image: x\n    ports: 80\n"
    )


def test_expose_forms_and_errors(tmp_path: Path) -> None:
    s = service(tmp_path, "image: x\nexpose: [3000, '4000/tcp', '5000-5001', '53/udp']\n")
    assert [(p.target, p.protocol, p.published) for p in s.expose] == [
        (3000, "tcp", None),
        (4000, "tcp", None),
        (5000, "tcp", None),
        (5001, "tcp", None),
        (53, "udp", None),
    ]
    message = fails(tmp_path, "services:\n  s:\n    image: x\n    expose: ['web']\n")
    assert "services.s.expose[0]: 'web' is not a container port" in message


# -- healthcheck -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1m30s", 90.0),
        ("500ms", 0.5),
        ("10s", 10.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("2h45m", 9900.0),
        ("250us", 0.00025),
        ("100ns", 1e-7),
        ("0", 0.0),
        ("5 parsecs", None),
        ("10", None),
        ("", None),
        ("-5s", None),
        ("s", None),
    ],
)
def test_durations(text: str, expected: float | None) -> None:
    got = parse_duration(text)
    assert got == pytest.approx(expected) if expected is not None else got is None


def test_healthcheck_forms(tmp_path: Path) -> None:
    check = service(
        tmp_path,
        """
        image: x
        healthcheck:
          test: ["CMD", "pg_isready", "-U", "app"]
          interval: 1m30s
          timeout: 500ms
          retries: 5
          start_period: 10s
          start_interval: 1s
        """,
    ).healthcheck
    assert check == ComposeHealthcheck(("CMD", "pg_isready", "-U", "app"), 90.0, 0.5, 5, 10.0, 1.0)
    assert check.argv == ("pg_isready", "-U", "app")
    shell = service(tmp_path, 'image: x\nhealthcheck: {test: ["CMD-SHELL", "curl -f localhost || exit 1"]}\n')
    assert shell.healthcheck is not None
    assert shell.healthcheck.argv == ("/bin/sh", "-c", "curl -f localhost || exit 1")
    string = service(tmp_path, "image: x\nhealthcheck: {test: redis-cli ping}\n").healthcheck
    assert string == ComposeHealthcheck(("CMD-SHELL", "redis-cli ping"))
    for off in ('{test: ["NONE"]}', "{disable: true}", "{disable: true, test: [CMD, x]}"):
        disabled = service(tmp_path, f"image: x\nhealthcheck: {off}\n").healthcheck
        assert disabled == ComposeHealthcheck(disable=True)
        assert disabled.argv is None
    assert service(tmp_path, "image: x\nhealthcheck: {retries: '3'}\n").healthcheck == ComposeHealthcheck(retries=3)


@pytest.mark.parametrize(
    ("check", "key", "says"),
    [
        ("{interval: 5 parsecs}", "healthcheck.interval", "'5 parsecs' is not a duration"),
        ("{timeout: 30}", "healthcheck.timeout", 'expected a duration such as "30s"'),
        ("{start_period: 1x}", "healthcheck.start_period", "is not a duration"),
        ("{retries: 0}", "healthcheck.retries", "expected an integer >= 1"),
        ("{retries: many}", "healthcheck.retries", "expected an integer >= 1"),
        ('{test: ["RUN", "x"]}', "healthcheck.test", "is not a test (forms: "),
        ('{test: ["CMD"]}', "healthcheck.test", "is not a test"),
        ('{test: ["CMD-SHELL", "a", "b"]}', "healthcheck.test", "is not a test"),
        ("{disable: maybe}", "healthcheck.disable", "expected true or false"),
        ("{test: [CMD, x], every: 1s}", "healthcheck.every", "not supported by svcenv (supported: test, interval"),
    ],
)
def test_bad_healthchecks_are_named(tmp_path: Path, check: str, key: str, says: str) -> None:
    message = fails(tmp_path, f"services:\n  s:\n    image: x\n    healthcheck: {check}\n")
    assert f"services.s.{key}: " in message
    assert says in message


# -- depends_on ------------------------------------------------------------------------------


def test_depends_on_forms(tmp_path: Path) -> None:
    text = """
        services:
          a: {image: x, depends_on: [b]}
          b:
            image: x
            depends_on:
              c: {condition: service_healthy}
              d: {condition: service_completed_successfully, restart: true}
              e: {required: false}
              f:
          c: {image: x}
          d: {image: x}
          f: {image: x}
        """
    file = parse(tmp_path, text)
    assert file["a"].depends_on == (ComposeDependency("b"),)
    assert file["b"].depends_on == (
        ComposeDependency("c", "service_healthy"),
        ComposeDependency("d", "service_completed_successfully"),
        ComposeDependency("e", "service_started", required=False),
        ComposeDependency("f"),
    )
    assert file.notices == ("services.b.depends_on.e: no such service; ignored (required: false)",)


@pytest.mark.parametrize(
    ("deps", "key", "says"),
    [
        ("[ghost]", "depends_on.ghost", "no service 'ghost' in the file (services: s, t)"),
        ("{ghost: {condition: service_started}}", "depends_on.ghost", "no service 'ghost'"),
        ("[s]", "depends_on.s", "a service cannot depend on itself"),
        ("{t: {condition: service_ready}}", "depends_on.t.condition", "'service_ready' is not one of service_started"),
        ("{t: {required: perhaps}}", "depends_on.t.required", "expected true or false"),
        ("{t: {wait: 5}}", "depends_on.t.wait", "not supported by svcenv (supported: condition, required, restart)"),
    ],
)
def test_bad_depends_on_is_named(tmp_path: Path, deps: str, key: str, says: str) -> None:
    message = fails(tmp_path, f"services:\n  s:\n    image: x\n    depends_on: {deps}\n  t:\n    image: x\n")
    assert f"services.s.{key}: " in message
    assert says in message


# -- volumes, tmpfs, sizes, labels -----------------------------------------------------------


def test_volume_forms(tmp_path: Path) -> None:
    s = service(
        tmp_path,
        """
        image: x
        volumes:
          - ./src:/app:ro
          - /abs:/abs
          - ~/home:/home:rw,z
          - data:/var/lib/data
          - /anonymous
          - cache:/cache:nocopy,rshared
          - {type: bind, source: ./conf, target: /etc/conf, read_only: true, bind: {create_host_path: false}}
          - {type: volume, source: data, target: /data2, volume: {nocopy: true}}
          - {type: volume, target: /scratch}
          - {type: tmpfs, target: /tmp, tmpfs: {size: 64m}}
        """,
        volumes="data:\ncache: {}\n",
    )
    assert s.volumes == (
        ComposeVolume("bind", "/app", str(tmp_path / "src"), read_only=True),
        ComposeVolume("bind", "/abs", "/abs"),
        ComposeVolume("bind", "/home", str(Path("~/home").expanduser()), options=("z",)),
        ComposeVolume("volume", "/var/lib/data", "data"),
        ComposeVolume("volume", "/anonymous"),
        ComposeVolume("volume", "/cache", "cache", options=("nocopy", "propagation=rshared")),
        ComposeVolume("bind", "/etc/conf", str(tmp_path / "conf"), True, ("create_host_path=false",)),
        ComposeVolume("volume", "/data2", "data", options=("nocopy=true",)),
        ComposeVolume("volume", "/scratch"),
        ComposeVolume("tmpfs", "/tmp", options=(f"size={64 << 20}",)),
    )


@pytest.mark.parametrize(
    ("item", "key", "says"),
    [
        ("undeclared:/data", "volumes[0]", "the volume 'undeclared' is not declared under the top-level volumes"),
        ("./x:relative", "volumes[0]", "the container path 'relative' is not absolute"),
        ("./x:/y:rx", "volumes[0]", "'rx' in './x:/y:rx' is not a volume mode"),
        ("a:b:c:d", "volumes[0]", "is not a volume"),
        ("{type: npipe, target: /x}", "volumes[0].type", "'npipe': svcenv supports bind, volume, tmpfs"),
        ("{type: bind, target: /x}", "volumes[0].source", "a bind mount needs a source"),
        ("{type: tmpfs, source: x, target: /x}", "volumes[0].source", "a tmpfs mount has no source"),
        ("{type: volume, target: /x, bind: {selinux: z}}", "volumes[0].bind", "only for type bind, not volume"),
        ("{type: bind, source: ., target: /x, bind: {magic: 1}}", "volumes[0].bind.magic", "not supported"),
        ("{target: /x, driver: local}", "volumes[0].driver", "not supported by svcenv (supported: type, source"),
        ("{type: tmpfs, target: /x, tmpfs: {size: huge}}", "volumes[0].tmpfs.size", "'huge' is not a size"),
    ],
)
def test_bad_volumes_are_named(tmp_path: Path, item: str, key: str, says: str) -> None:
    message = fails(tmp_path, f"services:\n  s:\n    image: x\n    volumes:\n      - {item}\n")
    assert f"services.s.{key}: " in message
    assert says in message


def test_tmpfs_sizes_and_labels(tmp_path: Path) -> None:
    s = service(tmp_path, "image: x\ntmpfs: /run\nshm_size: 1g\nmem_limit: 512m\nlabels: [a=1, flag]\n")
    assert (s.tmpfs, s.shm_size, s.mem_limit, dict(s.labels)) == (("/run",), 1 << 30, 512 << 20, {"a": "1", "flag": ""})
    s = service(tmp_path, "image: x\ntmpfs: [/run, /tmp]\nshm_size: 67108864\nlabels: {a: b, n: 2}\n")
    assert (s.tmpfs, s.shm_size, dict(s.labels)) == (("/run", "/tmp"), 1 << 26, {"a": "b", "n": "2"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1g", 1 << 30),
        ("512m", 512 << 20),
        ("64k", 64 << 10),
        ("100", 100),
        ("1.5g", 3 << 29),
        ("2GB", 2 << 30),
        ("512MiB", 512 << 20),
        ("10b", 10),
        ("lots", None),
        ("1 parsec", None),
        ("-1m", None),
    ],
)
def test_byte_sizes(text: str, expected: int | None) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize(
    ("body", "key", "says"),
    [
        ("shm_size: lots", "shm_size", "'lots' is not a size (write e.g. 1g, 512m"),
        ("mem_limit: true", "mem_limit", "True is not a size"),
        ("tmpfs: {a: b}", "tmpfs", "expected a string or a list of strings"),
        ("labels: [=x]", "labels[0]", "expected KEY=VALUE or KEY"),
        ("profiles: debug", "profiles", None),
        ("restart: [x]", "restart", "expected a string"),
        ("privileged: true", "privileged", "not supported by svcenv (supported: image, build, command"),
        ("container_name: x", "container_name", "not supported by svcenv"),
        ("networks: [backend]", "networks", "svcenv supports only the default network"),
        ("networks: {default: {aliases: [x]}}", "networks.default", "svcenv cannot set network options"),
    ],
)
def test_bad_service_keys_are_named(tmp_path: Path, body: str, key: str, says: str | None) -> None:
    text = f"services:\n  s:\n    image: x\n    {body}\n"
    if says is None:  # a single profile as a string is accepted
        assert parse(tmp_path, text)["s"].profiles == ("debug",)
        return
    message = fails(tmp_path, text)
    assert f"services.s.{key}: " in message
    assert says in message


def test_default_network_and_extensions_are_accepted(tmp_path: Path) -> None:
    text = """
        version: "3.8"
        name: demo
        x-anchors: &base {image: busybox, restart: always}
        networks: {default: null}
        services:
          a: {<<: *base, networks: [default], x-note: anything}
          b: {<<: *base, networks: {default: null}}
        """
    file = parse(tmp_path, text)
    assert (file.name, file.names, file["a"].image, file["a"].restart) == ("demo", ("a", "b"), "busybox", "always")
    assert file.notices == ("restart: ignored for a, b (svcenv starts a service once, never restarts it)",)


@pytest.mark.parametrize(
    ("text", "key", "says"),
    [
        (
            "configs: {}\nservices: {s: {image: x}}\n",
            "configs",
            "not supported by svcenv (supported: services, volumes",
        ),
        ("secrets: {}\nservices: {s: {image: x}}\n", "secrets", "not supported by svcenv"),
        ("networks: {backend: {}}\nservices: {s: {image: x}}\n", "networks.backend", "only the default network"),
        ("networks: {default: {driver: x}}\nservices: {s: {image: x}}\n", "networks.default", "network options"),
        ("volumes: {data: {driver: nfs}}\nservices: {s: {image: x}}\n", "volumes.data.driver", "volume options"),
        ("services: {}\n", "services", "the file defines no services"),
        ("name: x\n", "services", "the file defines no services"),
        ("- a\n- b\n", "(top level)", "expected a mapping"),
        ("services: {'bad name': {image: x}}\n", "services.bad name", "a service name is letters"),
        ("services: {s: [image]}\n", "services.s", "expected a mapping"),
    ],
)
def test_bad_top_level_is_named(tmp_path: Path, text: str, key: str, says: str) -> None:
    message = fails(tmp_path, text)
    assert f": {key}: " in message
    assert says in message


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match="cannot read"):
        load_compose(tmp_path / "missing.yaml")
    path = write(tmp_path, "services:\n  s: [unclosed\n")
    with pytest.raises(ComposeError, match="not valid YAML"):
        load_compose(path, environ={})
    assert issubclass(ComposeError, ConfigurationError)


def test_services_are_frozen_and_hashable(tmp_path: Path) -> None:
    s = service(tmp_path, "image: x\nenvironment: [A=1]\nports: [80]\nlabels: {a: b}\nbuild: .\n")
    assert hash(s) == hash(dataclasses.replace(s))
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.image = "y"  # type: ignore[misc]


# -- x-svcenv --------------------------------------------------------------------------------


def test_x_svcenv(tmp_path: Path) -> None:
    s = service(tmp_path, "image: myorg/pg:1\nx-svcenv: {kind: postgres, timeout: 90s, backend: docker}\n")
    assert (s.x_svcenv.kind, s.x_svcenv.timeout, s.x_svcenv.backend) == ("postgres", 90.0, "docker")
    d = one(tmp_path, "image: myorg/pg:1\nx-svcenv: {kind: postgres, timeout: 45}\n")
    assert (type(d), d.image, d.timeout) == (Postgres, "myorg/pg:1", 45.0)
    assert type(one(tmp_path, "image: postgres:16\nx-svcenv: {kind: service}\nports: [5432]\n")) is Service


@pytest.mark.parametrize(
    ("ext", "key", "says"),
    [
        ("{kind: oracle}", "x-svcenv.kind", "'oracle' is not a kind (postgres, redis"),
        ("{flavour: x}", "x-svcenv.flavour", "not supported by svcenv (supported: kind, timeout, backend)"),
        ("{timeout: -1}", "x-svcenv.timeout", "expected seconds > 0"),
        ("{backend: cloud}", "", "unknown backend 'cloud'"),
    ],
)
def test_bad_x_svcenv_is_named(tmp_path: Path, ext: str, key: str, says: str) -> None:
    message = fails(tmp_path, f"services:\n  s:\n    image: x\n    x-svcenv: {ext}\n")
    assert f"services.s{'.' + key if key else ''}: " in message
    assert says in message


# -- profiles and selection ------------------------------------------------------------------

PROFILED = """
    services:
      api: {image: x, depends_on: [db], profiles: []}
      db: {image: postgres}
      debug: {image: x, profiles: [debug], depends_on: {tools: {condition: service_started}}}
      tools: {image: x, profiles: [tools]}
      docs: {image: x, profiles: [docs, all]}
      extra: {image: x, depends_on: {docs: {required: false}}}
    """


@pytest.mark.parametrize(
    ("services", "profiles", "expected"),
    [
        (None, (), ["api", "db", "extra"]),
        (None, ("debug",), ["api", "db", "debug", "tools", "extra"]),
        (None, ("all",), ["api", "db", "docs", "extra"]),
        (None, ("*",), ["api", "db", "debug", "tools", "docs", "extra"]),
        (["api"], (), ["api", "db"]),
        (["debug"], (), ["debug", "tools"]),
        (["tools", "db"], ("docs",), ["db", "tools"]),
        (["extra"], (), ["extra"]),
        ([], (), []),
    ],
)
def test_profiles_and_selection(
    tmp_path: Path, services: list[str] | None, profiles: tuple[str, ...], expected: list[str]
) -> None:
    file = parse(tmp_path, PROFILED)
    assert [s.name for s in select_services(file, services, profiles)] == expected
    found = load_compose(file.path, services, profiles, environ={})
    assert [d.name for d in found] == expected


def test_optional_dependencies_are_kept_only_when_chosen(tmp_path: Path) -> None:
    assert descriptors(tmp_path, PROFILED)["extra"].depends_on == ()
    assert descriptors(tmp_path, PROFILED, profiles=["docs"])["extra"].depends_on == ("docs",)


def test_unknown_requested_services_are_named(tmp_path: Path) -> None:
    message = fails(tmp_path, PROFILED, services=["api", "ghost"])
    assert "services=['api', 'ghost']: no service 'ghost' in the file (services: api, db, debug" in message


# -- kinds -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "kind"),
    [
        ("postgres", "postgres"),
        ("postgres:16-alpine", "postgres"),
        ("library/postgres:16", "postgres"),
        ("docker.io/library/postgres:16", "postgres"),
        ("docker.io/postgres@sha256:abc", "postgres"),
        ("localhost:5000/postgres:16", "postgres"),
        ("public.ecr.aws/docker/library/postgres:16", "postgres"),
        ("registry.example.com:5000/library/redis:7@sha256:abc", "redis"),
        ("redis:7-alpine", "redis"),
        ("elasticsearch:8.15.0", "elasticsearch"),
        ("docker.elastic.co/elasticsearch/elasticsearch:8.15.0", "elasticsearch"),
        ("mysql:8", "mysql"),
        ("mariadb:11", "mysql"),
        ("mirror.gcr.io/mariadb", "mysql"),
        ("bitnami/redis:7", None),
        ("myorg/postgres", None),
        ("postgis/postgis:16", None),
        ("nginx:1.27", None),
        ("postgres-exporter", None),
    ],
)
def test_kind_from_image(image: str, kind: str | None) -> None:
    assert image_kind(image) == kind


def test_kinds_and_descriptor_basics(tmp_path: Path) -> None:
    text = """
        services:
          db: {image: "postgres:16", ports: ["5433:5432", "9187"]}
          cache: {image: redis}
          search: {image: "docker.elastic.co/elasticsearch/elasticsearch:8.15.0", ports: ["9300:9300"]}
          sql: {image: "mariadb:11"}
          web:
            image: nginx
            ports: ["8080:80", "127.0.0.1:8443:443"]
            expose: [9000]
            depends_on: [db, cache]
            environment: [A=1]
            command: nginx -g 'daemon off;'
            tmpfs: [/var/cache/nginx]
        """
    notices: list[str] = []
    found = {d.name: d for d in load_compose(write(tmp_path, text), environ={}, notices=notices)}
    assert {n: type(d) for n, d in found.items()} == {
        "db": Postgres,
        "cache": Redis,
        "search": Elasticsearch,
        "sql": MySQL,
        "web": Service,
    }
    assert found["db"].ports == (5432, 9187)
    assert found["search"].ports == (9200, 9300)  # the kind's own port first: the handle's url uses it
    assert found["sql"].ports == (3306,)
    web = found["web"]
    assert (web.image, web.ports, web.depends_on, dict(web.env)) == (
        "nginx",
        (80, 443, 9000),
        ("db", "cache"),
        {"A": "1"},
    )
    assert (web.command, web.tmpfs, web.probe) == (("nginx", "-g", "daemon off;"), ("/var/cache/nginx",), None)
    assert "ports: host ports ignored (svcenv publishes every container port on a free 127.0.0.1 port)" in notices


# -- credentials -----------------------------------------------------------------------------


def test_postgres_credentials_and_settings(tmp_path: Path) -> None:
    env = "environment: {POSTGRES_USER: app, POSTGRES_PASSWORD: pw, POSTGRES_DB: shop, TZ: UTC}\n"
    db = one(tmp_path, f"image: postgres\n{env}command: postgres -c max_connections=200 -c fsync=on\n")
    assert (db.user, db.password, db.dbname, dict(db.env)) == ("app", "pw", "shop", {"TZ": "UTC"})
    assert (dict(db.settings), db.command) == ({"max_connections": "200", "fsync": "on"}, None)
    assert "pw" not in repr(db)
    default = one(tmp_path, "image: postgres\nenvironment: [POSTGRES_PASSWORD=pw]\n")
    assert (default.user, default.dbname) == ("postgres", "postgres")  # the image's defaults
    assert one(tmp_path, "image: postgres\nenvironment: [POSTGRES_USER=u]\n").dbname == "u"
    assert one(tmp_path, "image: postgres\n").password is None  # generated per environment
    other = one(tmp_path, "image: postgres\ncommand: [postgres, -p, '5433']\n")
    assert (other.command, dict(other.settings)) == (("postgres", "-p", "5433"), {})


def test_mysql_credentials(tmp_path: Path) -> None:
    env = "{MYSQL_ROOT_PASSWORD: r, MYSQL_DATABASE: shop, MYSQL_USER: app, MYSQL_PASSWORD: pw, TZ: UTC}"
    sql = one(tmp_path, f"image: mysql:8\nenvironment: {env}\n")
    assert (sql.user, sql.password, sql.root_password, sql.dbname, dict(sql.env)) == (
        "app",
        "pw",
        "r",
        "shop",
        {"TZ": "UTC"},
    )
    maria = one(tmp_path, "image: mariadb\nenvironment: {MARIADB_ROOT_PASSWORD: r, MARIADB_DATABASE: d}\n")
    assert (maria.user, maria.password, maria.root_password, maria.dbname) == ("root", None, "r", "d")
    bare = one(tmp_path, "image: mariadb\nenvironment: {MARIADB_RANDOM_ROOT_PASSWORD: 1}\n")
    assert (bare.user, bare.dbname, dict(bare.env)) == ("root", "test", {"MARIADB_RANDOM_ROOT_PASSWORD": "1"})


def test_redis_password_from_the_command(tmp_path: Path) -> None:
    cache = one(tmp_path, "image: redis\ncommand: redis-server --requirepass ${PW} --appendonly no\n", {"PW": "s3"})
    assert (cache.password, cache.command) == ("s3", ("redis-server", "--appendonly", "no"))
    assert "s3" not in repr(cache)
    only = one(tmp_path, "image: redis\ncommand: [redis-server, --requirepass, x]\n")
    assert (only.password, only.command) == ("x", None)
    plain = one(tmp_path, "image: redis\ncommand: redis-server --save ''\n")
    assert (plain.password, plain.command) == ("", ("redis-server", "--save", ""))  # no AUTH, as the file says


def test_elasticsearch_heap(tmp_path: Path) -> None:
    es = one(
        tmp_path, "image: elasticsearch:8.15.0\nenvironment: [ES_JAVA_OPTS=-Xms1g -Xmx1g, discovery.type=single-node]\n"
    )
    assert (es.heap, dict(es.env)) == ("1g", {"discovery.type": "single-node"})
    kept = one(tmp_path, "image: elasticsearch:8.15.0\nenvironment: [ES_JAVA_OPTS=-Xmx2g -XX:+UseG1GC]\n")
    assert (kept.heap, kept.env["ES_JAVA_OPTS"]) == ("2g", "-Xmx2g -XX:+UseG1GC")


# -- probes ----------------------------------------------------------------------------------


def test_healthcheck_probes_combine_with_the_kind(tmp_path: Path) -> None:
    text = """
        services:
          db:
            image: postgres
            healthcheck: {test: ["CMD-SHELL", "pg_isready -U $$POSTGRES_USER"], interval: 2s, timeout: 1s, retries: 50}
          cache:
            image: redis
            healthcheck: {test: [CMD, redis-cli, ping]}
          web:
            image: nginx
            ports: [80]
            healthcheck: {test: curl -f localhost}
          worker: {image: busybox}
          quiet: {image: postgres, healthcheck: {disable: true}}
          timed:
            image: busybox
            healthcheck: {test: [CMD, "true"], interval: 10s, timeout: 10s, retries: 10, start_period: 5s}
        """
    found = descriptors(tmp_path, text)
    assert found["db"].probe == AllOf((PostgresQuery(), Command(["/bin/sh", "-c", "pg_isready -U $POSTGRES_USER"])))
    assert found["db"].timeout == 150.0  # 50 retries x (2s + 1s): longer than svcenv's 60 s
    assert found["cache"].probe == AllOf((RedisPing(), Command(["redis-cli", "ping"])))
    assert found["cache"].timeout is None  # no times given: svcenv's default
    assert found["web"].probe == Command(["/bin/sh", "-c", "curl -f localhost"])  # the healthcheck alone decides
    assert found["worker"].probe == LogLine("", times=0)  # no port, no healthcheck: ready once started
    assert found["quiet"].probe is None
    assert found["timed"].timeout == 205.0
    for probe in (found["db"].probe, found["worker"].probe):
        assert from_record(to_record(probe)) == probe  # recordable: state files and reuse keep them


def test_short_healthcheck_budgets_never_shorten_the_default(tmp_path: Path) -> None:
    assert (
        one(tmp_path, "image: postgres\nhealthcheck: {test: [CMD, x], interval: 1s, timeout: 1s, retries: 2}\n").timeout
        is None
    )


def test_a_healthcheck_without_test_gives_a_notice(tmp_path: Path) -> None:
    notices: list[str] = []
    (db,) = load_compose(
        write(tmp_path, "services:\n  s: {image: postgres, healthcheck: {interval: 1s}}\n"), notices=notices
    )
    assert db.probe is None
    assert "services.s.healthcheck: no test; svcenv cannot run the image's own" in notices


# -- container keys and one-shot jobs --------------------------------------------------------


def test_entrypoint_labels_and_sizes_become_descriptor_fields(tmp_path: Path) -> None:
    s = one(tmp_path, "image: x\nentrypoint: [tini, '--']\nlabels: {team: db}\nshm_size: 1g\nmem_limit: 512m\n")
    assert (s.entrypoint, dict(s.labels)) == (("tini", "--"), {"team": "db"})
    assert dict(s.options) == {"shm_size": 1 << 30, "mem_limit": 512 << 20}
    message = fails(tmp_path, "services:\n  s: {image: x, labels: {svcenv.keep: 'true'}}\n")
    assert "services.s: service 's': label 'svcenv.keep' cannot be set" in message


def test_a_service_others_wait_to_complete_is_a_one_shot_job(tmp_path: Path) -> None:
    text = """
    services:
      app: {image: x, depends_on: {migrate: {condition: service_completed_successfully}}}
      migrate:
        image: x
        command: ./migrate
        healthcheck: {test: [CMD, "true"]}
    """
    found = descriptors(tmp_path, textwrap.dedent(text))
    migrate = found["migrate"]
    assert migrate.one_shot
    assert migrate.probe is None  # done when it exits 0; its healthcheck does not apply
    assert isinstance(migrate.readiness_probe, Completed)
    assert not found["app"].one_shot
    assert found["app"].depends_on == ("migrate",)
    db = "services:\n  a: {image: x, depends_on: {db: {condition: service_completed_successfully}}}\n"
    message = fails(tmp_path, db + "  db: {image: postgres:16}\n")
    assert "services.db: service 'db': a postgres service cannot be one-shot" in message


def test_build_is_passed_where_the_descriptor_takes_it(tmp_path: Path) -> None:
    app = one(tmp_path, "image: myapp\nbuild: {context: ./app, dockerfile: Dockerfile.dev, args: [A=1], target: dev}\n")
    assert app.image is None  # svcenv tags what it builds
    assert (Path(app.build.context), app.build.dockerfile, dict(app.build.args), app.build.target) == (
        tmp_path / "app",
        "Dockerfile.dev",
        {"A": "1"},
        "dev",
    )
    message = fails(tmp_path, "services:\n  s: {build: 'https://github.com/x/y.git'}\n")
    assert "services.s.build.context: svcenv cannot build from a URL yet" in message


def test_volumes_are_passed_where_the_descriptor_takes_them(tmp_path: Path) -> None:
    (tmp_path / "initdb").mkdir()
    (tmp_path / "initdb" / "01.sql").write_text("select 1;")
    (tmp_path / "conf.ini").write_text("x=1")
    notices: list[str] = []
    text = """
        services:
          db:
            image: postgres
            volumes:
              - ./initdb:/docker-entrypoint-initdb.d:ro
              - ./conf.ini:/etc/conf.ini
              - data:/var/lib/x:ro
              - /anon
              - {type: tmpfs, target: /scratch}
        volumes: {data: }
        """
    (db,) = load_compose(write(tmp_path, text), environ={}, notices=notices)
    assert dict(db.volumes) == {"data": "/var/lib/x:ro", "db-anon": "/anon"}
    assert dict(db.files) == {
        "/docker-entrypoint-initdb.d/01.sql": tmp_path / "initdb" / "01.sql",
        "/etc/conf.ini": tmp_path / "conf.ini",
    }
    assert db.tmpfs == ("/scratch",)
    assert any("conf.ini is copied to /etc/conf.ini before the start, not mounted" in n for n in notices)
    message = fails(tmp_path, "services:\n  s: {image: x, volumes: ['./gone:/gone']}\n")
    assert f"services.s.volumes: the bind mount's source {tmp_path / 'gone'} does not exist" in message
    message = fails(tmp_path, "services:\n  s: {image: x, volumes: ['d:/a', 'd:/b']}\nvolumes: {d: }\n")
    assert "services.s.volumes: svcenv cannot mount the volume 'd' twice in one service yet" in message


def test_udp_ports_and_tmpfs_options_cannot_be_set(tmp_path: Path) -> None:
    message = fails(tmp_path, "services:\n  s: {image: x, ports: ['53:53/udp']}\n")
    assert "services.s.ports: svcenv publishes TCP ports only; 53/udp cannot be published" in message
    message = fails(tmp_path, "services:\n  s: {image: x, expose: ['53/udp']}\n")
    assert "services.s.expose: svcenv publishes TCP ports only" in message
    message = fails(tmp_path, "services:\n  s: {image: x, tmpfs: ['/run:size=64m']}\n")
    assert "services.s.tmpfs: svcenv cannot set tmpfs options yet ('/run:size=64m')" in message
    message = fails(tmp_path, "services:\n  s: {image: x, volumes: [{type: tmpfs, target: /t, tmpfs: {size: 1m}}]}\n")
    assert "services.s.volumes: svcenv cannot set tmpfs options yet (/t)" in message


def test_descriptor_errors_name_the_service(tmp_path: Path) -> None:
    message = fails(tmp_path, "services:\n  API: {image: x}\n")
    assert "services.API: service name 'API' is not valid" in message
