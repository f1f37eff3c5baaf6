"""Every ``python -m svcenv`` command as a user runs it: real subprocesses on real services.

Each test has its own project directory and state dir (``SVCENV_STATE_DIR``), so
tests run in parallel; each checks that no container or volume is left behind.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
import redis

from .conftest import containers, dangling_volumes, docker, lasting_dangling_volumes

CONFIG = "[services.postgres]\n[services.redis]\n"


@dataclass
class Project:
    """A project directory with its own state dir; runs the CLI there."""

    dir: Path
    state: Path
    env: dict[str, str]
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "svcenv", *args]

    def run(self, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            cwd=self.dir,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def popen(self, *args: str, **env: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            self.argv(*args),
            cwd=self.dir,
            env={**self.env, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        return proc

    def containers(self) -> list[str]:
        """Containers the CLI started for this project (all carry the state dir's label)."""
        return containers(f"svcenv.state-dir={self.state}")

    def records(self, prefix: str = "") -> list[Path]:
        return sorted(p for p in self.state.glob(f"{prefix}*.json")) if self.state.exists() else []


@pytest.fixture
def project(tmp_path: Path, docker_engine: None) -> Iterator[Project]:
    directory = tmp_path / f"proj-{uuid.uuid4().hex[:8]}"
    directory.mkdir()
    (directory / "svcenv.toml").write_text(CONFIG)
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if k not in ("SVCENV_REUSE", "SVCENV_CONFIG")}
    env["SVCENV_STATE_DIR"] = str(state)
    volumes_before = dangling_volumes()
    p = Project(directory, state, env)
    yield p
    for proc in p.procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    leftovers = p.containers()
    if leftovers:
        docker("rm", "-fv", *leftovers)
    assert leftovers == [], "the CLI left containers behind"
    leaked = lasting_dangling_volumes(volumes_before)
    assert not leaked, f"anonymous volumes leaked: {leaked}"


def _container_ids(project: Project) -> dict[str, str]:
    """service name -> container id, for the project's running containers."""
    ids = {}
    for cid in project.containers():
        ids[docker("inspect", "-f", '{{index .Config.Labels "svcenv.service"}}', cid).strip()] = cid
    return ids


def _connects(variables: dict[str, str]) -> None:
    with psycopg.connect(variables["DATABASE_URL"], connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert redis.Redis.from_url(variables["REDIS_URL"]).ping()


def test_up_detach_status_env_logs_down(project: Project) -> None:
    up = project.run("up", "--detach")
    assert up.returncode == 0, up.stderr
    assert "detached" in up.stderr
    dotenv = dict(line.split("=", 1) for line in up.stdout.splitlines())
    assert len(project.containers()) == 2
    # The state: 0700 dir, 0600 files (they hold the passwords).
    assert stat.S_IMODE(project.state.stat().st_mode) == 0o700
    (record,) = project.records("env-")
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert json.loads(record.read_text())["mode"] == "detached"

    time.sleep(2)  # the CLI has exited: no reaper may remove what it detached
    status = project.run("status")
    assert status.returncode == 0, status.stderr
    assert "detached environment" in status.stdout
    assert status.stdout.count("healthy") == 2
    assert "postgres" in status.stdout
    assert "redis" in status.stdout
    assert dotenv["PGPASSWORD"] not in status.stdout + status.stderr  # only env/up print secrets

    as_json = project.run("env", "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    variables = json.loads(as_json.stdout)
    assert variables == dotenv
    _connects(variables)
    shell = project.run("env", "--format", "shell")
    assert f"export PGPASSWORD={dotenv['PGPASSWORD']}" in shell.stdout
    quoted = subprocess.run(
        ["bash", "-c", f'{shell.stdout}\nprintf %s "$DATABASE_URL"'], capture_output=True, text=True, check=True
    )
    assert quoted.stdout == dotenv["DATABASE_URL"]

    logs = project.run("logs", "redis")
    assert logs.returncode == 0, logs.stderr
    assert "Ready to accept connections" in logs.stdout
    # --follow streams until Ctrl-C (the engine's stream: the last line first with --tail 1).
    follow = project.popen("logs", "redis", "--follow", "--tail", "1")
    assert follow.stdout is not None
    assert "Ready to accept connections" in follow.stdout.readline()
    time.sleep(0.5)
    assert follow.poll() is None, "logs --follow ended while the service runs"
    follow.send_signal(signal.SIGINT)
    assert follow.wait(10) == 0, follow.stderr.read() if follow.stderr else ""
    missing = project.run("logs", "mysql")
    assert missing.returncode == 2
    assert "running: postgres, redis" in missing.stderr

    again = project.run("up", "--detach")
    assert again.returncode == 1
    assert "already has a detached environment" in again.stderr

    down = project.run("down")
    assert down.returncode == 0, down.stderr
    assert "2 container(s) removed" in down.stdout
    assert project.containers() == []
    assert project.records() == []
    assert project.run("status").stdout.startswith("no running environments")
    assert project.run("env").returncode == 1


def test_run_injects_variables_and_returns_the_status(project: Project) -> None:
    script = textwrap.dedent(
        """
        import os, sys, psycopg, redis
        with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
            conn.execute("SELECT 1")
        assert redis.Redis.from_url(os.environ["REDIS_URL"]).ping()
        print("connected", os.environ["PGDATABASE"])
        sys.exit(7)
        """
    )
    result = project.run("run", "--", sys.executable, "-c", script)
    assert result.returncode == 7, result.stderr
    assert result.stdout.strip() == "connected test"
    assert "PGPASSWORD" not in result.stdout + result.stderr
    assert project.containers() == []
    assert project.records() == []


def test_run_command_not_found_exits_127(project: Project) -> None:
    result = project.run("run", "redis", "--", "svcenv-no-such-command")
    assert result.returncode == 127
    assert "command not found" in result.stderr
    assert project.containers() == []


@pytest.mark.parametrize(("signum", "expected"), [(signal.SIGTERM, 42), (signal.SIGINT, 43)])
def test_run_forwards_signals_to_the_command(project: Project, signum: signal.Signals, expected: int) -> None:
    script = textwrap.dedent(
        f"""
        import signal, sys, time
        signal.signal({int(signum)}, lambda *a: sys.exit({expected}))
        print("waiting", flush=True)
        time.sleep(60)
        """
    )
    proc = project.popen("run", "redis", "--", sys.executable, "-c", script)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "waiting"
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == expected, err
    assert project.containers() == []


def test_sigint_during_up_start_up_leaves_nothing(project: Project) -> None:
    proc = project.popen("up", "postgres", "redis")
    deadline = time.monotonic() + 60
    while not project.containers():  # interrupt while they are being created and started
        assert time.monotonic() < deadline, "up did not start creating containers"
        assert proc.poll() is None, "up exited early"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "DATABASE_URL" not in out  # it never became ready
    assert containers(f"svcenv.owner-pid={proc.pid}") == []
    assert project.containers() == []
    assert project.records() == []


def test_unknown_service_exits_2_listing_the_configured_ones(project: Project) -> None:
    (project.dir / "svcenv.toml").write_text(CONFIG + '[services.web]\nimage = "nginx:1"\nports = [80]\n')
    result = project.run("up", "mysql")
    assert result.returncode == 2
    assert "unknown service 'mysql'; known services: postgres, redis, web" in result.stderr
    assert "Traceback" not in result.stderr


def test_detach_with_the_local_backend_is_refused(project: Project) -> None:
    result = project.run("up", "--detach", "--backend", "local", "redis")
    assert result.returncode == 2
    assert "local backend" in result.stderr
    assert "--detach" in result.stderr
    assert project.containers() == []


def test_every_command_has_help(project: Project) -> None:
    for command in ("up", "down", "status", "env", "run", "logs", "prune", "doctor", "cache"):
        result = project.run(command, "--help")
        assert result.returncode == 0, (command, result.stderr)
        assert f"svcenv {command}" in result.stdout


def test_prune_removes_containers_of_dead_owners_but_not_detached_ones(project: Project) -> None:
    token = uuid.uuid4().hex[:12]
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nfrom svcenv import Environment, Redis\n"
            f"env = Environment(Redis(), labels={{'svcenv.test': '{token}'}}).start()\n"
            "print(env.id, flush=True)\ntime.sleep(300)\n",
        ],
        env={**project.env, "SVCENV_REAPER": "0"},  # no crash reaper: the container stays behind
        stdout=subprocess.PIPE,
        text=True,
    )
    project.procs.append(owner)
    assert owner.stdout is not None
    owner.stdout.readline()
    detached = project.run("up", "--detach", "redis")
    assert detached.returncode == 0, detached.stderr
    owner.kill()  # SIGKILL: nothing of the owner runs any more
    owner.wait()
    orphan = containers(f"svcenv.test={token}")
    assert len(orphan) == 1
    try:
        # Scoped by label so that a parallel test's kept services are not touched.
        spared = project.run("prune", "--label", f"svcenv.state-dir={project.state}")
        assert spared.returncode == 0, spared.stderr
        assert len(project.containers()) == 1  # detached (svcenv.keep=true) and recorded: spared
        pruned = project.run("prune", "--label", f"svcenv.test={token}")
        assert pruned.returncode == 0, pruned.stderr
        assert "pruned 1 container(s)" in pruned.stdout
        assert containers(f"svcenv.test={token}") == []
    finally:
        if containers(f"svcenv.test={token}"):
            docker("rm", "-fv", *containers(f"svcenv.test={token}"))
    # A detached container whose record is gone is an orphan too; `status` says it is gone.
    (record,) = project.records("env-")
    docker("rm", "-fv", *project.containers())
    status = project.run("status")
    assert status.returncode == 1
    assert "gone" in status.stdout
    assert project.run("prune").returncode == 0
    assert not record.exists()


def test_reuse_attaches_to_the_same_containers_and_a_change_starts_a_new_one(project: Project) -> None:
    check = "import os, psycopg; psycopg.connect(os.environ['DATABASE_URL']).close()"
    first = project.run("run", "--force-reuse", "--", sys.executable, "-c", check)
    assert first.returncode == 0, first.stderr
    ids = _container_ids(project)
    assert set(ids) == {"postgres", "redis"}
    assert len(project.records("reuse-")) == 2

    second = project.run("run", "--force-reuse", "--", sys.executable, "-c", check)
    assert second.returncode == 0, second.stderr
    assert second.stderr.count("attached in") == 2
    assert _container_ids(project) == ids  # the same containers

    up = project.run("up", "--detach", "--force-reuse")  # detached reuse attaches too
    assert up.returncode == 0, up.stderr
    assert _container_ids(project) == ids
    status = project.run("status")
    assert status.stdout.count("reused") == 2, status.stdout

    changed = CONFIG.replace("[services.postgres]", '[services.postgres]\ndbname = "other"')
    (project.dir / "svcenv.toml").write_text(changed)
    third = project.run("run", "--force-reuse", "--", sys.executable, "-c", check)
    assert third.returncode == 0, third.stderr
    assert "attached in" in third.stderr  # redis: unchanged
    running = project.containers()
    assert len(running) == 3  # a fresh postgres beside the old one
    assert ids["postgres"] in running
    assert ids["redis"] in running

    down = project.run("down")
    assert down.returncode == 0, down.stderr
    assert project.containers() == []
    assert project.records() == []


def test_concurrent_reuse_starts_exactly_one_service(project: Project) -> None:
    def up() -> subprocess.CompletedProcess[str]:
        return project.run("up", "--detach", "--force-reuse", "redis")

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: up(), range(2)))
    for result in results:
        assert result.returncode == 0, result.stderr
    assert len(project.containers()) == 1
    urls = {dict(line.split("=", 1) for line in r.stdout.splitlines())["REDIS_URL"] for r in results}
    assert len(urls) == 1  # both got the same server, password included
    assert redis.Redis.from_url(urls.pop()).ping()
    down = project.run("down")
    assert down.returncode == 0, down.stderr
    assert project.containers() == []


def test_reuse_is_refused_under_ci_unless_forced(project: Project) -> None:
    result = project.run("run", "--reuse", "redis", "--", "true", CI="true")
    assert result.returncode == 0, result.stderr
    assert "CI=true: starting fresh services, not reusing" in result.stderr
    assert project.records("reuse-") == []
    assert project.containers() == []


def test_pytest_sessions_reuse_what_the_cli_started(project: Project) -> None:
    """A pytest session attaches to the services `up --detach --reuse` started; `down` removes them."""
    (project.dir / "test_uses.py").write_text(
        textwrap.dedent(
            """
            import os

            def test_ids(postgres_service, redis_service, postgres_connection, redis_client):
                postgres_connection.execute("SELECT 1")
                assert redis_client.ping()
                with open(os.environ["IDS_FILE"], "a") as out:
                    out.write(f"{postgres_service.id} {redis_service.id}\\n")
            """
        )
    )
    ids_file = project.dir / "ids.txt"
    no_ci = {k: v for k, v in project.env.items() if k != "CI"}
    up = project.run("up", "--detach", "--force-reuse")  # this suite runs under CI=true
    assert up.returncode == 0, up.stderr
    started = _container_ids(project)
    for _ in range(2):
        session = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--svcenv-reuse", "test_uses.py"],
            cwd=project.dir,
            env={**no_ci, "IDS_FILE": str(ids_file)},
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert session.returncode == 0, session.stdout[-3000:]
        assert "postgres attached, redis attached" in session.stdout
    sessions = [line.split() for line in ids_file.read_text().splitlines()]
    short = [[cid[:12] for cid in ids] for ids in sessions]
    assert short == [[started["postgres"], started["redis"]]] * 2, "both sessions used the CLI's containers"
    assert _container_ids(project) == started
    down = project.run("down")
    assert down.returncode == 0, down.stderr
    assert project.containers() == []


def test_progress_is_a_live_table_on_a_terminal(project: Project) -> None:
    """On a TTY the states are redrawn in place (ANSI), then erased; the summary lines follow."""
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        project.argv("run", "redis", "--", sys.executable, "-c", "import time; time.sleep(0.3)"),
        cwd=project.dir,
        env=project.env,
        stdout=subprocess.DEVNULL,
        stderr=follower,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=60) == 0
    seen = b"".join(chunks).decode(errors="replace")
    assert "\x1b[2K" in seen, "no line was redrawn in place"
    assert "redis" in seen
    assert "ready in" in seen
    assert "svcenv: redis: starting" not in seen, "plain progress lines on a terminal"
