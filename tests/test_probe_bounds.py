"""Probes are bounded by the deadline they run under, even ones that block."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass

import pytest

from svcenv import Environment, Redis, Service, ServiceStartError
from svcenv.probes import Command, Probe

from .conftest import LeakCheck


@dataclass(frozen=True)
class Hangs(Probe):
    """A custom probe that never returns (a wedged network call, say)."""

    def check(self, service: object) -> None:
        time.sleep(1000)


def test_a_command_probe_that_never_exits_fails_at_the_timeout(leaks: LeakCheck) -> None:
    service = Service(
        "stuck",
        image="svcenv-test/redis:7",
        ports=(6379,),
        command=("redis-server",),
        probe=Command(["sleep", "1000"]),
        timeout=3,
    )
    began = time.monotonic()
    with pytest.raises(ServiceStartError, match=r"not ready within 3s.*Command did not answer before the deadline"):
        Environment(service, backend="docker", labels=leaks.labels).start()
    assert time.monotonic() - began < 8  # was: still hanging after 100 s


def test_a_custom_probe_that_hangs_fails_at_the_timeout() -> None:
    began = time.monotonic()
    with pytest.raises(ServiceStartError, match="Hangs did not answer before the deadline"):
        Environment(Redis(probe=Hangs(), timeout=2), backend="local").start()
    assert time.monotonic() - began < 6


def test_ctrl_c_during_a_hanging_probe_ends_the_process_promptly() -> None:
    script = textwrap.dedent(
        """
        import time
        from dataclasses import dataclass
        from svcenv import Environment, Redis
        from svcenv.probes import Probe

        @dataclass(frozen=True)
        class Hangs(Probe):
            def check(self, service):
                time.sleep(1000)

        print("starting", flush=True)
        Environment(Redis(probe=Hangs(), timeout=120), backend="local").start()
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "starting"
    time.sleep(1.5)  # the server is up; the probe hangs
    began = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the process did not end within 15 s of Ctrl-C (a hanging probe wedged it)")
    assert time.monotonic() - began < 10, err  # was: 30 s, then a hang at interpreter exit
    assert "KeyboardInterrupt" in err
