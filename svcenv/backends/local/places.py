"""Where instances live: the cache, the private work directories, and sweeping stale ones."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from ..._paths import cache_dir
from ..._util import owner_identity, process_alive, process_start
from ..base import LABEL_ENVIRONMENT
from ._common import MARKER, TMP_PREFIX

log = logging.getLogger("svcenv")

# -- places ---------------------------------------------------------------------------------


def cache_root() -> Path:
    """Where Postgres templates are cached: ``$SVCENV_CACHE_DIR/local`` or ``~/.cache/svcenv/local``."""
    return cache_dir() / "local"


def tmp_base() -> Path:
    """Where private directories go: ``SVCENV_LOCAL_TMPDIR``, else ``/dev/shm`` if writable, else the temp dir."""
    explicit = os.environ.get("SVCENV_LOCAL_TMPDIR")
    if explicit:
        return Path(explicit)
    shm = Path("/dev/shm")  # noqa: S108 (each instance makes a private 0700 directory in it)
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return Path(tempfile.gettempdir())


def _make_workdir(labels: Mapping[str, str], service: str) -> Path:
    env_id = re.sub(r"[^A-Za-z0-9]", "", labels.get(LABEL_ENVIRONMENT, "x"))[:12] or "x"
    short = re.sub(r"[^a-z0-9_.]", "_", service)[:20]
    workdir = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-{env_id}-{short}-", dir=tmp_base()))
    _write_marker(workdir, {"environment": env_id, "service": service})
    return workdir


def _write_marker(workdir: Path, extra: Mapping[str, object]) -> None:
    marker = {
        "owner_pid": os.getpid(),
        "owner_start": process_start(os.getpid()),
        "owner_host": owner_identity(),
        **extra,
    }
    (workdir / MARKER).write_text(json.dumps(marker))


def _stale(entry: Path) -> bool:
    try:
        owner = int(entry.name[len(TMP_PREFIX) :].split("-", 1)[0])
    except ValueError:
        return False
    try:
        marker = json.loads((entry / MARKER).read_text())
    except (OSError, ValueError):
        marker = {}
    if marker.get("owner_host") not in (None, owner_identity()):
        return False  # an owner in another pid namespace: its pid says nothing here (#18 row 1)
    if process_alive(owner, marker.get("owner_start")):
        return False
    return not process_alive(marker.get("watchdog_pid"), marker.get("watchdog_start"))


def sweep_stale(base: Path | None = None) -> int:
    """Remove private directories whose owner and watchdog are both gone; return how many."""
    base = base or tmp_base()
    removed = 0
    try:
        entries = [e for e in base.iterdir() if e.name.startswith(TMP_PREFIX)]
    except OSError:
        return 0
    for entry in entries:
        if entry.is_dir() and _stale(entry):
            log.debug("svcenv: removing stale %s", entry)
            release_shared_memory(entry / "data")
            shutil.rmtree(entry, ignore_errors=True)
            removed += not entry.exists()
    return removed


def release_shared_memory(data: Path) -> bool:
    """Remove the System V segment a killed postmaster left (its ``postmaster.pid`` remains); True if one was."""
    try:
        lines = (data / "postmaster.pid").read_text().splitlines()
        shmid = int(lines[6].split()[1])
        pid = int(lines[0])
    except (OSError, IndexError, ValueError):
        return False  # a clean shutdown removes postmaster.pid
    if process_alive(pid, None) and Path(f"/proc/{pid}/cwd").resolve() == data.resolve():
        return False  # still running
    import ctypes

    ipc_rmid = 0
    return int(ctypes.CDLL(None, use_errno=True).shmctl(shmid, ipc_rmid, None)) == 0
