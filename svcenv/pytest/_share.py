"""One environment for all pytest-xdist workers, shared through pytest's own per-user temp.

The directory is ``<basetemp of the run>/svcenv-xdist`` (pytest-xdist's documented
pattern: ``tmp_path_factory.getbasetemp().parent`` in a worker), private to the
user (0700, checked), never a guessable name in a world-writable directory. The
first worker starts the environment under a lock and writes its snapshot (0600,
secrets included); the others attach. The owner waits at the end until every
other worker has left, runs the ``before_stop`` work (e.g. dropping a template
shared by all workers), then stops it and removes the directory.

The directory records the run's controller (``run.json``) and the owner worker
(``owner``): when both ended without removing it (a SIGKILLed controller takes its
workers along), the next run that starts a share removes it (:func:`sweep_abandoned`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .._util import file_lock, owner_gone, owner_record, owner_tag, pid_alive, process_alive
from ..descriptors import Service
from ..environment import Environment
from ..errors import ConfigurationError

DIRNAME = "svcenv-xdist"


def private_dir(path: Path) -> Path:
    """``path`` created 0700 (or checked to be ours and 0700): the share holds passwords."""
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise ConfigurationError(f"svcenv: {path} is not a directory of this user; refusing to share secrets in it")
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


class XdistShare:
    """The shared state of one xdist run, in ``run_dir`` (pytest's basetemp of the run)."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = private_dir(run_dir / DIRNAME)
        self.state = self.dir / "state.json"
        self.members = self.dir / "members"
        self.owner = False
        self.controller = os.getppid()  # xdist's workers are children of the run's controller
        run = self.dir / "run.json"
        if not run.exists():
            _write_private(run, {"controller": owner_record(self.controller)})

    def lock(self, name: str = "share") -> Any:
        """An exclusive lock shared by the run's workers (a context manager)."""
        return file_lock(self.dir / f"{name}.lock")

    def template_name(self, service: str) -> str:
        """The name of ``service``'s template database for this run (the same in every worker).

        It carries the controller's :func:`~svcenv._util.owner_tag`: a server that outlives a killed
        run loses the template at the next template build on it.
        """
        digest = hashlib.sha256(f"{self.dir}:{service}".encode()).hexdigest()[:12]
        return f"svcenv_tpl_{digest}_{owner_tag(self.controller)}"

    def _read_members(self) -> set[int]:
        return set(json.loads(self.members.read_text())) if self.members.exists() else set()

    def _write_members(self, pids: set[int]) -> None:
        self.members.write_text(json.dumps(sorted(pids)))

    def _owner_alive(self) -> bool:
        try:
            record = json.loads((self.dir / "owner").read_text())
        except (OSError, ValueError):
            return False
        return isinstance(record, dict) and process_alive(record.get("pid"), record.get("start"))

    def enlist(self) -> None:
        """Count this worker as a member before it needs the environment: the owner, whichever worker
        it turns out to be, then waits for it at the end, though it has not attached yet."""
        with self.lock():
            self._add_member()

    def _add_member(self) -> None:
        """This process is a member (the caller holds the lock)."""
        self._write_members(self._read_members() | {os.getpid()})

    def join(self, services: Sequence[Service], kwargs: Mapping[str, Any]) -> Environment:
        """Attach to the run's environment, or start it (first worker, or its owner died)."""
        with self.lock():
            if self.state.exists() and self._owner_alive():
                env = Environment.attach(json.loads(self.state.read_text()), *services)
            else:
                # First worker, or the owner died (its reaper removed the services): start them anew.
                sweep_abandoned(self.dir.parent)
                self.state.unlink(missing_ok=True)
                env = Environment(*services, **kwargs).start()
                fd = os.open(self.state, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as out:
                    json.dump(env.snapshot(), out)
                _write_private(self.dir / "owner", owner_record())
                self.owner = True
            self._add_member()
        return env

    def leave(
        self, env: Environment | None, before_stop: Callable[[], None] = lambda: None, wait: float = 600.0
    ) -> None:
        """Leave; the owner waits for the others, then runs ``before_stop``, stops and removes the share.
        (``env`` None: a member that never attached.)"""
        with self.lock():
            self._write_members(self._read_members() - {os.getpid()})
        if not self.owner or env is None:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with self.lock():
                alive = {pid for pid in self._read_members() if pid_alive(pid)}
            if not alive:
                break
            time.sleep(0.1)
        try:
            before_stop()
        finally:
            env.stop()
            remove(self.dir.parent)

    @staticmethod
    def dir_of(run_dir: Path) -> Path:
        return run_dir / DIRNAME


def _write_private(path: Path, record: Mapping[str, Any]) -> None:
    """``record`` as JSON in ``path`` (0600), replacing it whole: a reader never sees half of it."""
    part = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(record, out)
    os.replace(part, path)


def sweep_abandoned(run_dir: Path) -> list[Path]:
    """Remove the shares that killed runs left in ``run_dir``'s siblings (pytest's other basetemps).

    Only a directory of this user whose recorded controller and owner worker both
    provably ended (:func:`~svcenv._util.owner_gone`); a share of a running run, of
    a run in another pid namespace or without records is left alone.
    """
    removed: list[Path] = []
    try:
        siblings = [s for s in run_dir.parent.iterdir() if s != run_dir and not s.is_symlink()]
    except OSError:
        return removed
    for sibling in siblings:
        share = sibling / DIRNAME
        try:
            info = share.lstat()
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            continue
        records: list[object] = []
        for name in ("run.json", "owner"):
            try:
                record = json.loads((share / name).read_text())
            except FileNotFoundError:
                continue
            except (OSError, ValueError):
                record = None  # unreadable: cannot be judged, so kept
            records.append(record.get("controller") if isinstance(record, dict) and name == "run.json" else record)
        if owner_gone(*records):
            shutil.rmtree(share, ignore_errors=True)
            removed.append(share)
    return removed


def remove(run_dir: Path) -> None:
    """Remove a run's share (the controller's last word: also what a killed owner left)."""
    shutil.rmtree(run_dir / DIRNAME, ignore_errors=True)
