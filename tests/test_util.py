"""The one copy of each small helper (:mod:`svcenv._util`), and what hangs on them."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from svcenv import ConfigurationError, Environment, Postgres, Service, ServiceStartError
from svcenv._util import FALSY, TRUTHY, NotYet, env_prefix, file_lock, flag, in_ci, pid_alive, poll
from svcenv.backends.external import ExternalBackend

# The real Postgres that test_external_backend starts; imported, so this module gets one too.
from .test_external_backend import SECRET, PostgresServer, postgres_server  # noqa: F401

# -- flags -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "yes", "Yes", "on", "ON", " on "])
def test_truthy_words_are_true_whatever_the_default(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SVCENV_TEST_FLAG", value)
    assert flag("SVCENV_TEST_FLAG") is True
    assert flag("SVCENV_TEST_FLAG", default=False) is True


@pytest.mark.parametrize("value", ["0", "false", "False", "no", "NO", "off", "Off"])
def test_falsy_words_are_false_whatever_the_default(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SVCENV_TEST_FLAG", value)
    assert flag("SVCENV_TEST_FLAG", default=True) is False


@pytest.mark.parametrize("value", [None, "", "maybe", "2", "enabled"])
def test_other_values_give_the_default(value: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if value is None:
        monkeypatch.delenv("SVCENV_TEST_FLAG", raising=False)
    else:
        monkeypatch.setenv("SVCENV_TEST_FLAG", value)
    assert flag("SVCENV_TEST_FLAG") is False
    assert flag("SVCENV_TEST_FLAG", default=True) is True


def test_the_word_sets() -> None:
    assert {"1", "true", "yes", "on"} == TRUTHY
    assert {"0", "false", "no", "off"} == FALSY


@pytest.mark.parametrize(("value", "ci"), [("true", True), ("1", True), ("on", True), ("yes", True), ("0", False)])
def test_ci_is_any_truthy_word(value: str, ci: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", value)
    assert in_ci() is ci


def test_no_ci_variable_is_not_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    assert in_ci() is False


# -- locks -----------------------------------------------------------------------------------


def test_file_lock_creates_a_private_file_in_a_private_directory(tmp_path: Path) -> None:
    path = tmp_path / "new" / "x.lock"
    old = os.umask(0)
    try:
        with file_lock(path):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    finally:
        os.umask(old)


def test_file_lock_excludes_a_second_holder_in_another_thread(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    cancel = threading.Event()
    outcome: list[BaseException | str] = []

    def second() -> None:
        try:
            with file_lock(path, cancel):
                outcome.append("acquired")
        except BaseException as error:
            outcome.append(error)

    with file_lock(path):
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.2)
        assert outcome == []  # still waiting
        cancel.set()
        thread.join(5)
    assert len(outcome) == 1
    assert isinstance(outcome[0], InterruptedError)
    assert "x.lock" in str(outcome[0])
    with file_lock(path, threading.Event()):  # released: free again at once
        pass


def test_file_lock_excludes_a_second_process_until_released(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    child_code = (
        "import sys, threading, time\n"
        "from pathlib import Path\n"
        "from svcenv._util import file_lock\n"
        "cancel = threading.Event()\n"
        "threading.Timer(0.3, cancel.set).start()\n"
        "try:\n"
        "    with file_lock(Path(sys.argv[1]), cancel):\n"
        "        print('acquired', flush=True)\n"
        "except InterruptedError:\n"
        "    print('interrupted', flush=True)\n"
        "with file_lock(Path(sys.argv[1])):\n"
        "    print('acquired', flush=True)\n"
    )
    with file_lock(path):
        child = subprocess.Popen([sys.executable, "-c", child_code, str(path)], stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "interrupted"
        time.sleep(0.1)
        assert child.poll() is None  # blocked in the second, uncancellable wait
    out, _ = child.communicate(timeout=10)
    assert out.strip() == "acquired"
    assert child.returncode == 0


# -- pids ------------------------------------------------------------------------------------


def test_pid_alive_for_this_process() -> None:
    assert pid_alive(os.getpid())


@pytest.mark.parametrize("pid", [0, -1])
def test_pid_alive_rejects_non_pids(pid: int) -> None:
    assert not pid_alive(pid)


def test_a_reaped_child_is_not_alive() -> None:
    child = subprocess.Popen(["true"])
    child.wait()
    assert not pid_alive(child.pid)


def test_a_zombie_is_not_alive() -> None:
    child = subprocess.Popen(["true"])
    try:
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie
        assert Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        assert not pid_alive(child.pid)
    finally:
        child.wait()


# -- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "prefix"), [("pg-replica", "PG_REPLICA"), ("postgres", "POSTGRES"), ("pg.replica_2", "PG_REPLICA_2")]
)
def test_env_prefix(name: str, prefix: str) -> None:
    assert env_prefix(name) == prefix


def test_old_homes_of_the_helpers_are_the_same_functions() -> None:
    from svcenv import handles, state

    assert handles.env_prefix is env_prefix
    assert state.pid_alive is pid_alive


# -- polling ---------------------------------------------------------------------------------


def test_poll_returns_the_result_once_the_check_passes() -> None:
    calls: list[int] = []

    def check() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise NotYet(f"attempt {len(calls)}")
        return "ready"

    assert poll(check, 5.0) == "ready"
    assert len(calls) == 3


def test_poll_reraises_the_last_not_yet_after_the_timeout() -> None:
    calls: list[int] = []

    def check() -> None:
        calls.append(1)
        raise NotYet(f"attempt {len(calls)}")

    began = time.monotonic()
    with pytest.raises(NotYet) as raised:
        poll(check, 0.3)
    took = time.monotonic() - began
    assert 0.3 <= took < 0.3 + 0.5
    assert str(raised.value) == f"attempt {len(calls)}"
    assert len(calls) > 3  # it polled, starting fine-grained


def test_poll_lets_other_errors_through_at_once() -> None:
    def check() -> None:
        raise ValueError("broken")

    began = time.monotonic()
    with pytest.raises(ValueError, match="broken"):
        poll(check, 5.0)
    assert time.monotonic() - began < 0.5


def test_poll_stops_when_cancelled() -> None:
    cancel = threading.Event()
    threading.Timer(0.1, cancel.set).start()

    def check() -> None:
        raise NotYet("never")

    began = time.monotonic()
    with pytest.raises(NotYet):
        poll(check, 30.0, cancel=cancel)
    assert time.monotonic() - began < 1.0


# -- what uses them --------------------------------------------------------------------------


def test_a_dependency_cycle_is_named_in_dependency_order() -> None:
    services = (
        Service("a", "img", depends_on=("b",)),
        Service("b", "img", depends_on=("c",)),
        Service("c", "img", depends_on=("a",)),
    )
    with pytest.raises(ConfigurationError, match=r"^dependency cycle: a -> b -> c -> a$"):
        Environment(*services)


def test_an_unknown_dependency_is_named() -> None:
    with pytest.raises(ConfigurationError, match="service 'a' depends on 'nope', which is not in the environment"):
        Environment(Service("a", "img", depends_on=("nope",)))


def test_rejected_credentials_name_the_variable_of_a_dashed_service(
    postgres_server: PostgresServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key in list(os.environ):
        if key.startswith("SVCENV_") and key.endswith("_URL"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("SVCENV_PG_REPLICA_URL", postgres_server.url(password=SECRET))
    env = Environment(Postgres(name="pg-replica", timeout=5), backend=ExternalBackend())
    began = time.monotonic()
    with pytest.raises(ServiceStartError) as raised:
        env.start()
    assert time.monotonic() - began < 15
    message = str(raised.value)
    assert "check the user and password in the URL (e.g. SVCENV_PG_REPLICA_URL)" in message
    assert "PG-REPLICA" not in message
    assert SECRET not in message
    assert postgres_server.running()
