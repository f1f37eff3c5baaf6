"""One-shot services (migrations, seeders), ``entrypoint`` and ``labels`` on Docker.

A job is started after its dependencies are ready, must exit with status 0 within its
timeout, and only then do the services that depend on it start; a failing job fails the
start with its exit status and its log; every job container is removed at teardown.
"""

from __future__ import annotations

import json
import os

import pytest

from svcenv import ConfigurationError, Environment, Postgres, Service, ServiceStartError
from svcenv.handles import PostgresHandle
from svcenv.probes import Command, Completed

from .conftest import LeakCheck, containers, docker

PG_IMAGE = os.environ.get("SVCENV_POSTGRES_IMAGE", "svcenv-test/postgres:15")


def _idle(name: str, image: str, **kwargs: object) -> Service:
    return Service(name, image=image, command=("sleep", "infinity"), probe=Command(["true"]), **kwargs)  # type: ignore[arg-type]


def _job(name: str, script: str, **kwargs: object) -> Service:
    """A job in the Postgres image (it has psql): the image's entrypoint runs any other command as is."""
    return Service(name, image=PG_IMAGE, command=("sh", "-c", script), one_shot=True, **kwargs)  # type: ignore[arg-type]


@pytest.mark.docker
def test_a_migration_job_completes_before_the_app_starts_and_is_removed(leaks: LeakCheck, base_image: str) -> None:
    postgres = Postgres()
    sql = "-c 'CREATE TABLE items (id int)' -c 'INSERT INTO items VALUES (1), (2)'"
    migrate = _job(
        "migrate",
        f"psql '{postgres.internal_url}' -v ON_ERROR_STOP=1 {sql} && echo migrated",
        depends_on=("postgres",),
    )
    app = _idle("app", base_image, depends_on=("migrate",))
    with Environment(postgres, migrate, app, labels=leaks.labels) as env:
        assert env.outcomes == {"postgres": "started", "migrate": "completed", "app": "started"}
        timings = env.timings
        assert timings["migrate"].begin >= timings["postgres"].ready
        assert timings["app"].begin >= timings["migrate"].ready  # the app waited for the job's exit
        assert env["migrate"].exit_status() == 0
        assert "migrated" in env["migrate"].logs()
        pg = env["postgres"]
        assert isinstance(pg, PostgresHandle)
        with pg.connect() as conn:
            assert conn.execute("SELECT count(*) FROM items").fetchone() == (2,)
        # The exited job is still there (its log can be read) until teardown.
        assert len(leaks.leftovers()) == 3
    leaks.assert_clean()


@pytest.mark.docker
def test_a_failing_job_fails_the_start_with_its_status_and_log(leaks: LeakCheck, base_image: str) -> None:
    seed = _job("seed", "echo 'seeding: table users missing' >&2; exit 3")
    app = _idle("app", base_image, depends_on=("seed",))
    env = Environment(seed, app, labels=leaks.labels)
    with pytest.raises(ServiceStartError) as caught:
        env.start()
    failure = caught.value.failures[0]
    assert failure.service == "seed"
    assert "exited with status 3" in failure.reason
    assert "seeding: table users missing" in failure.log_tail
    assert "seed" in str(caught.value)
    assert "app" not in env.timings  # never started
    leaks.assert_clean()


@pytest.mark.docker
def test_a_job_that_does_not_finish_in_its_timeout_fails_and_leaves_nothing(leaks: LeakCheck) -> None:
    job = _job("slow", "sleep 600", timeout=3)
    with pytest.raises(ServiceStartError, match=r"slow.*did not complete within 3s"):
        Environment(job, labels=leaks.labels).start()
    leaks.assert_clean()


@pytest.mark.docker
def test_a_job_is_removed_at_stop_even_when_the_environment_keeps_its_services(leaks: LeakCheck) -> None:
    postgres = Postgres()
    job = _job("ping", f"pg_isready -d '{postgres.internal_url}'", depends_on=("postgres",))
    env = Environment(postgres, job, labels=leaks.labels, keep=True)
    env.start()
    try:
        assert env.outcomes == {"postgres": "kept", "ping": "completed"}
        env.stop()
        left = leaks.leftovers()
        assert len(left) == 1  # postgres outlives the environment; the job does not
        info = json.loads(docker("inspect", left[0]))[0]
        assert info["Config"]["Labels"]["svcenv.service"] == "postgres"
    finally:
        for cid in leaks.leftovers():
            docker("rm", "-f", "-v", cid)
        for network in leaks.networks():
            docker("network", "rm", network)
    leaks.assert_clean()


@pytest.mark.docker
def test_entrypoint_and_labels_reach_the_container(leaks: LeakCheck, base_image: str) -> None:
    service = Service(
        "echoer",
        image=base_image,
        entrypoint=("/bin/sh", "-c"),
        command=("echo started-by-entrypoint; exec sleep infinity",),
        labels={"com.example.team": "payments", "tier": 2},  # type: ignore[dict-item]
        probe=Command(["true"]),
    )
    with Environment(service, labels=leaks.labels) as env:
        (cid,) = containers(f"svcenv.test={leaks.token}")
        info = json.loads(docker("inspect", cid))[0]
        assert info["Config"]["Entrypoint"] == ["/bin/sh", "-c"]
        assert info["Config"]["Labels"]["com.example.team"] == "payments"
        assert info["Config"]["Labels"]["tier"] == "2"
        assert info["Config"]["Labels"]["svcenv.service"] == "echoer"
        assert "started-by-entrypoint" in env["echoer"].logs()
    leaks.assert_clean()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"labels": {"svcenv.environment": "x"}}, "label 'svcenv.environment' cannot be set"),
        ({"one_shot": True, "probe": Command(["true"])}, "a one-shot service is not probed"),
        ({"entrypoint": [1, 2]}, "entrypoint must be a sequence of strings"),
        ({"one_shot": "yes"}, "one_shot must be True or False"),
    ],
)
def test_bad_job_fields_are_configuration_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Service("job", image="x", **kwargs)  # type: ignore[arg-type]


def test_a_known_kind_cannot_be_one_shot() -> None:
    with pytest.raises(ConfigurationError, match="a postgres service cannot be one-shot"):
        Postgres(one_shot=True)
    assert isinstance(Service("job", image="x", one_shot=True).readiness_probe, Completed)
