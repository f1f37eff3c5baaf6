"""What svcenv says must be true: each test shows a message that used to lie, now telling the truth.

The CLI runs in real subprocesses on real services (see ``test_cli_commands.py``), each test with
its own project dir and state dir, and its containers carry the test's label (``SVCENV_LABELS``)
so that :class:`~tests.conftest.LeakCheck` sees anything left behind.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import LeakCheck, docker


@dataclass
class Cli:
    dir: Path
    env: dict[str, str]

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "svcenv", *args],
            cwd=self.dir,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "svcenv", *args],
            cwd=self.dir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture
def cli(tmp_path: Path, leaks: LeakCheck) -> Iterator[Cli]:
    directory = tmp_path / "proj"
    directory.mkdir()
    (directory / "svcenv.toml").write_text("[services.postgres]\n[services.redis]\n")
    env = {k: v for k, v in os.environ.items() if k not in ("SVCENV_REUSE", "SVCENV_CONFIG")}
    env["SVCENV_STATE_DIR"] = str(tmp_path / "state")
    env["SVCENV_LABELS"] = f"svcenv.test={leaks.token}"
    yield Cli(directory, env)
    left = leaks.leftovers()
    if left:  # a removal may already be under way: let the leak check judge what stays
        subprocess.run(["docker", "rm", "-fv", *left], capture_output=True, timeout=60, check=False)


def _read_until(proc: subprocess.Popen[str], marker: str, seen: list[str], timeout: float = 120) -> None:
    """Read stderr lines into ``seen`` until one contains ``marker``."""
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            raise AssertionError(f"stderr ended before {marker!r}: {''.join(seen)}")
        seen.append(line)
        if marker in line:
            return
    raise AssertionError(f"no {marker!r} within {timeout}s: {''.join(seen)}")


def _finish(proc: subprocess.Popen[str], seen: list[str]) -> str:
    _, rest = proc.communicate(timeout=120)
    return "".join(seen) + rest


# -- 1. run: a signal during the teardown, after CMD ran -------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_run_signal_during_teardown_tells_the_truth(cli: Cli, leaks: LeakCheck, signum: int) -> None:
    """The teardown announces itself ("stopping ..."); the signal is sent the moment it does."""
    proc = cli.popen("run", "--", sys.executable, "-c", "import sys; sys.exit(3)")
    seen: list[str] = []
    _read_until(proc, "stopping ...", seen)
    proc.send_signal(signum)
    err = _finish(proc, seen)
    assert proc.returncode == 3, err  # CMD's status, not 130/143
    assert "before the command started" not in err
    assert "during teardown: still removing" in err  # the signal came while the teardown ran
    assert "exited with status 3" in err
    assert "the teardown ran to its end" in err
    assert err.rstrip().endswith("svcenv: stopped; nothing left running"), err
    assert leaks.leftovers() == []


# -- 6. up: a second Ctrl-C during the teardown -----------------------------------------------------


def test_up_double_ctrl_c_still_ends_with_a_true_line(cli: Cli, leaks: LeakCheck) -> None:
    proc = cli.popen("up")
    seen: list[str] = []
    _read_until(proc, "press Ctrl-C", seen)
    assert len(leaks.leftovers()) == 2
    proc.send_signal(signal.SIGINT)
    _read_until(proc, "stopping ...", seen)
    proc.send_signal(signal.SIGINT)
    err = _finish(proc, seen)
    assert proc.returncode == 0, err
    assert "during teardown: still removing" in err
    assert err.rstrip().endswith("svcenv: stopped; nothing left running"), err
    assert leaks.leftovers() == []


# -- 2. doctor: a missing image is not "ok"; no names means every kind -------------------------------


def test_doctor_says_a_missing_image_is_missing(cli: Cli, leaks: LeakCheck) -> None:
    image = f"svcenv-test/no-such-image:{leaks.token}"
    env = {**cli.env, "SVCENV_REDIS_IMAGE": image}
    never = subprocess.run(
        [sys.executable, "-m", "svcenv", "doctor", "redis"],
        cwd=cli.dir,
        env={**env, "SVCENV_PULL": "never"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert f"docker    no   image {image} is missing on the engine and SVCENV_PULL=never forbids pulling it" in (
        never.stdout
    ), never.stdout
    assert "redis: auto uses docker, but its image is missing: starting it fails" in never.stdout
    assert never.returncode == 1, never.stderr
    pulling = subprocess.run(
        [sys.executable, "-m", "svcenv", "doctor", "redis"],
        cwd=cli.dir,
        env={**env, "SVCENV_PULL": "missing"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert f"docker    ok   image {image} is missing on the engine: it would be pulled" in pulling.stdout
    assert pulling.returncode == 0, pulling.stdout + pulling.stderr
    # An image that is there is still plainly ok.
    there = cli.run("doctor", "redis")
    assert f"docker    ok   image {os.environ['SVCENV_REDIS_IMAGE']}" in there.stdout, there.stdout


def test_doctor_without_names_lists_every_known_kind(tmp_path: Path, docker_engine: None) -> None:
    from svcenv.descriptors import KINDS

    kinds = sorted(set(KINDS) - {"service"})
    assert {"postgres", "redis", "elasticsearch", "mysql"} <= set(kinds)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / ".git").mkdir()  # no config file above this one
    env = {k: v for k, v in os.environ.items() if k not in ("SVCENV_REUSE", "SVCENV_CONFIG")}
    env["SVCENV_STATE_DIR"] = str(tmp_path / "state")
    result = subprocess.run(
        [sys.executable, "-m", "svcenv", "doctor"], cwd=bare, env=env, capture_output=True, text=True, timeout=60
    )
    lines = result.stdout.splitlines()
    listed = sorted(line.split(":", 1)[0] for line in lines if not line.startswith((" ", "#")))
    assert listed == kinds, result.stdout + result.stderr
    # First what the engine is: its version, the API version svcenv negotiated, where ports publish.
    assert re.search(
        r"^# docker: engine .*: docker \S+, API 1\.\d+ \(minimum .*negotiated 1\.\d+\)$", result.stdout, re.M
    )
    assert "ports publish on 127.0.0.1" in result.stdout
    assert re.search(r"^# docker: vm\.max_map_count \d+", result.stdout, re.M), result.stdout


# -- 3. a setting the server rejects: "exited", with its log, not "409 ... exec Conflict" ---------------


def test_rejected_postgres_setting_says_the_server_exited(leaks: LeakCheck) -> None:
    """The server exits at once; the password step's exec then races it (it used to win as a 409).

    Several starts: the old code lost the race most of the time, not every time.
    """
    from svcenv import Environment, Postgres
    from svcenv.errors import SvcenvError

    for _ in range(5):
        env = Environment(Postgres(settings={"shared_buffers": "100TB"}), backend="docker", labels=leaks.labels)
        with pytest.raises(SvcenvError) as raised:
            env.start()
        env.stop()
        said = str(raised.value)
        assert "exited with status" in said, said
        assert "shared_buffers" in said, said  # the log tail says what is wrong
        for wrong in ("409", "Conflict", "not running"):
            assert wrong not in said, said


# -- 4. an external URL whose database name holds a %2F ---------------------------------------------


def test_external_url_with_an_encoded_slash_in_the_database_name() -> None:
    from svcenv import Postgres
    from svcenv.backends.external import parse_url
    from svcenv.errors import ConfigurationError
    from svcenv.mysql import MySQL

    for service, url in (
        (Postgres(), "postgresql://u:secret@127.0.0.1:5432/a%2Fb"),
        (MySQL(), "mysql://u:secret@127.0.0.1:3306/a%2fb"),
    ):
        with pytest.raises(ConfigurationError) as raised:
            parse_url(service, url)
        said = str(raised.value)
        assert "a database name cannot contain '/'" in said, said
        assert "'a/b'" in said, said
        assert "more than a database name" not in said, said
        assert "secret" not in said, said
    # A real second path segment is still that.
    with pytest.raises(ConfigurationError, match="more than a database name"):
        parse_url(Postgres(), "postgresql://u:p@127.0.0.1:5432/a/b")
    # Other escapes stay part of the name.
    assert parse_url(Postgres(), "postgresql://u:p@127.0.0.1:5432/a%20b").credentials["dbname"] == "a b"


# -- 5. prune: a removal the engine refuses is counted and said, exit 1 -------------------------------


def test_prune_says_what_it_could_not_remove(
    leaks: LeakCheck, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real container whose owner is gone, but its removal refused.

    This one mocks the engine's refusal (the SDK's ``Container.remove`` raises the APIError the
    engine would send): a container the engine really refuses to remove cannot be made here. It
    runs ``prune`` in-process for that reason; everything else is real.
    """
    from docker.errors import APIError
    from docker.models.containers import Container

    from svcenv.cli import main

    cid = docker(
        "run", "-d", "--label", f"svcenv.environment=msg-prune-{leaks.token}", "--label",
        f"svcenv.test={leaks.token}", os.environ["SVCENV_REDIS_IMAGE"],
    ).strip()  # fmt: skip
    monkeypatch.setenv("SVCENV_STATE_DIR", str(tmp_path / "state"))

    def refuse(self: object, **kwargs: object) -> None:
        raise APIError("500 Server Error", explanation="driver refused to remove the layer (mocked)")

    try:
        with monkeypatch.context() as patched:
            patched.setattr(Container, "remove", refuse)
            code = main(["prune", "--label", f"svcenv.test={leaks.token}"])
        out, err = capsys.readouterr()
        assert code == 1, out + err
        assert "pruned 0 container(s)" in out
        assert f"could not remove 1 container(s): {cid[:12]} (driver refused to remove the layer (mocked))" in err
        assert leaks.leftovers() == [cid[:12]]
        # Without the refusal the same prune removes it and exits 0.
        assert main(["prune", "--label", f"svcenv.test={leaks.token}"]) == 0
        assert "pruned 1 container(s)" in capsys.readouterr().out
        assert leaks.leftovers() == []
    finally:
        subprocess.run(["docker", "rm", "-fv", cid], capture_output=True, timeout=60, check=False)


# -- 7. SVCENV_PULL=never: a cache image that vanishes before the create ------------------------------


def test_cache_image_vanishing_before_create_is_unavailable_and_not_pulled(
    leaks: LeakCheck, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real pgcache.prepare runs; then the cached image is removed with the SDK, right before the create.

    A configuration of its own (the database name) gives this test a cache key no other test shares.
    """
    import docker as docker_sdk
    from docker.errors import ImageNotFound

    from svcenv import Environment, Postgres
    from svcenv.backends import pgcache
    from svcenv.backends.base import LABEL_ENVIRONMENT
    from svcenv.backends.docker import DockerBackend
    from svcenv.errors import ImageUnavailable, SvcenvError

    real_prepare = pgcache.prepare
    removed: list[str] = []

    def prepare_then_vanish(client: docker_sdk.DockerClient, resolved: object, labels: object) -> object:
        cached, hit = real_prepare(client, resolved, labels)  # type: ignore[arg-type]
        client.images.remove(cached.image, force=True)
        removed.append(cached.image)
        return cached, hit

    monkeypatch.setattr(pgcache, "prepare", prepare_then_vanish)
    monkeypatch.setenv("SVCENV_PULL", "never")
    service = Postgres(dbname=f"vanish{leaks.token}")
    # The backend raises ImageUnavailable, naming the vanished image ...
    backend = DockerBackend()
    try:
        with pytest.raises(ImageUnavailable) as direct:
            backend.create(service.resolve(), {**leaks.labels, LABEL_ENVIRONMENT: f"vanish-{leaks.token}"})
    finally:
        backend.cleanup(leaks.labels)
        backend.close()
    assert f"image {removed[-1]!r} vanished from the engine" in str(direct.value), direct.value
    assert "SVCENV_PULL=never forbids pulling it" in str(direct.value)
    # ... and an environment reports that as the service's failure.
    env = Environment(service, backend="docker", labels=leaks.labels)
    with pytest.raises(SvcenvError) as raised:
        env.start()
    env.stop()
    said = str(raised.value)
    assert f"image {removed[-1]!r} vanished from the engine" in said, said
    assert "SVCENV_PULL=never forbids pulling it" in said, said
    client = docker_sdk.from_env()
    try:
        with pytest.raises(ImageNotFound):
            client.images.get(removed[-1])  # not pulled (nor rebuilt) behind our back
    finally:
        client.close()
