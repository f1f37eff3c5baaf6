"""Supervisor of one server for the local backend (internal; run as a script, not imported).

``python -I -S _watchdog.py OWNER_FD STOP_SIGNAL GRACE USER WORKDIR [CWD] -- SERVER_ARGV...``

The server runs in ``CWD`` (default ``WORKDIR``).

The owner (the process that runs the tests) starts this script, which forks the
server, prints the server's pid on stdout and then watches three things:

* the server: when it exits, the watchdog exits with its status (``128+n`` if
  killed by signal ``n``), so the owner learns it through ``Popen.poll()``;
* SIGTERM from the owner: stop the server (``STOP_SIGNAL`` to its process group,
  SIGKILL after ``GRACE`` seconds) and exit with the server's status;
* the owner's death, even by SIGKILL: ``OWNER_FD`` is the read end of a pipe
  whose write end only the owner holds, so it reads EOF when the owner is gone
  (a change of ``getppid()`` is checked too, in case a forked child of the owner
  keeps the write end open). The watchdog then stops the server and removes
  ``WORKDIR``.

Why a separate process rather than ``PR_SET_PDEATHSIG`` on the server: the
death signal fires when the *thread* that forked exits, and svcenv starts
services from short-lived worker threads. The watchdog is single-threaded, so
here PDEATHSIG is reliable: the server gets SIGKILL if the watchdog itself is
killed. The server runs in its own session (process group), as ``USER`` if
given (root only); PDEATHSIG is set after the uid switch, which clears it.

Only the standard library, and only fast imports: this runs on every start.
"""

from __future__ import annotations

import os
import pwd
import select
import signal
import sys

TYPE_CHECKING = False  # typing and collections.abc cost milliseconds we pay on every start
if TYPE_CHECKING:
    from collections.abc import Callable

PR_SET_PDEATHSIG = 1
POLL_S = 1.0
"""How often the owner's pid is checked when nothing else happens."""


def _pdeathsig_setter() -> Callable[[], None]:
    """A function that arms SIGKILL on the watchdog's death (loaded before the fork and uid switch)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def arm() -> None:
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")

    return arm


def _spawn(argv: list[str], user: str, cwd: str) -> int:
    """Fork and exec the server in a new session; stdout and stderr go where ours go."""
    # Everything that imports is done before the switch: the account may not read our Python.
    arm_pdeathsig = _pdeathsig_setter()
    account = pwd.getpwnam(user) if user else None
    watchdog = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    try:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(2, 1)
        if account is not None:
            os.initgroups(account.pw_name, account.pw_gid)
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)
        arm_pdeathsig()
        if os.getppid() != watchdog:  # the watchdog died before PDEATHSIG was armed
            os._exit(1)
        os.chdir(cwd)
        os.execv(argv[0], argv)  # noqa: S606 (argv comes from svcenv, not a shell)
    except BaseException as exc:
        os.write(2, f"svcenv watchdog: cannot run {argv[0]}: {exc}\n".encode())
    finally:
        os._exit(127)


def _killpg(pgid: int, sig: int) -> None:
    try:  # noqa: SIM105 (contextlib costs milliseconds we pay on every start)
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _has_exited(pid: int) -> bool:
    """Whether the server has exited, without reaping it (its pid stays reserved)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _reap(pid: int) -> int:
    """Kill what is left of the server's process group, reap the server, return its status."""
    _killpg(pid, signal.SIGKILL)  # the unreaped leader keeps the group id from being reused
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def _wait_exit(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for the server to exit (without reaping it)."""
    import time

    deadline = time.monotonic() + timeout
    delay = 0.002
    while not _has_exited(pid):
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        select.select([], [], [], min(delay, left))
        delay = min(delay * 2, 0.05)
    return True


def _shutdown(pid: int, stop_signal: int, grace: float) -> int:
    """Ask the server to stop (the signal goes to the leader only, as Postgres wants), then force it."""
    try:  # noqa: SIM105
        os.kill(pid, stop_signal)
    except ProcessLookupError:
        pass
    if not _wait_exit(pid, grace):
        _killpg(pid, signal.SIGKILL)
    return _reap(pid)


def _drain(fd: int) -> bytes:
    try:
        return os.read(fd, 4096)
    except BlockingIOError:
        return b"-"


def main(args: list[str]) -> int:
    """Run the server and supervise it; returns the exit status to exit with."""
    sep = args.index("--")
    owner_fd_s, stop_signal_s, grace_s, user, workdir, *where = args[:sep]
    argv = args[sep + 1 :]
    owner_fd, stop_signal, grace = int(owner_fd_s), int(stop_signal_s), float(grace_s)
    owner_pid = os.getppid()
    os.set_inheritable(owner_fd, False)

    stop_requested = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    pid = _spawn(argv, user, where[0] if where else workdir)
    sys.stdout.write(f"{pid}\n")
    sys.stdout.flush()
    pidfd = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None
    watched = [owner_fd, wake_r] + ([pidfd] if pidfd is not None else [])
    while True:
        readable, _, _ = select.select(watched, [], [], POLL_S if pidfd is not None else 0.05)
        if wake_r in readable:
            _drain(wake_r)
        if _has_exited(pid):
            return _reap(pid)
        owner_gone = (owner_fd in readable and _drain(owner_fd) == b"") or os.getppid() != owner_pid
        if owner_gone or stop_requested:
            code = _shutdown(pid, stop_signal, grace)
            if owner_gone:
                import shutil

                shutil.rmtree(workdir, ignore_errors=True)
            return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
