"""Live per-service progress on stderr while services start."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TextIO

# -- live progress ------------------------------------------------------------------------------


class Progress:
    """Per-service state and elapsed time on stderr: redrawn in place on a TTY, plain lines otherwise."""

    HEARTBEAT = 5.0

    def __init__(self, names: Sequence[str], stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.t0 = time.monotonic()
        self.states: dict[str, tuple[str, str, float | None]] = dict.fromkeys(names, ("pending", "", None))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._drawn = 0
        self._poll: Callable[[], None] | None = None
        self._thread: threading.Thread | None = None

    def set(self, name: str, state: str, detail: str = "", seconds: float | None = None) -> None:
        """Record a service's state (``seconds``: its time to ready, if known); in plain mode, print it."""
        with self._lock:
            previous = self.states.get(name, ("", "", None))
            done = None
            if state in ("ready", "attached", "completed", "failed"):
                done = seconds if seconds is not None else time.monotonic() - self.t0
            self.states[name] = (state, detail, done)
            # Plain mode: one line per change; ready/attached services get the summary line with their address.
            if not self.tty and previous[:2] != (state, detail) and state not in ("ready", "attached", "completed"):
                self.stream.write(f"svcenv: {name}: {self._describe(name)}\n")
                self.stream.flush()

    def _describe(self, name: str) -> str:
        state, detail, done = self.states[name]
        if done is not None:
            return f"{state} after {done:.2f}s" + (f" ({detail})" if detail else "")
        return f"{state} {detail}".strip()

    def start(self, poll: Callable[[], None] | None = None) -> None:
        """Tick in the background: ``poll`` (updates states), redraw (TTY) or heartbeat lines (plain)."""
        self._poll = poll
        self._thread = threading.Thread(target=self._run, name="svcenv-progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        beat = time.monotonic() + self.HEARTBEAT
        if self.tty:
            self._draw()  # the table appears at once, then ticks
        while not self._stop.wait(0.1):
            if self._poll is not None:
                with contextlib.suppress(Exception):
                    self._poll()
            if self.tty:
                self._draw()
            elif time.monotonic() >= beat:
                beat += self.HEARTBEAT
                with self._lock:
                    slow = [n for n, (s, _, done) in self.states.items() if done is None]
                    for name in slow:
                        self.stream.write(f"svcenv: {name}: {self._describe(name)}, {self.elapsed:.0f}s so far\n")
                    self.stream.flush()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def _draw(self) -> None:
        with self._lock:
            lines = []
            for name, (state, detail, done) in self.states.items():
                seconds = done if done is not None else self.elapsed
                lines.append(f"  {name:<14} {state:<9} {seconds:6.2f}s  {detail}".rstrip())
            out = f"\x1b[{self._drawn}F" if self._drawn else ""
            out += "".join(f"\x1b[2K{line}\n" for line in lines)
            self.stream.write(out)
            self.stream.flush()
            self._drawn = len(lines)

    def stop(self) -> None:
        """Stop ticking and erase the live block (TTY)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._poll is not None:
            with contextlib.suppress(Exception):
                self._poll()
        if self.tty and self._drawn:
            with self._lock:
                self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
                self.stream.flush()
                self._drawn = 0
