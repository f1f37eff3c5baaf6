"""One network per environment on Docker: services reach each other by name, and nothing else does.

The network carries the environment's labels and goes with its last container,
on every exit path: a normal exit, an exception in the body, a failed start,
the cleanup sweep, the crash reaper and ``prune``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from svcenv import BuildSpec, ConfigurationError, Environment, Postgres, Redis, Service, ServiceStartError
from svcenv.backends.docker import DockerBackend
from svcenv.backends.external import ExternalBackend
from svcenv.handles import PostgresHandle
from svcenv.probes import Command, LogLine

from .conftest import LeakCheck, containers, docker, networks

pytestmark = pytest.mark.docker

REACH = textwrap.dedent(
    """
    import socket, struct, time
    pg = socket.create_connection(("postgres", 5432), timeout=5)
    pg.sendall(struct.pack("!ii", 8, 80877103))  # SSLRequest: any Postgres answers one byte, S or N
    answer = pg.recv(1)
    rd = socket.create_connection(("redis", 6379), timeout=5)
    rd.sendall(b"AUTH pw\\r\\nPING\\r\\n")
    said = b""
    while b"PONG" not in said and len(said) < 200:
        said += rd.recv(200)
    print("reached postgres", answer, "and redis", said, flush=True)
    time.sleep(3600)
    """
)


def _idle(name: str, image: str, **kwargs: object) -> Service:
    """A service that only sleeps: a place to run commands inside the network."""
    return Service(name, image=image, command=("sleep", "infinity"), probe=Command(["true"]), **kwargs)  # type: ignore[arg-type]


def _ip(container_id: str, network: str) -> str:
    info = json.loads(docker("inspect", container_id))[0]
    return str(info["NetworkSettings"]["Networks"][network]["IPAddress"])


def test_an_app_built_from_the_base_reaches_postgres_and_redis_by_service_name(
    leaks: LeakCheck, base_image: str, built_images: set[str], tmp_path: Path
) -> None:
    (tmp_path / "reach.py").write_text(REACH)
    (tmp_path / "Dockerfile").write_text(f'FROM {base_image}\nCOPY reach.py /reach.py\nCMD ["python3", "/reach.py"]\n')
    pg, rd = Postgres(), Redis(password="pw")
    app = Service("app", build=BuildSpec(tmp_path), probe=LogLine("reached postgres"), depends_on=("postgres", "redis"))
    with Environment(pg, rd, app, labels=leaks.labels) as env:
        log = env[app].logs()
        assert "reached postgres b'S'" in log or "reached postgres b'N'" in log, log
        assert "+PONG" in log, log
        # The in-network addresses, used by real clients from inside the network.
        assert (env[pg].internal_host, env[pg].internal_port) == ("postgres", 5432)
        assert env[pg].internal_url == env[pg].url_for("test", internal=True)
        assert env[pg].internal_url.endswith("@postgres:5432/test")
        assert env[rd].internal_url == "redis://:pw@redis:6379/0"
        assert env[app].exec(["psql", env[pg].internal_url, "-tAc", "SELECT 40 + 2"]) == (0, "42\n")
        where = ["-h", env[rd].internal_host, "-p", str(env[rd].internal_port)]
        assert env[app].exec(["redis-cli", *where, "-a", "pw", "--no-auth-warning", "PING"]) == (0, "PONG\n")
        # The published address is unchanged.
        assert env[pg].host == "127.0.0.1"
        assert env[pg].port != 5432
        assert networks(f"svcenv.environment={env.id}") == [f"svcenv-{env.id}"]
    assert networks(f"svcenv.environment={env.id}") == []


def test_two_environments_at_once_do_not_see_each_others_names_or_networks(leaks: LeakCheck, base_image: str) -> None:
    with (
        Environment(Redis(password="first"), _idle("app", base_image), labels=leaks.labels) as one,
        Environment(Redis(password="second"), _idle("app", base_image), labels=leaks.labels) as two,
    ):
        assert sorted(leaks.networks()) == sorted([f"svcenv-{one.id}", f"svcenv-{two.id}"])
        for env, password in ((one, "first"), (two, "second")):
            network = f"svcenv-{env.id}"
            for handle in env:
                attached = json.loads(docker("inspect", handle.id))[0]["NetworkSettings"]["Networks"]
                assert set(attached) == {network}, (handle.name, attached)
            # "redis" is this environment's Redis: its address on this network, and its password works.
            code, out = env["app"].exec(["getent", "hosts", "redis"])
            assert code == 0, out
            assert out.split()[0] == _ip(env["redis"].id, network), out
            assert env["app"].exec(["redis-cli", "-h", "redis", "-a", password, "--no-auth-warning", "PING"]) == (
                0,
                "PONG\n",
            )
        # The other environment's container names do not resolve, and its addresses are not reachable.
        assert one["app"].exec(["getent", "hosts", f"svcenv-{two.id}-redis"])[0] != 0
        assert one["app"].exec(["getent", "hosts", f"svcenv-{one.id}-redis"])[0] == 0
        other = _ip(two["redis"].id, f"svcenv-{two.id}")
        code, _ = one["app"].exec(["timeout", "2", "bash", "-c", f"</dev/tcp/{other}/6379"])
        assert code != 0, "a container reached another environment's network"
    assert leaks.networks() == []


def test_the_network_goes_after_a_normal_exit_an_exception_and_a_failed_start(leaks: LeakCheck) -> None:
    with Environment(Redis(), labels=leaks.labels) as env:
        assert networks(f"svcenv.environment={env.id}") == [f"svcenv-{env.id}"]
        labels = json.loads(docker("network", "inspect", f"svcenv-{env.id}"))[0]["Labels"]
        assert labels["svcenv.environment"] == env.id
        assert labels["svcenv.owner-pid"] == str(os.getpid())
        assert labels["svcenv.test"] == leaks.token
        assert "svcenv.service" not in labels
    assert networks(f"svcenv.environment={env.id}") == []

    failing = Environment(Redis(), labels=leaks.labels)
    with pytest.raises(ZeroDivisionError), failing:
        assert len(leaks.networks()) == 1
        1 / 0  # noqa: B018
    assert networks(f"svcenv.environment={failing.id}") == []

    crasher = Service("crasher", image=os.environ["SVCENV_REDIS_IMAGE"], command=("sh", "-c", "exit 3"), ports=(6379,))
    broken = Environment(Redis(), crasher, labels=leaks.labels)
    with pytest.raises(ServiceStartError, match="exited with status 3"):
        broken.start()
    assert networks(f"svcenv.environment={broken.id}") == []
    assert leaks.networks() == []


def test_the_cleanup_sweep_and_prune_remove_networks_left_behind(leaks: LeakCheck) -> None:
    labels = {**leaks.labels, "svcenv.environment": f"sweep{leaks.token}", "svcenv.owner-pid": "1"}
    backend = DockerBackend()
    instance = backend.create(Redis().resolve(), labels)
    assert leaks.networks() == [f"svcenv-sweep{leaks.token}"]
    assert backend.cleanup({"svcenv.environment": labels["svcenv.environment"]}) == 1
    assert leaks.networks() == []
    assert leaks.leftovers() == []
    instance.stop()  # gone already: fine

    # A dead environment's network (its owner killed before any sweep): prune removes it, a live one stays.
    dead = {**leaks.labels, "svcenv.environment": f"dead{leaks.token}"}
    live = {**leaks.labels, "svcenv.environment": f"live{leaks.token}"}
    for env_labels in (dead, live):
        flags = [arg for k, v in env_labels.items() for arg in ("--label", f"{k}={v}")]
        docker("network", "create", *flags, f"svcenv-{env_labels['svcenv.environment']}")
    try:
        backend.prune(
            only=leaks.labels, keep_alive=lambda found: found.get("svcenv.environment") == live["svcenv.environment"]
        )
        assert leaks.networks() == [f"svcenv-live{leaks.token}"]
    finally:
        docker("network", "rm", f"svcenv-live{leaks.token}")
        backend.close()


def test_a_sweep_leaves_a_network_that_a_container_uses(leaks: LeakCheck) -> None:
    import docker as docker_sdk

    from svcenv.backends.docker_network import remove_unused

    client = docker_sdk.from_env()
    try:
        with Environment(Redis(), labels=leaks.labels) as env:
            assert remove_unused(client, {"svcenv.environment": env.id}) == 0
            assert leaks.networks() == [f"svcenv-{env.id}"]
            assert env["redis"].client().ping()
            # prune removes the container of a dead owner, then its network, which nothing uses any more.
            backend = DockerBackend()
            try:
                assert backend.prune(only=leaks.labels, keep_alive=lambda found: False) == 1
            finally:
                backend.close()
            assert leaks.networks() == []
    finally:
        client.close()


def test_the_crash_reaper_removes_the_network(docker_engine: None) -> None:
    token = os.urandom(6).hex()
    script = textwrap.dedent(
        f"""
        import time
        from svcenv import Environment, Redis
        env = Environment(Redis(), Redis(name="cache"), labels={{"svcenv.test": "{token}"}}).start()
        print("ready", flush=True)
        time.sleep(600)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    assert len(networks(f"svcenv.test={token}")) == 1
    proc.kill()
    proc.wait(timeout=10)
    killed = time.monotonic()
    while (networks(f"svcenv.test={token}") or containers(f"svcenv.test={token}")) and time.monotonic() - killed < 15:
        time.sleep(0.1)
    assert containers(f"svcenv.test={token}") == []
    assert networks(f"svcenv.test={token}") == [], "the reaper left the network"


def test_internal_addresses_elsewhere_are_the_published_ones() -> None:
    backend = ExternalBackend(urls={"postgres": "postgresql://app:secret@db.example:6543/main"})
    resolved = Postgres().resolve()
    handle = PostgresHandle(resolved, backend.create(resolved, {}))
    assert (handle.internal_host, handle.internal_port) == ("db.example", 6543)
    assert handle.internal_url == handle.url == "postgresql://app:secret@db.example:6543/main"
    with pytest.raises(ConfigurationError, match="does not publish port 1234"):
        handle.internal_port_for(1234)
