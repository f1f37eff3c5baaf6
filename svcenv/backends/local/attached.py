"""A local server another process started, known from a snapshot: its pid and its log file."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..._util import process_alive, process_start
from ..base import Instance
from ._common import LOG_FILE, MARKER, TMP_PREFIX
from .places import tmp_base


def find_log(pid: int) -> Path | None:
    """The log file of the server with this pid: in its working directory, or the directory its watchdog marked."""
    with contextlib.suppress(OSError):
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        for where in (cwd, cwd.parent):  # postgres works in <workdir>/data
            if where.name.startswith(TMP_PREFIX) and (where / LOG_FILE).is_file():
                return where / LOG_FILE
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        watchdog = int(stat[stat.rfind(")") + 2 :].split()[1])
        entries = [e for e in tmp_base().iterdir() if e.name.startswith(TMP_PREFIX)]
    except (OSError, ValueError, IndexError):
        return None
    for entry in entries:
        with contextlib.suppress(OSError, ValueError):
            if json.loads((entry / MARKER).read_text()).get("watchdog_pid") == watchdog:
                return entry / LOG_FILE
    return None


class AttachedProcess(Instance):
    """A local server of another process. ``stop()`` leaves it; ``remove()`` asks it to stop."""

    backend = "local"

    def __init__(self, snapshot: Mapping[str, Any]) -> None:
        self.id = str(snapshot["id"])
        self.host = str(snapshot.get("host") or "127.0.0.1")
        self.ports = {int(k): int(v) for k, v in (snapshot.get("ports") or {}).items()}
        self.credentials = dict(snapshot.get("credentials") or {})
        self._pid = int(self.id) if self.id.isdigit() else 0
        self._started = process_start(self._pid) if self._pid else None
        given = snapshot.get("log_path")
        self._log_path: Path | None = Path(given) if given else None
        self._looked = bool(given) or not self._started  # a gone process: nowhere to look

    @property
    def log_path(self) -> Path | None:
        """The server's log file: the snapshot's ``log_path``, else found from the running process."""
        if not self._looked:
            self._looked = True
            self._log_path = find_log(self._pid)
        return self._log_path

    def start(self) -> None:
        """Nothing to start: its owner started it."""

    def stop(self) -> None:
        """Nothing to stop: the owner's watchdog stops it (see :meth:`remove`)."""

    def remove(self) -> None:
        """Ask the server to stop (its watchdog then removes its directory)."""
        if self.exit_status() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self._pid, signal.SIGTERM)

    def exit_status(self) -> int | None:
        """``None`` while the process runs; ``-1`` once it is gone (its status went to its parent)."""
        if process_alive(self._pid, self._started):
            return None
        return -1

    def logs(self, tail: int | None = None) -> str:
        path = self.log_path
        if path is None:
            return f"(no log found for local server {self.id})"
        try:
            text = path.read_text(errors="replace")
        except OSError as exc:
            return f"(log unavailable: {exc})"
        if tail is None:
            return text
        return "".join(text.splitlines(keepends=True)[-tail:]) if tail > 0 else ""
