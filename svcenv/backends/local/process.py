"""A server process under a watchdog: ports, the owner pipe, start, stop, logs (:class:`LocalInstance`)."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from ..._util import process_start
from ...errors import ServiceExited
from ..base import Instance
from ._common import LOG_FILE, PORT_ATTEMPTS, WATCHDOG
from .accounts import Account
from .places import _write_marker

if TYPE_CHECKING:
    from ...descriptors import Resolved

# -- ports and the owner pipe ------------------------------------------------------------

_ports_lock = threading.Lock()
_recent_ports: deque[int] = deque(maxlen=256)


def free_port() -> int:
    """A free TCP port on 127.0.0.1, not one this process handed out recently."""
    with _ports_lock:
        for _ in range(50):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
            if port not in _recent_ports:
                _recent_ports.append(port)
                return port
    return port


_owner_lock = threading.Lock()
_owner_pipe: tuple[int, int, int] | None = None  # (creator pid, read end, write end)


def _owner_fd() -> int:
    """The read end of a pipe only this process writes to: watchdogs read EOF when we die."""
    global _owner_pipe
    with _owner_lock:
        if _owner_pipe is None or _owner_pipe[0] != os.getpid():  # after fork(), make our own
            read_end, write_end = os.pipe()  # both close-on-exec: no other child inherits them
            _owner_pipe = (os.getpid(), read_end, write_end)
        return _owner_pipe[1]


# -- instances ------------------------------------------------------------------------------


class _PortTaken(Exception):
    """The server could not bind its port (another process took it first)."""


class LocalInstance(Instance):
    """One server process, started through a watchdog, in a private directory.

    ``id`` is the server's pid once started; ``workdir`` holds its data and log.
    """

    backend = "local"
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM
    stop_grace: ClassVar[float] = 5.0
    """Seconds the server gets to stop before it is killed."""

    def __init__(self, resolved: Resolved, labels: Mapping[str, str], workdir: Path, account: Account | None) -> None:
        self.resolved = resolved
        self.labels = dict(labels)
        self.workdir = workdir
        self.account = account
        self.id = ""
        self.host = "127.0.0.1"
        self.ports: dict[int, int] = {}
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopped = False
        self._saved_log = ""

    # -- what a kind provides ---------------------------------------------------------------

    def prepare(self) -> None:
        """Fill the private directory before the first start (called by ``create``)."""

    def argv(self, port: int) -> list[str]:
        """The server's command line for listening on ``port``."""
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        """The server's environment."""
        return dict(os.environ)

    def port_env(self, port: int) -> dict[str, str]:
        """Variables that tell the server its port (added to :meth:`env`; servers take it in ``argv``)."""
        return {}

    @property
    def cwd(self) -> Path | None:
        """Where the server runs (None: its private directory)."""
        return None

    def await_up(self, port: int, log_offset: int, deadline: float) -> None:
        """Return once the server listens (raise ``_PortTaken`` if it could not bind)."""

    def release(self) -> None:
        """Free what the stopped server may hold outside its directory."""

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self.workdir / LOG_FILE

    @property
    def stopped(self) -> bool:
        """Whether ``stop()`` was called."""
        return self._stopped

    @property
    def watchdog_pid(self) -> int | None:
        """The pid of the watchdog that supervises the server."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        deadline = time.monotonic() + self.resolved.service.effective_timeout
        for attempt in range(1, PORT_ATTEMPTS + 1):
            port = free_port()
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            self._spawn(port)
            try:
                self.await_up(port, offset, deadline)
            except _PortTaken:
                self._terminate()
                if attempt == PORT_ATTEMPTS:
                    raise ServiceExited(f"could not bind a free port in {PORT_ATTEMPTS} attempts") from None
                continue
            self.ports = {self.resolved.ports[0]: port} if self.resolved.ports else {}
            return

    def _spawn(self, port: int) -> None:
        user = self.account.name if self.account else ""
        grace = f"{self.stop_grace:g}"
        fd = _owner_fd()
        command = [sys.executable, "-I", "-S", str(WATCHDOG), str(fd), str(int(self.stop_signal)), grace, user]
        command += [str(self.workdir), *([str(self.cwd)] if self.cwd else []), "--", *self.argv(port)]
        with self._lock:
            if self._stopped:
                raise ServiceExited("stopped before it started")
            with self.log_path.open("ab") as log_file:
                proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=log_file,
                    pass_fds=(fd,),
                    start_new_session=True,
                    env={**self.env(), **self.port_env(port)},
                )
            self._proc = proc
            pid = _read_pid(proc)
        if pid is None:
            if proc.poll() is None:
                proc.kill()  # the server was never forked, or PDEATHSIG takes it along
            proc.wait()
            raise ServiceExited(f"its watchdog exited with status {proc.returncode} before starting it")
        self.id = str(pid)
        _write_marker(
            self.workdir,
            {"service": self.resolved.name, "watchdog_pid": proc.pid, "watchdog_start": process_start(proc.pid)},
        )

    def _check_running(self, log_offset: int) -> None:
        """Raise if the server was stopped or has exited (``_PortTaken`` if its port was taken)."""
        if self._stopped:
            raise ServiceExited("stopped while starting")
        status = self.exit_status()
        if status is not None:
            if "Address already in use" in self._read_log(log_offset):
                raise _PortTaken
            raise ServiceExited(f"exited with status {status} while starting")

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._terminate()
        self.release()
        self._saved_log = self.logs()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _terminate(self) -> None:
        """Stop the server through its watchdog; kill both if that takes too long."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the watchdog stops the server and exits with its status
            try:
                proc.wait(self.stop_grace + 5.0)
            except subprocess.TimeoutExpired:
                if self.id:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(int(self.id), signal.SIGKILL)  # still unreaped: the watchdog lives
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def exit_status(self) -> int | None:
        """``None`` while the server runs; else its exit status (``128+n`` when killed by signal ``n``)."""
        proc = self._proc
        return proc.poll() if proc is not None else None

    def logs(self, tail: int | None = None) -> str:
        text = self._read_log(0) if self.log_path.exists() else self._saved_log
        if tail is None:
            return text
        return "".join(text.splitlines(keepends=True)[-tail:]) if tail > 0 else ""

    def log_since(self, cursor: object | None) -> tuple[str, object]:
        """The log file from byte ``cursor`` on (never the whole file again)."""
        offset = cursor if isinstance(cursor, int) else 0
        try:
            with self.log_path.open("rb") as handle:
                handle.seek(offset)
                data = handle.read()
        except OSError:
            return "", offset
        return data.decode("utf-8", errors="replace"), offset + len(data)

    def _read_log(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as handle:
                handle.seek(offset)
                return handle.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.resolved.name!r} pid={self.id or '-'} {self.workdir}>"


def _read_pid(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int | None:
    """The server pid the watchdog prints first (None if the watchdog died first)."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else b""
    return int(line) if line.strip().isdigit() else None
