"""What a descriptor says about its container: files, named volumes, options and Docker's HEALTHCHECK."""

from __future__ import annotations

import json
import time
from pathlib import Path

import docker as docker_sdk
import pytest

from svcenv import ConfigurationError, Environment, Postgres, Service, ServiceStartError
from svcenv.backends import pgcache
from svcenv.container import OPTIONS
from svcenv.probes import RECORDABLE, Command, Healthy, LogLine, from_record, to_record

from .conftest import LeakCheck, docker

pytestmark = pytest.mark.docker


def _sleeper(name: str, image: str, **kwargs: object) -> Service:
    kwargs.setdefault("probe", Command(["true"]))
    return Service(name, image=image, command=("sleep", "infinity"), **kwargs)  # type: ignore[arg-type]


# -- files ---------------------------------------------------------------------------------------


def test_files_are_in_the_container_before_it_starts(leaks: LeakCheck, base_image: str, tmp_path: Path) -> None:
    script = tmp_path / "hello.sh"
    script.write_text("#!/bin/sh\necho hello from the script\n")
    script.chmod(0o755)
    app = Service(
        "app",
        image=base_image,
        command=("sh", "-c", "cat /etc/app/config.txt /etc/app/raw.bin; /opt/hello.sh; exec sleep infinity"),
        files={"/etc/app/config.txt": "text=yes\n", "/etc/app/raw.bin": b"bytes=yes\n", "/opt/hello.sh": script},
        probe=LogLine("hello from the script"),
    )
    assert "text=yes" not in repr(app)  # contents stay out of the repr
    with Environment(app, labels=leaks.labels) as env:
        log = env[app].logs()
        assert "text=yes" in log
        assert "bytes=yes" in log
        assert env[app].exec(["stat", "-c", "%a %U", "/opt/hello.sh", "/etc/app/config.txt"]) == (
            0,
            "755 root\n644 root\n",
        )


def test_an_init_script_runs_with_and_without_the_postgres_cache(leaks: LeakCheck) -> None:
    # The script names this test's token: its cache key is this test's own, and only that entry is
    # removed after it. (Removing every cache image made meanwhile took other xdist workers' away.)
    script = "CREATE TABLE seeded (x int); INSERT INTO seeded VALUES (7); -- " + leaks.token  # noqa: S608
    init = {"/docker-entrypoint-initdb.d/seed.sql": script}
    cached, fresh = Postgres(files=init), Postgres(name="fresh", files=init, cache=False)
    client = docker_sdk.from_env()
    key = pgcache.cache_key(client, cached.resolve())
    try:
        with Environment(cached, fresh, labels=leaks.labels) as env:
            for pg in (cached, fresh):
                with env[pg].connect() as conn:
                    assert conn.execute("SELECT x FROM seeded").fetchone() == (7,)
            image = json.loads(docker("inspect", env[cached].id))[0]["Config"]["Image"]
            assert image == f"svcenv-cache/postgres:{key}"  # the seed ran the script; the instance has its data
        with Environment(Postgres(), labels=leaks.labels) as env, env["postgres"].connect() as conn:
            assert conn.execute("SELECT to_regclass('seeded')").fetchone() == (None,)  # another key: not that cache
    finally:
        assert pgcache.clear(client, key) == 1
        client.close()


def test_a_missing_local_file_fails_the_start_naming_it(leaks: LeakCheck, base_image: str, tmp_path: Path) -> None:
    app = _sleeper("app", base_image, files={"/x": tmp_path / "missing.txt"})
    with pytest.raises(ServiceStartError, match=r"files\['/x'\]: cannot read"):
        Environment(app, labels=leaks.labels).start()


# -- volumes -------------------------------------------------------------------------------------


def test_named_volumes_are_shared_in_the_environment_and_removed_with_it(leaks: LeakCheck, base_image: str) -> None:
    writer = Service(
        "writer",
        image=base_image,
        command=("sh", "-c", "test -e /data/note && echo stale; echo written > /data/note; echo done; sleep infinity"),
        volumes={"shared": "/data"},
        probe=LogLine("done"),
    )
    reader = _sleeper("reader", base_image, volumes={"shared": "/mnt/shared:ro"}, depends_on=("writer",))
    with Environment(writer, reader, labels=leaks.labels) as env:
        assert leaks.volumes() == [f"svcenv-{env.id}-shared"]
        labels = json.loads(docker("volume", "inspect", f"svcenv-{env.id}-shared"))[0]["Labels"]
        assert labels["svcenv.environment"] == env.id
        assert labels["svcenv.volume"] == "shared"
        assert env[reader].exec(["cat", "/mnt/shared/note"]) == (0, "written\n")
        assert env[reader].exec(["touch", "/mnt/shared/other"])[0] != 0  # mounted read-only
    assert leaks.volumes() == []
    with Environment(writer, labels=leaks.labels) as again:  # a new environment: a new, empty volume
        assert leaks.volumes() == [f"svcenv-{again.id}-shared"]
        assert "stale" not in again[writer].logs()
    assert leaks.volumes() == []


def test_volumes_go_after_a_failed_start(leaks: LeakCheck, base_image: str) -> None:
    broken = Service("broken", image=base_image, command=("sh", "-c", "exit 4"), volumes={"v": "/v"}, ports=(80,))
    with pytest.raises(ServiceStartError, match="exited with status 4"):
        Environment(broken, labels=leaks.labels).start()
    assert leaks.volumes() == []


# -- options -------------------------------------------------------------------------------------


def test_container_options_reach_the_engine(leaks: LeakCheck, base_image: str) -> None:
    app = _sleeper(
        "app",
        base_image,
        options={
            "shm_size": "64m",
            "mem_limit": "256m",
            "cpus": 0.5,
            "cap_add": ["NET_ADMIN"],
            "cap_drop": ["MKNOD"],
            "user": "nobody",
            "working_dir": "/tmp",
            "hostname": "apphost",
            "ulimits": {"nofile": (1024, 2048)},
            "extra_hosts": {"db.example": "10.1.2.3"},
            "init": True,
            "platform": "linux/amd64",
        },
    )
    with Environment(app, labels=leaks.labels) as env:
        host = json.loads(docker("inspect", env[app].id))[0]["HostConfig"]
        assert host["ShmSize"] == 64 * 1024**2
        assert host["Memory"] == 256 * 1024**2
        assert host["NanoCpus"] == 500_000_000
        assert host["CapAdd"] == ["NET_ADMIN"]
        assert host["CapDrop"] == ["MKNOD"]
        assert host["Init"] is True
        assert host["Ulimits"] == [{"Name": "nofile", "Soft": 1024, "Hard": 2048}]
        # The hard limit is the container's; an exec'd process's soft one is the engine's to choose
        # (seen as 1024 and as 2048 on the same engine), so only the hard limit is checked inside.
        assert env[app].exec(["sh", "-c", "id -un; pwd; hostname; ulimit -Hn"]) == (0, "nobody\n/tmp\napphost\n2048\n")
        assert env[app].exec(["getent", "hosts", "db.example"])[1].split()[0] == "10.1.2.3"


def test_an_unknown_or_wrong_option_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="'app': unknown container option 'shm'") as info:
        Service("app", image="x:1", options={"shm": "1g"})
    for known in ("shm_size", "mem_limit", "cap_add", "platform", "user", "working_dir", "ulimits"):
        assert known in str(info.value)
    assert set(OPTIONS) >= {"shm_size", "mem_limit", "cap_add", "platform", "user", "working_dir", "ulimits"}
    with pytest.raises(ConfigurationError, match=r"options\['cap_add'\] must be a list of strings"):
        Service("app", image="x:1", options={"cap_add": "NET_ADMIN"})
    with pytest.raises(ConfigurationError, match=r"options\['shm_size'\] must be a size"):
        Service("app", image="x:1", options={"shm_size": "lots"})
    with pytest.raises(ConfigurationError, match="network_mode"):
        Service("app", image="x:1", options={"network_mode": "host"})  # no network nobody asked for
    with pytest.raises(ConfigurationError, match="an absolute container path"):
        Service("app", image="x:1", files={"relative.txt": "x"})
    with pytest.raises(ConfigurationError, match="volume names"):
        Service("app", image="x:1", volumes={"../up": "/x"})
    # Frozen, hashable, equal by value.
    one = Service("app", image="x:1", options={"cap_add": ["A"], "ulimits": {"nofile": 5}}, volumes={"v": "/v"})
    two = Service("app", image="x:1", options={"cap_add": ("A",), "ulimits": {"nofile": 5}}, volumes={"v": "/v"})
    assert one == two
    assert hash(one) == hash(two)


def test_the_local_backend_refuses_what_only_containers_have() -> None:
    from svcenv.backends.local import LocalBackend

    reason = LocalBackend().supports(Postgres(files={"/docker-entrypoint-initdb.d/a.sql": "SELECT 1"}))
    assert reason is not None
    assert "files" in reason


# -- HEALTHCHECK ---------------------------------------------------------------------------------


def _healthchecked(tmp_path: Path, base: str, check: str, command: str, start: str = "") -> Path:
    (tmp_path / "Dockerfile").write_text(
        f"FROM {base}\nHEALTHCHECK --interval=100ms --timeout=2s --retries=2 {start} CMD {check}\n"
        f"CMD {json.dumps(['sh', '-c', command])}\n"
    )
    return tmp_path


def test_healthy_waits_for_the_images_healthcheck(
    leaks: LeakCheck, base_image: str, built_images: set[str], tmp_path: Path
) -> None:
    ready = "sleep 1; touch /tmp/ready; exec sleep infinity"
    # During the start period failed checks do not count: the status stays "starting".
    context = _healthchecked(tmp_path, base_image, "test -f /tmp/ready", ready, start="--start-period=60s")
    began = time.monotonic()
    with Environment(Service("app", build=context, probe=Healthy()), labels=leaks.labels) as env:
        assert time.monotonic() - began >= 1
        assert env["app"].health() == ("healthy", "")
        assert env["app"].exec(["test", "-f", "/tmp/ready"])[0] == 0


def test_healthy_fails_fast_on_unhealthy_and_without_a_healthcheck(
    leaks: LeakCheck, base_image: str, built_images: set[str], tmp_path: Path
) -> None:
    context = _healthchecked(tmp_path, base_image, "sh -c 'echo broken: no disk; exit 1'", "exec sleep infinity")
    began = time.monotonic()
    unhealthy = r"HEALTHCHECK reports unhealthy \(slow start\? --start-period\); last check: broken: no disk"
    with pytest.raises(ServiceStartError, match=unhealthy):
        Environment(Service("app", build=context, probe=Healthy(), timeout=60), labels=leaks.labels).start()
    assert time.monotonic() - began < 15, "an unhealthy container must not wait out the deadline"

    with pytest.raises(ServiceStartError, match="needs a health check"):
        Environment(_sleeper("plain", base_image, probe=Healthy()), labels=leaks.labels).start()


def test_the_healthcheck_option_and_the_probe_record(leaks: LeakCheck, base_image: str) -> None:
    check = {"test": "test -f /tmp/ok", "interval": 0.1, "timeout": 2, "retries": 3}
    app = Service(
        "app",
        image=base_image,
        command=("sh", "-c", "touch /tmp/ok; exec sleep infinity"),
        options={"healthcheck": check},
        probe=Healthy(),
    )
    with Environment(app, labels=leaks.labels) as env:
        assert env[app].health() == ("healthy", "")
        config = json.loads(docker("inspect", env[app].id))[0]["Config"]["Healthcheck"]
        assert config["Test"] == ["CMD-SHELL", "test -f /tmp/ok"]
        assert config["Interval"] == 100_000_000
    assert RECORDABLE["Healthy"] is Healthy
    assert to_record(Healthy()) == {"probe": "Healthy"}
    assert from_record(to_record(Healthy() & LogLine("x"))) == Healthy() & LogLine("x")
