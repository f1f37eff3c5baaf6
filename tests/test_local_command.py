"""An application as a local command: ``Service("api", command=[...])`` without an image.

The local backend runs it under the same watchdog as its servers: told its port through
``PORT`` (published as the service's first port) and ``HOST=127.0.0.1``, in the owner's
directory, with references to other services filled in with their loopback addresses;
it never outlives its owner. No engine is needed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from svcenv import BackendUnavailable, Environment, Postgres, Service, ServiceStartError
from svcenv.backends.docker import DockerBackend
from svcenv.backends.local import LocalBackend
from svcenv.probes import HTTP, LogLine

from .procs import alive, processes_mentioning
from .test_local_backend import wait_for, workdirs

APP = textwrap.dedent(
    """
    import http.server, json, os, sys
    seen = {"cwd": os.getcwd(), "db": os.environ.get("DATABASE_URL"), "host": os.environ["HOST"]}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({**seen, "pid": os.getpid()}).encode()
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    print("app: listening on", os.environ["PORT"], flush=True)
    http.server.HTTPServer((os.environ["HOST"], int(os.environ["PORT"])), Handler).serve_forever()
    """
)


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "app.py").write_text(APP)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "app.py"


def _api(app: Path, **kwargs: object) -> Service:
    return Service("api", command=(sys.executable, str(app)), ports=(8000,), scheme="http", probe=HTTP("/"), **kwargs)  # type: ignore[arg-type]


def _get(url: str) -> dict[str, object]:
    import json
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as response:
        return dict(json.load(response))


def test_a_command_gets_its_port_runs_in_the_owners_directory_and_stops_with_the_environment(app: Path) -> None:
    with Environment(_api(app), backend="local") as env:
        api = env["api"]
        assert api.backend == "local"
        assert api.host == "127.0.0.1"
        assert api.port != 8000
        got = _get(api.url + "/")
        assert got["cwd"] == str(app.parent)
        assert got["host"] == "127.0.0.1"
        pid = int(str(got["pid"]))
        assert "app: listening on" in api.logs()
        assert env.env_vars()["API_URL"] == api.url
    assert not alive(pid)
    assert workdirs(os.getpid()) == []


def test_references_give_a_local_command_the_loopback_address_of_a_local_postgres(app: Path) -> None:
    if LocalBackend().supports(Postgres()) is not None:
        pytest.skip("no local Postgres here")
    pg = Postgres()
    with Environment(pg, _api(app, env={"DATABASE_URL": pg.internal_url}), backend="local") as env:
        got = _get(env["api"].url + "/")
        assert got["db"] == env["postgres"].url  # filled in, password included, on 127.0.0.1
        assert "127.0.0.1" in str(got["db"])


def test_a_local_job_must_exit_zero(tmp_path: Path) -> None:
    ok = Service("seed", command=(sys.executable, "-c", "print('seeded')"), one_shot=True)
    with Environment(ok, backend="local") as env:
        assert env.outcomes == {"seed": "completed"}
        assert "seeded" in env["seed"].logs()
    bad = Service("seed", command=(sys.executable, "-c", "import sys; print('no table'); sys.exit(4)"), one_shot=True)
    with pytest.raises(ServiceStartError, match="status 4") as caught:
        Environment(bad, backend="local").start()
    assert "no table" in caught.value.failures[0].log_tail
    assert workdirs(os.getpid()) == []


def test_a_missing_program_or_an_image_is_a_clear_refusal() -> None:
    missing = Service("api", command=("svcenv-no-such-program", "--serve"))
    with pytest.raises(BackendUnavailable, match=r"'svcenv-no-such-program' is not found on PATH"):
        Environment(missing, backend="local").start()
    reason = LocalBackend().supports(Service("web", image="nginx", command=("nginx",)))
    assert reason is not None
    assert "names an image" in reason
    assert "no command" in str(LocalBackend().supports(Service("web")))
    # A container needs an image: Docker says so (before asking any engine), so auto picks local.
    reason = DockerBackend().supports(Service("api", command=("python3",)))
    assert reason is not None
    assert "no image given" in reason
    assert "local backend" in reason


def test_auto_runs_a_command_without_image_locally(app: Path) -> None:
    with Environment(_api(app)) as env:
        assert env["api"].backend == "local"


OWNER = textwrap.dedent(
    """
    import sys, threading
    from svcenv import Environment, Service
    from svcenv.probes import LogLine
    app = Service("api", command=(sys.executable, sys.argv[1]), ports=(8000,), probe=LogLine("listening"))
    env = Environment(app, backend="local").start()
    print(env["api"].id, flush=True)
    threading.Event().wait()
    """
)


def test_a_command_does_not_outlive_a_sigkilled_owner(app: Path) -> None:
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(app)], stdout=subprocess.PIPE, text=True, cwd=app.parent)
    try:
        assert owner.stdout is not None
        pid = int(owner.stdout.readline())
        assert alive(pid)
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    assert wait_for(lambda: not alive(pid), 10), "the app outlived its owner"
    assert wait_for(lambda: workdirs(owner.pid) == [], 10)
    assert [p for p in processes_mentioning(str(app)) if alive(p)] == []


def test_logline_probe_reads_a_commands_output(app: Path) -> None:
    service = Service("api", command=(sys.executable, str(app)), ports=(8000,), probe=LogLine("listening on"))
    with Environment(service, backend="local") as env:
        assert env.timings["api"].attempts >= 1


FLAKY_BIND = textwrap.dedent(
    """
    import os, pathlib, sys
    first = pathlib.Path(sys.argv[1])
    if not first.exists():  # as if another process took PORT between svcenv's choice and our bind
        first.write_text(os.environ["PORT"])
        print("OSError: [Errno 98] Address already in use", flush=True)
        sys.exit(1)
    exec(open(sys.argv[2]).read())
    """
)


def test_a_port_taken_before_the_command_binds_it_is_retried_on_another(app: Path, tmp_path: Path) -> None:
    (tmp_path / "flaky.py").write_text(FLAKY_BIND)
    command = (sys.executable, str(tmp_path / "flaky.py"), str(tmp_path / "first"), str(app))
    api = Service("api", command=command, ports=(8000,), scheme="http", probe=HTTP("/"))
    with Environment(api, backend="local") as env:
        assert _get(env["api"].url + "/")["host"] == "127.0.0.1"
        assert env["api"].port != int((tmp_path / "first").read_text())  # a new port, not the taken one
