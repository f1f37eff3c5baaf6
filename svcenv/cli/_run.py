"""``run``: start the services, run a command with their variables, tear down, return its status."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from types import FrameType

from ._common import EXIT_FAILED, Terminated, UsageError, say
from ._start import Running, _foreground


def _terminal_delivers_sigint() -> bool:
    """True if a SIGINT here came from our terminal, which also delivered it to the child (same group)."""
    try:
        return sys.stdin.isatty() and os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError):
        return False


def _run_child(cmd: Sequence[str], variables: Mapping[str, str], running: Running) -> int:
    child: subprocess.Popen[bytes] | None = None
    pending: list[int] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        if running.command_status is not None:
            running.late_signals.append(signum)  # CMD has ended: the teardown is next and reports it
            return
        if signum == signal.SIGINT and _terminal_delivers_sigint():
            return
        if child is None:
            pending.append(signum)
        else:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)

    main_thread = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)} if main_thread else {}
    try:
        try:
            child = subprocess.Popen(list(cmd), env={**os.environ, **variables})
        except FileNotFoundError:
            say(f"error: command not found: {cmd[0]}")
            return 127
        except PermissionError:
            say(f"error: command cannot be executed: {cmd[0]}")
            return 126
        for signum in pending:
            child.send_signal(signum)
        status = child.wait()
        running.command_status = status if status >= 0 else 128 - status
    finally:
        if running.command_status is None:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        # else: forward() keeps recording signals until the teardown takes over (no gap where one raises)
    return running.command_status


def cmd_run(args: argparse.Namespace, cmd: Sequence[str]) -> int:
    """Start, run CMD with the variables, tear down, return CMD's status."""
    if not cmd:
        raise UsageError("run needs a command after --, e.g. python -m svcenv run -- pytest")
    ran: list[Running] = []
    try:
        with _foreground(args) as running:
            ran.append(running)
            status = _run_child(cmd, running.env.env_vars(), running)
        # CMD succeeded but something may still run: that is a failure of this command.
        return EXIT_FAILED if status == 0 and running.env.teardown_problems else status
    except (KeyboardInterrupt, Terminated) as exc:
        ended = ran[0].command_status if ran else None
        if ended is not None:  # after the teardown had reported: the command's status stands
            say(f"interrupted after the command had exited with status {ended} and the teardown had run")
            return ended
        if isinstance(exc, Terminated):
            say("terminated before the command started")
            return 128 + signal.SIGTERM
        say("interrupted before the command started")
        return 128 + signal.SIGINT
