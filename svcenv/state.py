"""The CLI's state: which environments and reused services run, with their secrets.

Everything lives in one per-user directory (mode 0700): ``SVCENV_STATE_DIR``,
else ``$XDG_STATE_HOME/svcenv``, else ``~/.local/state/svcenv``. Files are
written atomically with mode 0600, because they hold passwords:

* ``env-<id>.json``: an environment the CLI runs, ``foreground`` (``up``/``run``,
  removed when they end) or ``detached`` (``up --detach``, removed by ``down``).
* ``reuse-<hash>.json``: a reused service, found by its configuration hash.
* ``*.lock``: ``fcntl`` locks (per project, per reuse hash).

A record's ``services`` maps each service name to an *entry*: its ``spec`` (see
:mod:`svcenv.config`), its ``snapshot`` (one service of
:meth:`Environment.snapshot`), the ``env_id`` it was started in, its
``reuse_hash`` (or None) and, for the local backend, its ``log_path``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._util import file_lock, pid_alive
from .errors import ConfigurationError

__all__ = ["Record", "StateDir", "pid_alive", "project_key", "state_root"]

Record = dict[str, Any]


def state_root() -> Path:
    """Where state lives for this user (not created)."""
    explicit = os.environ.get("SVCENV_STATE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "state"
    return base / "svcenv"


def project_key(project_dir: Path) -> str:
    """A short stable key for a project directory."""
    return hashlib.sha256(str(project_dir.resolve()).encode()).hexdigest()[:16]


class StateDir:
    """The state directory: records and locks. ``create=False`` never makes it (read-only use)."""

    def __init__(self, root: Path | None = None, create: bool = True) -> None:
        self.root = (root or state_root()).absolute()
        if create:
            self._ensure()

    def _ensure(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = self.root.stat()
        if info.st_uid != os.getuid():
            raise ConfigurationError(
                f"state directory {self.root} belongs to uid {info.st_uid}, not to you; set SVCENV_STATE_DIR"
            )
        if stat.S_IMODE(info.st_mode) != 0o700:
            os.chmod(self.root, 0o700)

    @property
    def exists(self) -> bool:
        return self.root.is_dir()

    # -- files ------------------------------------------------------------------------------

    def write(self, name: str, record: Mapping[str, Any]) -> None:
        """Write ``name`` atomically, mode 0600."""
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.root)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump(record, out, indent=1, sort_keys=True)
            os.replace(tmp, self.root / name)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def read(self, name: str) -> Record | None:
        """The record in ``name``, or None if absent or unreadable."""
        try:
            data = json.loads((self.root / name).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def delete(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)

    def names(self, prefix: str) -> list[str]:
        try:
            return sorted(p.name for p in self.root.iterdir() if p.name.startswith(prefix) and p.suffix == ".json")
        except OSError:
            return []

    def lock(self, name: str, cancel: threading.Event | None = None) -> contextlib.AbstractContextManager[None]:
        """Hold an exclusive ``fcntl`` lock named ``name``; waiting ends with InterruptedError if ``cancel`` is set."""
        return file_lock(self.root / f"{name}.lock", cancel)

    # -- environments ---------------------------------------------------------------------

    @staticmethod
    def env_file(env_id: str) -> str:
        return f"env-{env_id}.json"

    @staticmethod
    def reuse_file(config_hash: str) -> str:
        return f"reuse-{config_hash}.json"

    def environments(self, project: str | None = None) -> list[Record]:
        """Environment records (of one project key), oldest first."""
        records = [r for r in (self.read(n) for n in self.names("env-")) if r is not None]
        records = [r for r in records if project is None or r.get("project") == project]
        return sorted(records, key=lambda r: float(r.get("created", 0)))

    def reused(self, project: str | None = None) -> list[Record]:
        """Reused-service records (of one project key), oldest first."""
        records = [r for r in (self.read(n) for n in self.names("reuse-")) if r is not None]
        records = [r for r in records if project is None or r.get("project") == project]
        return sorted(records, key=lambda r: float(r.get("created", 0)))

    def save_environment(self, record: Mapping[str, Any]) -> None:
        self.write(self.env_file(str(record["id"])), record)

    def referenced_env_ids(self) -> set[str]:
        """The ``svcenv.environment`` ids that records here keep alive."""
        ids: set[str] = set()
        for record in [*self.environments(), *(self.reused())]:
            for entry in entries_of(record).values():
                ids.add(str(entry.get("env_id", "")))
        return ids


def entries_of(record: Mapping[str, Any]) -> dict[str, Record]:
    """Service entries of an environment record or of a reuse record, by name."""
    if "service" in record:
        entry = record["service"]
        return {str(entry["name"]): entry}
    return dict(record.get("services", {}))


def new_record(env_id: str, mode: str, project_dir: Path, entries: Mapping[str, Record]) -> Record:
    """An environment record, owned by this process."""
    return {
        "id": env_id,
        "mode": mode,
        "project": project_key(project_dir),
        "project_dir": str(project_dir),
        "pid": os.getpid(),
        "created": time.time(),
        "services": dict(entries),
    }
