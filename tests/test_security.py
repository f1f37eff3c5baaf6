"""Secure by default, asserted on real services.

Ports are published on loopback only (checked from the engine and from the
host's socket table), passwords are generated from :mod:`secrets` with at least
128 bits, they stay out of reprs, logs and error messages, state files are
0600 in 0700 directories, and user values never pass through a shell.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import redis

from svcenv import Environment, Postgres, Redis, ServiceStartError
from svcenv.descriptors import generate_password
from svcenv.probes import LogLine

from .conftest import LeakCheck, docker

LOOPBACK_V4 = "0100007F"  # 127.0.0.1 as /proc/net/tcp writes it
LOOPBACK_V6 = "00000000000000000000000001000000"  # ::1
SECRET = "Sup3r-s3cret-Passw0rd-n0t-in-logs"


def listeners(port: int) -> set[str]:
    """Local addresses listening on ``port``, from /proc/net/tcp and tcp6 (hex, as the kernel writes them)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


@pytest.mark.parametrize("backend", ["docker", "local"])
def test_ports_listen_on_loopback_only(backend: str, leaks: LeakCheck) -> None:
    with Environment(Postgres(), Redis(), backend=backend, labels=leaks.labels) as env:
        for handle in env:
            assert handle.host == "127.0.0.1"
            addresses = listeners(handle.port)
            assert addresses, f"nothing listens on {handle.name}'s port {handle.port}"
            assert addresses <= {LOOPBACK_V4, LOOPBACK_V6}, f"{handle.name} listens beyond loopback: {addresses}"
            if backend == "docker":
                ports = json.loads(docker("inspect", "-f", "{{json .NetworkSettings.Ports}}", handle.id))
                bindings = [b for published in ports.values() if published for b in published]
                assert bindings
                assert {b["HostIp"] for b in bindings} == {"127.0.0.1"}, bindings


def test_generated_passwords_have_at_least_128_bits_from_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    import secrets

    asked: list[int] = []
    real = secrets.token_urlsafe

    def spy(nbytes: int | None = None) -> str:
        asked.append(nbytes or 32)
        return real(nbytes)

    monkeypatch.setattr(secrets, "token_urlsafe", spy)
    password = generate_password()
    assert asked, "passwords must come from the secrets module"
    assert asked[0] * 8 >= 128
    assert len(password) * 6 >= 128  # URL-safe base64: 6 bits per character
    monkeypatch.undo()
    assert len({generate_password() for _ in range(1000)}) == 1000
    first, second = Postgres().resolve(), Postgres().resolve()
    assert first.secrets["password"] != second.secrets["password"]


def test_redis_requires_its_generated_password(leaks: LeakCheck) -> None:
    with Environment(Redis(), labels=leaks.labels) as env:
        handle = env["redis"]
        anonymous = redis.Redis(host=handle.host, port=handle.port, socket_timeout=5)
        with pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        anonymous.close()
        assert handle.client().ping()  # type: ignore[attr-defined]


def test_passwords_stay_out_of_reprs_logs_and_errors(leaks: LeakCheck, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    postgres, cache = Postgres(password=SECRET), Redis(password=SECRET)
    with Environment(postgres, cache, labels=leaks.labels) as env:
        shown = [repr(postgres), repr(cache), repr(env), repr(postgres.resolve()), *(repr(h) for h in env)]
        assert env["postgres"].password == SECRET  # type: ignore[attr-defined]
    broken = Postgres(name="broken", password=SECRET, probe=LogLine("never printed"), timeout=2)
    with pytest.raises(ServiceStartError) as info:
        Environment(broken, labels=leaks.labels).start()
    shown += [str(info.value), repr(info.value)]
    shown += [record.getMessage() for record in caplog.records]
    assert caplog.records, "the start and stop logged nothing: the log check would prove nothing"
    for text in shown:
        assert SECRET not in text


def test_state_files_are_private_and_secrets_only_where_asked(docker_engine: None, tmp_path: Path) -> None:
    (tmp_path / "svcenv.toml").write_text(f'[services.redis]\npassword = "{SECRET}"\n')
    state = tmp_path / "state"
    env = {**os.environ, "SVCENV_STATE_DIR": str(state), "SVCENV_LABELS": "svcenv.test=security-state"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "svcenv", *args]
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)

    up = cli("up", "--detach")
    try:
        assert up.returncode == 0, up.stderr
        assert SECRET in up.stdout  # `up` prints how to connect, password included
        assert SECRET not in up.stderr
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        files = list(state.iterdir())
        assert files
        for path in files:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        status = cli("status")
        assert status.returncode == 0, status.stderr
        assert SECRET not in status.stdout + status.stderr
        assert SECRET in cli("env", "--format", "json").stdout
    finally:
        down = cli("down")
    assert down.returncode == 0, down.stderr
    assert docker("ps", "-aq", "--filter", "label=svcenv.test=security-state").split() == []


def test_xdist_state_is_private(docker_engine: None, pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nsvcenv_services = redis\n")
    pytester.makepyfile(
        test_mode=textwrap.dedent(
            """
            import os, stat

            def test_modes(tmp_path_factory, redis_client):
                # pytest-xdist's documented place for what workers share: the run's basetemp.
                directory = tmp_path_factory.getbasetemp().parent / "svcenv-xdist"
                info = directory.stat()
                assert stat.S_IMODE(info.st_mode) == 0o700
                assert info.st_uid == os.getuid()
                assert stat.S_IMODE((directory / "state.json").stat().st_mode) == 0o600
            """
        )
    )
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_no_user_value_goes_through_a_shell(docker_engine: None, tmp_path: Path) -> None:
    (tmp_path / "svcenv.toml").write_text("[services.redis]\n")
    hostile = ["$(touch PWNED)", "; touch PWNED2", "`touch PWNED3`", "$HOME"]
    printer = "import json, sys; print(json.dumps(sys.argv[1:]))"
    done = subprocess.run(
        [sys.executable, "-m", "svcenv", "run", "--", sys.executable, "-c", printer, *hostile],
        cwd=tmp_path,
        env={**os.environ, "SVCENV_STATE_DIR": str(tmp_path / "state")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == hostile
    assert not list(tmp_path.glob("PWNED*"))


@pytest.mark.parametrize("backend", ["docker", "local"])
def test_values_arrive_literally_in_services(backend: str, leaks: LeakCheck) -> None:
    tricky = "p a$s'w\"d`id`$(id)"
    literal = "$HOME `id` $(id) 'q' \"dq\""
    with Environment(Redis(password=tricky, env={"VALUE": literal}), backend=backend, labels=leaks.labels) as env:
        handle = env["redis"]
        assert handle.client().ping()  # type: ignore[attr-defined]  # the password reached the server intact
        if backend == "docker":
            config_env = json.loads(docker("inspect", "-f", "{{json .Config.Env}}", handle.id))
            assert f"VALUE={literal}" in config_env
            code, output = handle.exec(["printenv", "VALUE"])
            assert code == 0
            assert output.strip() == literal
