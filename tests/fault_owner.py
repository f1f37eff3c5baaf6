"""A process that owns an environment and meets one fault: ``python tests/fault_owner.py SCENARIO BACKEND``.

Driven by tests/faults.py (for tests/test_faults.py and benchmarks/cleanup.py).
Labels come from ``SVCENV_LABELS``. Every event is one stdout line,
``<event> <json>``, so the driver knows the environment id, when the fault
happened and how long the teardown took.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

from svcenv import Environment, Postgres, Redis, Service, ServiceStartError
from svcenv.probes import LogLine


def emit(event: str, **data: Any) -> None:
    print(event, json.dumps({"t": time.time(), **data}), flush=True)


def use(env: Environment) -> None:
    with env["postgres"].connect() as conn:  # type: ignore[attr-defined]
        conn.execute("SELECT 1")
    client = env["redis"].client()  # type: ignore[attr-defined]
    client.ping()
    client.close()


def kill(env: Environment, name: str) -> None:
    """Kill a running service from outside svcenv, as a crash or the OOM killer would."""
    handle = env[name]
    if handle.backend == "docker":
        subprocess.run(["docker", "kill", handle.id], check=True, capture_output=True)
    else:
        os.kill(int(handle.id), signal.SIGKILL)


def services(scenario: str) -> list[Service]:
    chosen: list[Service] = [Postgres(), Redis()]
    if scenario == "one_fails":
        chosen.append(Postgres(name="broken", settings={"no_such_setting": "on"}))
    elif scenario == "probe_timeout":
        chosen.append(Redis(name="silent", probe=LogLine("a line this server never prints"), timeout=3))
    elif scenario == "ctrl_c_start":  # a service that never gets ready: the interrupt surely comes during start
        chosen.append(Redis(name="slow", probe=LogLine("a line this server never prints"), timeout=60))
    elif scenario == "image_missing":
        chosen.append(Service("ghost", image="svcenv-test/no-such-image:0", ports=(80,)))
    return chosen


def body(env: Environment, scenario: str) -> None:
    """What a test does with its services, and the fault it meets."""
    use(env)
    emit("ready", ids={h.name: h.id for h in env}, ports={h.name: h.port for h in env})
    if scenario == "exception":
        emit("fault")
        raise RuntimeError("boom in the test body")
    if scenario in ("sigterm", "sigkill"):
        time.sleep(600)  # the driver signals this process
    if scenario == "service_killed":
        kill(env, "postgres")
        deadline = time.monotonic() + 10
        while env["postgres"].exit_status() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            use(env)
            error = None
        except Exception as exc:
            error = type(exc).__name__
        emit("reported", exit_status=env["postgres"].exit_status(), error=error)
    emit("fault")


def main(scenario: str, backend: str) -> int:
    env = Environment(*services(scenario), backend=backend)
    emit("environment", id=env.id, pid=os.getpid())
    if scenario == "ctrl_c_start":
        emit("starting")  # the driver sends SIGINT while services start
    try:
        with env:
            body(env, scenario)
    except ServiceStartError as exc:
        emit("failed", error=type(exc).__name__, message=str(exc), teardown_s=env.teardown_s)
        return 1
    except KeyboardInterrupt:
        emit("interrupted", state=env.state, teardown_s=env.teardown_s)
        return 130
    except RuntimeError as exc:
        emit("clean", teardown_s=env.teardown_s, error=str(exc))
        return 1
    emit("clean", teardown_s=env.teardown_s)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
