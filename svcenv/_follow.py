"""Following a service's log into a file, a logger, a stream or a function: :class:`LogFollower`."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO, TypeAlias

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .handles import ServiceHandle

__all__ = ["LogFollower", "LogSink"]

LogSink: TypeAlias = "str | Path | logging.Logger | TextIO | Callable[[str], object]"
"""Where followed lines go: a file path (appended to), a logger (one INFO record per line,
with ``extra={"svcenv_service": name}``), a text stream, or a function called with each line."""


def _writer(name: str, into: LogSink) -> tuple[Callable[[str], object], Callable[[], None]]:
    """A function that takes one line, and one that releases what it holds."""
    if isinstance(into, (str, Path)):
        handle = Path(into).open("a", encoding="utf-8")  # noqa: SIM115 (closed by the follower)

        def to_file(line: str) -> None:
            handle.write(line + "\n")
            handle.flush()

        return to_file, handle.close
    if isinstance(into, logging.Logger):
        return (lambda line: into.info("%s | %s", name, line, extra={"svcenv_service": name})), lambda: None
    write = getattr(into, "write", None)
    if callable(write):
        return (lambda line: (write(line + "\n"), getattr(into, "flush", lambda: None)())), lambda: None
    if callable(into):
        return into, lambda: None
    raise ConfigurationError(
        f"follow_logs({name!r}, into=...): give a path, a logging.Logger, a text stream or a function, "
        f"not {type(into).__name__}"
    )


class LogFollower:
    """Copies one service's log, line by line as it is written, until :meth:`stop` (or the service's end).

    Made by :meth:`svcenv.Environment.follow_logs`, which stops it before it removes the services.
    """

    def __init__(self, handle: ServiceHandle, into: LogSink, tail: int | None = 0) -> None:
        self.service = handle.name
        self.lines = 0
        """How many lines were copied so far."""
        self.error: BaseException | None = None
        """What ended the copying early (the engine went away, the sink raised), if anything."""
        self._stop = threading.Event()
        self._write, self._release = _writer(handle.name, into)
        self._lines = handle.follow_logs(tail=tail, stop=self._stop)
        self._thread = threading.Thread(target=self._run, name=f"svcenv-follow-{handle.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for line in self._lines:
                self._write(line)
                self.lines += 1
        except Exception as exc:
            self.error = exc
        finally:
            self._release()

    @property
    def running(self) -> bool:
        """Whether it still copies (the service runs and :meth:`stop` was not called)."""
        return self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop copying; what was written until now is in the sink. Waits up to ``timeout`` seconds."""
        self._stop.set()
        self._thread.join(timeout)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<LogFollower {self.service!r} {state}, {self.lines} lines>"
