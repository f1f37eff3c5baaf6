"""The local backend against real Postgres and Redis binaries: start, use, refuse, and leave nothing.

Needs ``postgres``/``initdb`` and ``redis-server`` on this machine (skipped without
them, FAILED under ``CI=true``). Elasticsearch has no distribution here, so its
"no distribution" error is tested, and the ``-E`` plumbing runs against a tiny
stand-in distribution written by the test.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest
import redis

from svcenv import (
    BackendUnavailable,
    Elasticsearch,
    Environment,
    Postgres,
    Redis,
    Service,
)
from svcenv.backends import local
from svcenv.backends.local import LocalBackend, LocalInstance

from .conftest import need
from .procs import alive, processes_mentioning

if TYPE_CHECKING:
    from svcenv.descriptors import Resolved

REPO = Path(__file__).resolve().parents[1]


# -- helpers ----------------------------------------------------------------------------------


def group_members(pgid: int) -> list[int]:
    """Live pids in process group ``pgid`` (Postgres' children rename themselves, but keep the group)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields[0] not in "ZX" and int(fields[2]) == pgid:
            found.append(int(entry.name))
    return found


def owned_by(owner_pid: int) -> str:
    """The prefix of every private directory of services that ``owner_pid`` started."""
    return f"{local.TMP_PREFIX}{owner_pid}-"


def workdirs(owner_pid: int) -> list[Path]:
    return sorted(local.tmp_base().glob(owned_by(owner_pid) + "*"))


def wait_for(condition: object, timeout: float) -> bool:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


def instance(env: Environment, name: str) -> LocalInstance:
    """The backend's instance behind a handle (to reach its pid, watchdog and workdir)."""
    found = env[name]._instance
    assert isinstance(found, LocalInstance)
    return found


@pytest.fixture(scope="module")
def installed() -> None:
    """Postgres and Redis binaries exist here (else skip, or fail under CI=true)."""
    capabilities = LocalBackend().capabilities()
    for kind in ("postgres", "redis"):
        if capabilities[kind].startswith(("not found", "unavailable")):
            need(f"local {kind} {capabilities[kind]}")


class RecordingBackend(LocalBackend):
    """A real local backend that remembers every instance it created, for the leak check."""

    def __init__(self, created: list[LocalInstance]) -> None:
        super().__init__()
        self.created = created

    def create(self, resolved: Resolved, labels: Mapping[str, str]) -> LocalInstance:
        made = super().create(resolved, labels)
        self.created.append(made)
        return made


@pytest.fixture
def created(installed: None) -> Iterator[list[LocalInstance]]:
    """Instances made by :func:`backend`s; the test fails if any process or private directory remains."""
    instances: list[LocalInstance] = []
    yield instances

    def leftovers() -> list[int]:
        pids = processes_mentioning(owned_by(os.getpid()))
        for made in instances:
            pids += group_members(int(made.id)) if made.id else []
            pids += [made.watchdog_pid] if made.watchdog_pid and alive(made.watchdog_pid) else []
        return pids

    assert wait_for(lambda: not leftovers(), 5), f"processes leaked: {leftovers()}"
    assert workdirs(os.getpid()) == [], "private directories leaked"


@pytest.fixture
def backend(created: list[LocalInstance]) -> LocalBackend:
    """A local backend whose instances the leak check follows."""
    return RecordingBackend(created)


# -- postgres and redis -------------------------------------------------------------------


def test_postgres_and_redis_work_and_leave_nothing(backend: LocalBackend) -> None:
    pg, rd = Postgres(), Redis()
    with Environment(pg, rd, backend=backend) as env:
        with env[pg].connect() as conn:
            conn.execute("CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)")
            conn.execute("INSERT INTO items (name) VALUES (%s), (%s)", ("apple", "pear"))
            conn.commit()
            assert conn.execute("SELECT name FROM items ORDER BY id").fetchall() == [("apple",), ("pear",)]
            assert conn.execute("SELECT current_user, current_database()").fetchone() == ("postgres", "test")
        client = env[rd].client()
        client.set("greeting", "hello")
        assert client.get("greeting") == b"hello"
        client.close()

        for handle, port in ((env[pg], 5432), (env[rd], 6379)):
            assert handle.backend == "local"
            assert handle.host == "127.0.0.1"
            assert list(handle.ports) == [port]
            assert alive(int(handle.id))
        pids = [int(env[n].id) for n in ("postgres", "redis")]
        watchdogs = [instance(env, n).watchdog_pid for n in ("postgres", "redis")]
        dirs = [instance(env, n).workdir for n in ("postgres", "redis")]
        assert all(d.is_dir() for d in dirs)
        assert "ready to accept connections" in env[pg].logs()
    assert not any(alive(pid) for pid in pids)
    assert not any(pid and alive(pid) for pid in watchdogs)
    assert not any(d.exists() for d in dirs)


def test_env_vars_connect(backend: LocalBackend) -> None:
    with Environment(Postgres(), Redis(), backend=backend) as env:
        variables = env.env_vars()
        with psycopg.connect(variables["DATABASE_URL"]) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        with psycopg.connect(variables["POSTGRES_URL"]) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("test",)
        client = redis.Redis.from_url(variables["REDIS_URL"])
        assert client.ping()
        client.close()


def test_wrong_or_no_password_is_refused_over_tcp(backend: LocalBackend) -> None:
    pg, rd = Postgres(), Redis()
    with Environment(pg, rd, backend=backend) as env:
        handle = env[pg]
        for password in ("wrong", ""):
            with pytest.raises(psycopg.OperationalError, match="password"):
                psycopg.connect(
                    host="127.0.0.1", port=handle.port, user=handle.user, password=password, dbname="test"
                ).close()
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        once = Retry(NoBackoff(), 0)  # redis-py otherwise retries a refused AUTH for seconds
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=env[rd].port, password="nope", retry=once).ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=env[rd].port, retry=once).ping()


def test_password_stays_off_command_lines(backend: LocalBackend) -> None:
    pg, rd = Postgres(), Redis()
    with Environment(pg, rd, backend=backend) as env:
        for password in (env[pg].password, env[rd].password):
            assert password
            assert processes_mentioning(password) == []


def test_two_environments_at_once_get_different_ports_and_data(created: list[LocalInstance]) -> None:
    pg, rd = Postgres(), Redis()
    envs = [Environment(pg, rd, backend=RecordingBackend(created)) for _ in range(2)]
    threads = [threading.Thread(target=env.start) for env in envs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        ports = [env[name].port for env in envs for name in ("postgres", "redis")]
        assert len(set(ports)) == 4
        with envs[0][pg].connect() as conn:
            conn.execute("CREATE TABLE only_here (x int)")
            conn.commit()
        with envs[1][pg].connect() as conn:
            assert conn.execute("SELECT to_regclass('only_here')").fetchone() == (None,)
        envs[0][rd].client().set("k", "first")
        assert envs[1][rd].client().get("k") is None
    finally:
        for env in envs:
            env.stop()


def test_custom_user_dbname_settings_and_command(backend: LocalBackend) -> None:
    pg = Postgres(
        name="pg-custom",
        user="alice",
        password="s3cret 'quoted\"",
        dbname="app-db",
        settings={"max_connections": "42"},
        command=("postgres", "-c", "work_mem=7MB"),
    )
    rd = Redis(name="plain-redis", password="", command=("redis-server", "--maxmemory", "5mb"))
    quiet = Redis(name="quiet-redis", password='p "w\\ d#', command=("redis-server", "--loglevel", "warning"))
    with Environment(pg, rd, quiet, backend=backend) as env:
        assert env[quiet].client().ping()
        assert "Ready to accept connections" not in env[quiet].logs()
        with env[pg].connect() as conn:
            assert conn.execute("SELECT current_user, current_database()").fetchone() == ("alice", "app-db")
            assert conn.execute("SHOW max_connections").fetchone() == ("42",)
            assert conn.execute("SHOW work_mem").fetchone() == ("7MB",)
            assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        client = env[rd].client()
        assert client.ping()  # no AUTH needed
        assert client.config_get("maxmemory") == {"maxmemory": str(5 * 1024 * 1024)}
        client.close()


def test_stop_is_idempotent_and_the_log_outlives_it(backend: LocalBackend) -> None:
    env = Environment(Redis(), backend=backend).start()
    found = instance(env, "redis")
    env.stop()
    found.stop()
    assert found.stopped
    assert found.exit_status() == 0
    assert "Ready to accept connections" in found.logs()
    assert len(found.logs(tail=2).splitlines()) == 2
    assert not found.workdir.exists()


def test_a_server_that_dies_reports_its_status(backend: LocalBackend) -> None:
    with Environment(Redis(), backend=backend) as env:
        os.kill(int(env["redis"].id), signal.SIGKILL)
        assert wait_for(lambda: env["redis"].exit_status() is not None, 5)
        assert env["redis"].exit_status() == 128 + signal.SIGKILL


def sysv_segments() -> set[int]:
    lines = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    return {int(line.split()[1]) for line in lines}


def test_killing_the_watchdog_kills_the_server(backend: LocalBackend) -> None:
    """PDEATHSIG: the server never outlives its watchdog; stop() frees what the killed server held."""
    with Environment(Postgres(), backend=backend) as env:
        with env["postgres"].connect() as conn:  # a parallel-capable server has dynamic shared memory
            assert conn.execute("SHOW dynamic_shared_memory_type").fetchone() == ("mmap",)
        found = instance(env, "postgres")
        shmid = int((found.workdir / "data" / "postmaster.pid").read_text().splitlines()[6].split()[1])
        assert shmid in sysv_segments()
        # Nothing in /dev/shm that a killed server would leave (asked of this server: other tests run in parallel).
        assert "/dev/shm/PostgreSQL" not in Path(f"/proc/{found.id}/maps").read_text()
        marker = str(found.workdir)
        assert len(processes_mentioning(marker)) >= 2  # the watchdog and the postmaster
        assert found.watchdog_pid is not None
        os.kill(found.watchdog_pid, signal.SIGKILL)
        assert wait_for(lambda: not group_members(int(found.id)), 5), group_members(int(found.id))
        assert not processes_mentioning(marker)
        assert found.exit_status() == -signal.SIGKILL
    assert shmid not in sysv_segments()


def test_a_taken_port_is_retried(backend: LocalBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process binding the chosen port first costs a retry, not a failure."""
    import socket

    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    real = local.free_port
    handed: list[int] = []

    def first_the_taken_one() -> int:
        port = taken if len(handed) < 2 else real()
        handed.append(port)
        return port

    monkeypatch.setattr(local.process, "free_port", first_the_taken_one)  # where LocalInstance.start looks it up
    try:
        with Environment(Postgres(), Redis(), backend=backend) as env:
            assert taken not in (env["postgres"].port, env["redis"].port)
            assert env["redis"].client().ping()
            with env["postgres"].connect() as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        squatter.close()
    assert handed.count(taken) == 2


def test_owner_killed_with_sigkill_leaves_no_server(installed: None) -> None:
    """The owner dies without any teardown; its watchdogs stop the servers and remove their directories."""
    script = textwrap.dedent(
        """
        import json, time
        from svcenv import Environment, Postgres, Redis
        from svcenv.backends.local import LocalBackend
        env = Environment(Postgres(), Redis(), backend=LocalBackend()).start()
        info = {}
        for handle in env:
            inst = handle._instance
            info[handle.name] = {"pid": int(handle.id), "watchdog": inst.watchdog_pid, "workdir": str(inst.workdir),
                                 "url": handle.url}
        print(json.dumps(info), flush=True)
        time.sleep(600)
        """
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert owner.stdout is not None
    try:
        ready, _, _ = select.select([owner.stdout], [], [], 60)
        assert ready, "the owner did not start its services"
        info = json.loads(owner.stdout.readline())
    except BaseException:
        owner.kill()
        owner.wait()
        raise
    pids = [s["pid"] for s in info.values()] + [s["watchdog"] for s in info.values()]
    assert all(alive(pid) for pid in pids)
    with psycopg.connect(info["postgres"]["url"]) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert redis.Redis.from_url(info["redis"]["url"]).ping()

    owner.send_signal(signal.SIGKILL)
    owner.wait()
    marker = owned_by(owner.pid)

    def leftovers() -> list[int]:
        return processes_mentioning(marker) + [p for s in info.values() for p in group_members(s["pid"])]

    assert wait_for(lambda: not leftovers(), 10), f"left running: {leftovers()}"
    assert not any(alive(pid) for pid in pids)
    assert wait_for(lambda: not workdirs(owner.pid), 5), workdirs(owner.pid)


@pytest.mark.parametrize("delay", [0.0, 0.15, 0.4])
def test_ctrl_c_during_start_leaves_nothing(installed: None, delay: float) -> None:
    """A real SIGINT to a process that is starting (or has just started) local services."""
    script = textwrap.dedent(
        """
        import sys, time
        from svcenv import Environment, Postgres, Redis
        from svcenv.backends.local import LocalBackend
        try:
            print("starting", flush=True)
            Environment(Postgres(), Redis(), backend=LocalBackend()).start()
            time.sleep(600)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(130)
        """
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert owner.stdout is not None
    assert owner.stdout.readline().strip() == "starting"
    time.sleep(delay)
    owner.send_signal(signal.SIGINT)
    out, _ = owner.communicate(timeout=60)
    assert owner.returncode == 130, out
    assert wait_for(lambda: not processes_mentioning(owned_by(owner.pid)), 5)
    assert workdirs(owner.pid) == []


# -- elasticsearch, generic services and discovery -----------------------------------------


def test_elasticsearch_without_distribution_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SVCENV_ELASTICSEARCH_HOME", raising=False)
    monkeypatch.delenv("ES_HOME", raising=False)
    backend = LocalBackend()
    es = Elasticsearch()
    expected = "local: cannot serve elasticsearch: no local distribution; set SVCENV_ELASTICSEARCH_HOME"
    assert backend.supports(es) == expected
    assert backend.capabilities()["elasticsearch"].startswith("not found: no local distribution")
    with pytest.raises(BackendUnavailable) as raised:
        backend.create(es.resolve(), {"svcenv.environment": "t"})
    assert str(raised.value) == expected
    # The environment asks before it starts anything, and names the service and the cause.
    with pytest.raises(BackendUnavailable, match="service 'elasticsearch' cannot run on the local backend: cannot "):
        Environment(es, backend=backend).start()
    assert workdirs(os.getpid()) == []


def test_generic_services_are_unavailable() -> None:
    backend = LocalBackend()
    web = Service("web", "nginx:alpine", ports=(80,))
    reason = backend.supports(web)
    assert reason is not None
    assert "not images" in reason
    with pytest.raises(BackendUnavailable, match="cannot run service 'web'"):
        backend.create(web.resolve(), {"svcenv.environment": "t"})
    assert backend.supports(Postgres(command=("/docker-entrypoint.sh", "postgres"))) is not None


def test_check_fails_only_when_nothing_is_installed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SVCENV_POSTGRES_BIN", str(tmp_path / "nothing"))
    monkeypatch.setenv("SVCENV_REDIS_BIN", str(tmp_path / "nothing"))
    monkeypatch.setenv("SVCENV_MYSQL_BIN", str(tmp_path / "nothing"))
    monkeypatch.delenv("SVCENV_ELASTICSEARCH_HOME", raising=False)
    monkeypatch.delenv("ES_HOME", raising=False)
    with pytest.raises(BackendUnavailable) as raised:
        LocalBackend().check()
    for said in ("postgres:", "SVCENV_POSTGRES_BIN", "redis:", "SVCENV_REDIS_BIN", "elasticsearch:", "mysql:"):
        assert said in str(raised.value)


def test_capabilities_describe_what_runs(installed: None) -> None:
    capabilities = LocalBackend().capabilities()
    assert set(capabilities) == {"postgres", "redis", "elasticsearch", "mysql"}
    assert capabilities["postgres"].startswith("postgres ")
    assert " at " in capabilities["postgres"]
    assert capabilities["redis"].startswith("redis ")
    LocalBackend().check()


@pytest.mark.skipif(os.geteuid() != 0, reason="the account rule applies to root only")
def test_root_without_an_account_is_told_the_options(monkeypatch: pytest.MonkeyPatch, installed: None) -> None:
    monkeypatch.setattr(local.accounts, "ACCOUNTS", ("svcenv-test-no-such-user",))
    monkeypatch.delenv("SVCENV_LOCAL_CREATE_USER", raising=False)
    reason = LocalBackend().supports(Postgres())
    assert reason is not None
    assert "SVCENV_LOCAL_CREATE_USER=1" in reason
    assert LocalBackend().supports(Redis()) is None  # Redis runs as the caller
    with pytest.raises(BackendUnavailable, match="refuse to run as root"):
        local.server_account()


FAKE_ELASTICSEARCH = """\
#!/usr/bin/python3
# A stand-in bin/elasticsearch: takes -E settings like the real one, refuses root, serves the health API.
import json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

if os.geteuid() == 0:
    sys.exit("can not run elasticsearch as root")
args = sys.argv[1:]
settings = dict(args[i + 1].split("=", 1) for i in range(0, len(args), 2) if args[i] == "-E")
print("settings " + json.dumps(settings, sort_keys=True), flush=True)
print("env", "ES_JAVA_OPTS=" + os.environ.get("ES_JAVA_OPTS", ""), "ES_PATH_CONF=" + os.environ["ES_PATH_CONF"])

class Health(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"status": "green", "timed_out": False}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

HTTPServer((settings["network.host"], int(settings["http.port"])), Health).serve_forever()
"""


@pytest.fixture
def fake_distribution() -> Iterator[Path]:
    """A directory that looks like an Elasticsearch distribution (readable by the server account)."""
    home = Path(tempfile.mkdtemp(prefix="svcenv-test-es-"))
    try:
        home.chmod(0o755)
        (home / "bin").mkdir()
        (home / "config").mkdir()
        (home / "config" / "elasticsearch.yml").write_text("# empty\n")
        launcher = home / "bin" / "elasticsearch"
        launcher.write_text(FAKE_ELASTICSEARCH)
        launcher.chmod(0o755)
        yield home
    finally:
        import shutil

        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.skipif(not os.access("/usr/bin/python3", os.X_OK), reason="the stand-in launcher needs /usr/bin/python3")
def test_elasticsearch_from_a_local_distribution(
    backend: LocalBackend, fake_distribution: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SVCENV_ELASTICSEARCH_HOME", str(fake_distribution))
    es = Elasticsearch(heap="256m", env={"cluster.name": "svcenv-local"})
    assert backend.supports(es) is None
    with Environment(es, backend=backend) as env:
        handle = env[es]
        assert list(handle.ports) == [9200]
        settings = json.loads(handle.logs().split("settings ", 1)[1].splitlines()[0])
        assert settings["http.port"] == str(handle.port)
        assert settings["network.host"] == "127.0.0.1"
        assert settings["discovery.type"] == "single-node"
        assert settings["xpack.security.enabled"] == "false"
        assert settings["cluster.name"] == "svcenv-local"
        assert settings["path.data"].startswith(str(instance(env, "elasticsearch").workdir))
        assert "ES_JAVA_OPTS=-Xms256m -Xmx256m" in handle.logs()
        workdir = instance(env, "elasticsearch").workdir
    assert not workdir.exists()


# -- the template cache and stale directories --------------------------------------------


def test_template_is_built_once_by_concurrent_callers(
    installed: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SVCENV_CACHE_DIR", str(tmp_path))
    install = local.find_postgres()
    account = local.server_account()
    results: list[tuple[Path, bool]] = []

    def build() -> None:
        results.append(local.postgres_template(install, account, "bob", "db"))

    threads = [threading.Thread(target=build) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [built for _, built in results].count(True) == 1
    assert len({path for path, _ in results}) == 1
    data = results[0][0]
    assert (data / "PG_VERSION").is_file()
    assert [p.name for p in (tmp_path / "local").iterdir() if ".build-" in p.name] == []
    hba = (data / "pg_hba.conf").read_text()
    assert "scram-sha-256" in hba
    assert workdirs(os.getpid()) == []  # the scratch directory is gone too


def test_sweep_removes_directories_of_dead_owners_only(installed: None) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    base = local.tmp_base()
    stale = Path(tempfile.mkdtemp(prefix=f"{owned_by(dead_pid)}envid-postgres-", dir=base))
    (stale / "data").mkdir()
    (stale / local.MARKER).write_text(json.dumps({"owner_pid": dead_pid, "watchdog_pid": dead_pid}))
    mine = Path(tempfile.mkdtemp(prefix=f"{owned_by(os.getpid())}envid-redis-", dir=base))
    try:
        local.sweep_stale(base)
        assert not stale.exists()
        assert mine.exists()
    finally:
        import shutil

        shutil.rmtree(mine, ignore_errors=True)
        shutil.rmtree(stale, ignore_errors=True)
