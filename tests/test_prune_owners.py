"""``prune`` judges only owners it can see (issue #18, row 1).

A container carries its owner's pid *and* where that pid means something: the machine
boot and pid namespace (``svcenv.owner-host``), and the owner's start time. From another
pid namespace (a CI job in a container sharing the engine, ``unshare --pid``) the owner's
pid says nothing, so ``prune`` spares its containers unless ``--force``; a kept service
whose state dir is out of sight (another mount namespace) is spared too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from svcenv import Environment, Redis

from .conftest import LeakCheck, containers, docker, need

pytestmark = pytest.mark.docker


def _unshare(*argv: str, mount_over: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``argv`` in a pid namespace of its own (and a mount namespace; ``mount_over`` hidden by a tmpfs)."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        need("needs root and util-linux's unshare")
    script = " ".join(f"'{a}'" for a in argv)
    if mount_over is not None:
        script = f"mount -t tmpfs none '{mount_over}' && {script}"
    return subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_prune_from_another_pid_namespace_spares_a_live_owners_containers(leaks: LeakCheck) -> None:
    env = Environment(Redis(), labels=leaks.labels).start()
    try:
        (cid,) = leaks.leftovers()
        labels = json.loads(docker("inspect", "-f", "{{json .Config.Labels}}", cid))
        assert labels["svcenv.owner-pid"] == str(os.getpid())
        assert labels["svcenv.owner-host"].count("/") == 1
        assert labels["svcenv.owner-start"]
        prune = [sys.executable, "-m", "svcenv", "prune", "--label", f"svcenv.test={leaks.token}"]
        spared = _unshare(*prune)
        assert spared.returncode == 0, spared.stderr
        assert "pruned 0 container(s)" in spared.stdout
        assert leaks.leftovers() == [cid], "prune from another pid namespace removed a live owner's container"
        env["redis"].client().ping()  # type: ignore[attr-defined]
        forced = _unshare(*prune, "--force")
        assert forced.returncode == 0, forced.stderr
        assert "pruned 1 container(s)" in forced.stdout
        assert leaks.leftovers() == []
    finally:
        env.stop()
    leaks.assert_clean()


KEPT_OWNER = textwrap.dedent(
    """
    import sys
    from svcenv import Environment, Redis
    labels = dict([sys.argv[1].split("=", 1)])
    env = Environment(Redis(), labels=labels, keep=True).start()
    env.stop()  # kept: it outlives this process
    """
)


def test_prune_spares_a_kept_service_whose_state_dir_it_cannot_see(leaks: LeakCheck, tmp_path: Path) -> None:
    state = tmp_path / "hidden" / "state"
    state.mkdir(parents=True)
    env = {**os.environ, "SVCENV_STATE_DIR": str(state)}
    label = f"svcenv.test={leaks.token}"
    started = subprocess.run(
        [sys.executable, "-c", KEPT_OWNER, label], env=env, capture_output=True, text=True, timeout=120
    )
    assert started.returncode == 0, started.stderr
    try:
        assert len(leaks.leftovers()) == 1  # its owner is gone; the kept service runs on
        prune = [sys.executable, "-m", "svcenv", "prune", "--label", label]
        hidden = _unshare(*prune, mount_over=tmp_path / "hidden")  # the state dir is out of sight there
        assert hidden.returncode == 0, hidden.stderr
        assert len(leaks.leftovers()) == 1, "prune removed a kept service whose record it could not see"
        here = subprocess.run(prune, env=env, capture_output=True, text=True, timeout=120)
        assert here.returncode == 0, here.stderr
        assert "pruned 1 container(s)" in here.stdout  # here it sees the state dir: nothing records it
    finally:
        for cid in containers(label):
            docker("rm", "-f", "-v", cid)
        for network in leaks.networks():
            docker("network", "rm", network)
    leaks.assert_clean()
