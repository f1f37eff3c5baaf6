"""What a killed run leaves outside the engine: the xdist share dir, databases on an external server (#18 row 13).

A SIGKILLed run cannot clean up; the containers go with its reaper, but two things live
elsewhere: the xdist share directory (``<basetemp>/svcenv-xdist``, passwords inside) and the
template and test databases on an **external** Postgres (one svcenv did not start, so no
reaper removes it). Both record their owner (host, pid namespace, pid, start time); the next
run that needs them removes what provably dead owners left, and nothing of a live one.

Run the way users run: pytest in a subprocess with the plugin, killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from svcenv import Environment, Postgres
from svcenv._util import owner_record, owner_tag, tag_gone
from svcenv.isolation.postgres import sweep_abandoned
from svcenv.pytest import _share

from .conftest import LeakCheck
from .procs import group_members

HOLD = """
import os
import time
from pathlib import Path

def test_holds(postgres_connection):
    postgres_connection.execute("SELECT 1")
    # Written aside and renamed: the test reads the file as soon as its name appears.
    aside = Path(os.environ["HELD_DIR"], f".{os.getpid()}")
    aside.write_text(postgres_connection.info.dbname)
    aside.rename(aside.with_name(str(os.getpid())))
    release = Path(os.environ["HELD_DIR"], "release")
    deadline = time.monotonic() + 120
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
"""

QUICK = """
def test_quick(postgres_connection):
    assert postgres_connection.execute("SELECT 1").fetchone() == (1,)
"""


def _project(root: Path, name: str, body: str) -> Path:
    project = root / name
    project.mkdir()
    (project / "test_it.py").write_text(textwrap.dedent(body))
    (project / "pytest.ini").write_text("[pytest]\nsvcenv_postgres_prefetch = 1\n")
    return project


def _pytest(project: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *args],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: killed whole, workers included
    )


def _holding(root: Path, name: str, env: dict[str, str], workers: str) -> tuple[Path, subprocess.Popen[str]]:
    """A run of :data:`HOLD` (its tests hold their database until ``<project>/held/release`` exists)."""
    project = _project(root, name, HOLD)
    (project / "held").mkdir()
    run = _pytest(project, {**env, "HELD_DIR": str(project / "held")}, "-n", workers, "-p", "xdist", "test_it.py")
    return project / "held", run


def _until(check: Any, limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {limit}s: {what}")
        time.sleep(0.05)


def _held(held: Path, count: int, run: subprocess.Popen[str]) -> list[str]:
    """The databases ``count`` holding tests of ``run`` are in (once they all hold one)."""

    def holding() -> bool:
        if run.poll() is not None:
            raise AssertionError(f"the run ended early:\n{run.stdout.read() if run.stdout else ''}")
        return len([p for p in held.iterdir() if p.name.isdigit()]) >= count

    _until(holding, 120, f"{count} tests holding a database")
    return sorted(p.read_text() for p in held.iterdir() if p.name.isdigit())


def _kill_group(run: subprocess.Popen[str]) -> None:
    """SIGKILL the run's whole process group (controller and workers: a cancelled CI job)."""
    os.killpg(run.pid, signal.SIGKILL)
    run.wait(timeout=30)
    # The workers die a moment after the controller (a SIGKILL is delivered, not done, when killpg returns).
    _until(lambda: not group_members(run.pid), 10, "every process of the killed run ended")
    assert run.stdout is not None
    run.stdout.close()


def _finish(run: subprocess.Popen[str], limit: float = 180) -> str:
    out, _ = run.communicate(timeout=limit)
    assert run.returncode == 0, out
    return out


@pytest.fixture
def base_env(leaks: LeakCheck, tmp_path: Path) -> dict[str, str]:
    """The environment of a user's run: svcenv's labels for leak counting, pytest's temp root private."""
    env = dict(os.environ)
    env["SVCENV_LABELS"] = ",".join(f"{k}={v}" for k, v in leaks.labels.items())
    env["PYTEST_DEBUG_TEMPROOT"] = str(tmp_path / "temproot")  # pytest's numbered basetemps live here
    (tmp_path / "temproot").mkdir()
    env.pop("PYTEST_XDIST_WORKER", None)
    env.pop("PYTEST_XDIST_WORKER_COUNT", None)
    env.pop("PYTEST_ADDOPTS", None)
    return env


def _shares(temproot: Path) -> list[Path]:
    return sorted(p for p in temproot.glob("pytest-of-*/pytest-*/svcenv-xdist") if not p.parent.is_symlink())


# -- the xdist share directory ---------------------------------------------------------------------


def test_a_killed_xdist_runs_share_dir_goes_at_the_next_run(
    tmp_path: Path, base_env: dict[str, str], leaks: LeakCheck
) -> None:
    held, run = _holding(tmp_path, "killed", base_env, "2")
    try:
        _held(held, 1, run)
        (share,) = _shares(tmp_path / "temproot")
        state = json.loads((share / "state.json").read_text())
        assert state["services"], "the share holds the environment's snapshot"
    finally:
        _kill_group(run)
    _until(lambda: not leaks.leftovers(), 30, "the killed run's containers reaped")
    assert share.is_dir(), "SIGKILL leaves the share (nothing in the run can remove it)"
    assert "password" in (share / "state.json").read_text()

    later = _project(tmp_path, "later", QUICK)
    out = _finish(_pytest(later, base_env, "-n", "2", "-p", "xdist", "test_it.py"))
    assert "1 passed" in out, out
    assert not share.exists(), "the next xdist run removes a dead run's share (secrets inside)"
    assert _shares(tmp_path / "temproot") == [], "and its own"


def test_a_live_runs_share_is_not_swept(tmp_path: Path, base_env: dict[str, str]) -> None:
    held, run = _holding(tmp_path, "live", base_env, "2")
    try:
        _held(held, 1, run)
        (share,) = _shares(tmp_path / "temproot")
        other = _finish(_pytest(_project(tmp_path, "other", QUICK), base_env, "-n", "2", "-p", "xdist", "test_it.py"))
        assert "1 passed" in other
        assert (share / "state.json").exists(), "another run removed a live run's share"
        (held / "release").touch()
        assert "1 passed" in _finish(run)
    finally:
        if run.poll() is None:
            _kill_group(run)
    assert not share.exists(), "a run removes its own share at the end"


def test_the_sweep_judges_only_owners_it_can_see(tmp_path: Path) -> None:
    """The rule on its own, with real processes: a share is removed only when every recorded owner ended here."""
    ended = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    dead = owner_record(ended.pid)
    ended.kill()
    ended.wait()
    live = owner_record()
    elsewhere = {**dead, "identity": "another-boot/4026531836"}

    def share(name: str, controller: object = None, owner: object = None) -> Path:
        path = tmp_path / "pytest-of-me" / name / _share.DIRNAME
        path.mkdir(parents=True, mode=0o700)
        if controller is not None:
            (path / "run.json").write_text(json.dumps({"controller": controller}))
        if owner is not None:
            (path / "owner").write_text(json.dumps(owner))
        (path / "state.json").write_text("{}")
        return path

    gone = share("pytest-1", dead, dead)
    gone_before_owner = share("pytest-2", dead)  # killed while the first worker started the services
    controller_lives = share("pytest-3", live, dead)
    owner_lives = share("pytest-4", dead, live)
    other_namespace = share("pytest-5", elsewhere, elsewhere)
    unreadable = share("pytest-6", dead, None)
    (unreadable / "owner").write_text("{half")
    old_format = share("pytest-7")
    (old_format / "owner").write_text(str(ended.pid))  # an older svcenv: a bare pid, not judged
    current = tmp_path / "pytest-of-me" / "pytest-8"
    current.mkdir()
    (tmp_path / "pytest-of-me" / "pytest-current").symlink_to(current)

    removed = _share.sweep_abandoned(current)

    assert sorted(removed) == [gone, gone_before_owner]
    assert not gone.exists()
    assert not gone_before_owner.exists()
    for kept in (controller_lives, owner_lives, other_namespace, unreadable, old_format):
        assert (kept / "state.json").exists(), kept


# -- databases on an external Postgres -----------------------------------------------------------


@pytest.fixture(scope="module")
def external_postgres(docker_engine: None) -> Iterator[Any]:
    """A Postgres the runs below get by URL (``SVCENV_POSTGRES_URL``): svcenv did not start it for them."""
    pg = Postgres()
    with Environment(pg, backend="docker", labels={"svcenv.test": "external-postgres"}) as env:
        yield env[pg]


def _ours(server: Any) -> set[str]:
    with server.connect(autocommit=True) as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'svcenv\\_%'")}


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_killed_runs_databases_on_an_external_server_go_at_the_next_run(
    tmp_path: Path, base_env: dict[str, str], external_postgres: Any, workers: str
) -> None:
    env = {**base_env, "SVCENV_POSTGRES_URL": external_postgres.url}
    before = _ours(external_postgres)

    killed, run = _holding(tmp_path, "killed", env, workers)
    try:
        (held,) = _held(killed, 1, run)
    finally:
        _kill_group(run)
    left = _ours(external_postgres) - before
    assert held in left
    assert any(name.startswith("svcenv_tpl_") for name in left), left
    assert all(tag_gone(name) for name in left), left

    live, holding = _holding(tmp_path, "live", env, workers)
    try:
        (live_db,) = _held(live, 1, holding)
        live_left = _ours(external_postgres) - before - left
        assert live_db in live_left

        started = time.monotonic()
        out = _finish(_pytest(_project(tmp_path, "later", QUICK), env, "-n", workers, "-p", "xdist", "test_it.py"))
        print(f"a later run (-n {workers}) with the sweep took {time.monotonic() - started:.2f}s")
        assert "1 passed" in out, out
        now = _ours(external_postgres)
        assert not (now & left), f"a dead run's databases are still there: {sorted(now & left)}"
        assert live_left <= now, f"a live run's databases were dropped: {sorted(live_left - now)}"
        (live / "release").touch()
        assert "1 passed" in _finish(holding)
    finally:
        if holding.poll() is None:
            _kill_group(holding)
    assert _ours(external_postgres) == before, "every run removes its own databases"


def test_databases_of_owners_elsewhere_or_untagged_are_never_swept(external_postgres: Any) -> None:
    """Another machine's (or container's) run sharing the server, and names without a tag, are not judged."""
    ended = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    dead = f"svcenv_t_abcdef_{owner_tag(ended.pid)}_1"  # its tag while it ran
    ended.kill()
    ended.wait()
    elsewhere = "svcenv_t_abcdef_o00000000_1_1_1"  # a tag of another host: its pid says nothing here
    untagged = "svcenv_t_abcdef_1"  # an older svcenv's name
    names = [dead, elsewhere, untagged]
    with external_postgres.connect(autocommit=True) as admin:
        for name in names:
            admin.execute(f'CREATE DATABASE "{name}"')
        try:
            dropped = sweep_abandoned(admin)
            assert dead in dropped
            assert elsewhere not in dropped
            assert untagged not in dropped
            assert _ours(external_postgres) >= {elsewhere, untagged}
        finally:
            for name in names:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
