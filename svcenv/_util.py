"""One home for the small things every module needs: flags, locks, pids, names, polling.

Each exists once, so that they behave the same everywhere:

* :func:`flag` / :func:`in_ci`: one truthy set (``1``, ``true``, ``yes``, ``on``) and one falsy set.
* :func:`file_lock`: an exclusive ``fcntl`` lock on a private (0600) file, cancellable.
* :func:`pid_alive`: whether a process exists (a zombie does not count).
* :func:`owner_record` / :func:`owner_gone`: who owns a thing (host, pid namespace, pid, start
  time), and whether that owner provably ended; :func:`owner_tag` / :func:`tag_gone` the same in a name.
* :func:`env_prefix`: a service name as a variable prefix (``pg-replica`` -> ``PG_REPLICA``).
* :func:`poll`: retry a check on tenacity until it passes or a deadline runs out.
* :func:`scrub`: text with every known secret (and its quoted and escaped forms) as ``***``.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

__all__ = [
    "FALSY",
    "TRUTHY",
    "env_prefix",
    "file_lock",
    "flag",
    "in_ci",
    "owner_gone",
    "owner_record",
    "owner_tag",
    "pid_alive",
    "poll",
    "process_alive",
    "scrub",
    "tag_gone",
]

TRUTHY = frozenset({"1", "true", "yes", "on"})
FALSY = frozenset({"0", "false", "no", "off"})
_T = TypeVar("_T")


def flag(name: str, default: bool = False) -> bool:
    """The boolean environment variable ``name``: truthy/falsy words (any case), else ``default``."""
    value = os.environ.get(name, "").strip().lower()
    if value in TRUTHY:
        return True
    if value in FALSY:
        return False
    return default


def in_ci() -> bool:
    """True when ``CI`` is set to a truthy word (``CI=true``, ``CI=1``, ``CI=on``, ...)."""
    return flag("CI")


def said(error: BaseException | None) -> str:
    """What ``error`` says, on one line (its type's name if it says nothing)."""
    return " ".join(str(error).split()) or type(error).__name__


def env_prefix(name: str) -> str:
    """``"postgres-replica"`` -> ``"POSTGRES_REPLICA"``: the prefix of a service's variables."""
    return re.sub(r"[^A-Za-z0-9]", "_", name).upper()


_SECRET_NAME = re.compile(r"(?i)pass|secret|token|credential|auth|api_?key|private_?key")


def secret_name(name: str) -> bool:
    """Whether variable ``name`` holds a secret (``POSTGRES_PASSWORD``, ``API_KEY``; not a ``*_FILE`` path)."""
    return bool(_SECRET_NAME.search(name)) and not name.upper().endswith("_FILE")


MIN_SECRET_LEN = 3
"""Shorter values are not scrubbed: ``***`` in place of every ``ab`` of a log would hide more than it protects."""


def secret_forms(secret: str) -> set[str]:
    """``secret`` as it may show in text: raw, URL-quoted (``%40``, ``+``), escaped (``\\x00``, JSON, bytes)."""
    import json
    from urllib.parse import quote, quote_plus

    forms = {
        secret,
        quote(secret, safe=""),
        quote(secret, safe=":/@"),
        quote_plus(secret),
        secret.encode("unicode_escape").decode("ascii"),
        repr(secret)[1:-1],
        repr(secret.encode())[2:-1],
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
    }
    return {form for form in forms if len(form) >= MIN_SECRET_LEN}


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every one of ``secrets`` (in each of its :func:`secret_forms`) replaced by ``***``.

    Longer forms go first, so a secret that contains another is hidden whole.
    """
    forms: set[str] = set()
    for secret in secrets:
        if len(secret) >= MIN_SECRET_LEN:
            forms |= secret_forms(secret)
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, "***")
    return text


@functools.cache
def owner_identity() -> str:
    """Which machine boot and pid namespace this process runs in: ``<boot id>/<pid namespace inode>``.

    A pid means something only where this is the same; ``prune`` judges only such owners.
    """
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = "unknown"
    try:
        namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        namespace = "unknown"
    return f"{boot}/{namespace}"


def process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (tells it from a later process with the same pid)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def process_alive(pid: int | None, start: str | None) -> bool:
    """Whether ``pid`` runs here and (when ``start`` is known) is the process that started then."""
    if not pid:
        return False
    now = process_start(pid)
    return now is not None and (not start or now == start)


def owner_record(pid: int | None = None) -> dict[str, object]:
    """Who ``pid`` (default: this process) is, in a form :func:`owner_gone` judges later."""
    pid = pid or os.getpid()
    return {"identity": owner_identity(), "pid": pid, "start": process_start(pid)}


def owner_gone(*records: object) -> bool:
    """Whether every owner recorded by :func:`owner_record` provably ended.

    Only owners of this host and pid namespace are judged: an owner elsewhere, or a
    malformed record, is never gone (its pid says nothing here).
    """
    here = owner_identity()
    for record in records:
        if not isinstance(record, dict) or record.get("identity") != here or not isinstance(record.get("pid"), int):
            return False
        start = record.get("start")
        if process_alive(record["pid"], start if isinstance(start, str) else None):
            return False
    return bool(records)


_TAG = re.compile(r"_o([0-9a-f]{8})_([0-9]+)_([0-9]+)(?:_|$)")


def _identity_hash() -> str:
    import hashlib

    return hashlib.sha256(owner_identity().encode()).hexdigest()[:8]


def owner_tag(pid: int | None = None) -> str:
    """``o<host hash>_<pid>_<start>``: :func:`owner_record` short enough for a database name."""
    pid = pid or os.getpid()
    return f"o{_identity_hash()}_{pid}_{process_start(pid) or 0}"


def tag_gone(name: str) -> bool:
    """Whether ``name`` carries an :func:`owner_tag` (after a ``_``) whose owner provably ended.

    A name without a tag, or with an owner of another host or pid namespace: False.
    """
    found = _TAG.search(name)
    if found is None or found.group(1) != _identity_hash():
        return False
    return not process_alive(int(found.group(2)), None if found.group(3) == "0" else found.group(3))


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists here (one of another user counts; a zombie does not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


@contextlib.contextmanager
def file_lock(path: Path, cancel: threading.Event | None = None) -> Iterator[None]:
    """Hold an exclusive ``fcntl`` lock on ``path`` (created 0600, its directory 0700 if new).

    With ``cancel``, waiting polls and ends with :class:`InterruptedError` once it is set.
    Closing the descriptor releases the lock, also when the holder dies.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if cancel is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if cancel.wait(0.02):
                        raise InterruptedError(f"stopped waiting for lock {path.name}") from None
        yield
    finally:
        os.close(fd)


class NotYet(Exception):
    """Raised by a :func:`poll` check that has not passed yet (its message says why)."""


def _wait(cancel: threading.Event, seconds: float) -> None:
    cancel.wait(seconds)  # wakes at once when cancelled


def poll(
    check: Callable[[], _T],
    timeout: float,
    *,
    first: float = 0.002,
    cap: float = 0.1,
    cancel: threading.Event | None = None,
    retry_on: tuple[type[BaseException], ...] = (NotYet,),
) -> _T:
    """Call ``check`` until it returns without raising one of ``retry_on``; return its result.

    Waits start at ``first`` seconds and double up to ``cap``. When ``timeout``
    runs out (or ``cancel`` is set) the last exception propagates.
    """
    from tenacity import Retrying, retry_if_exception_type, stop_after_delay, stop_when_event_set, wait_exponential

    cancel = cancel or threading.Event()
    for attempt in Retrying(
        stop=stop_after_delay(timeout) | stop_when_event_set(cancel),
        wait=wait_exponential(multiplier=first, min=first, max=cap),
        retry=retry_if_exception_type(retry_on),
        sleep=lambda seconds: _wait(cancel, seconds),
        reraise=True,
    ):
        with attempt:
            return check()
    raise AssertionError("unreachable")  # pragma: no cover


class DaemonJob:
    """``fn`` run in a daemon thread, waited for up to a deadline.

    A call that blocks (an engine that does not answer, a probe that hangs) can
    then hold neither a deadline nor the interpreter's exit; an abandoned call
    ends with the process.
    """

    def __init__(self, fn: Callable[[], object], name: str) -> None:
        self._outcome: list[BaseException | None] = []
        self._thread = threading.Thread(target=self._run, args=(fn,), name=name, daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], object]) -> None:
        try:
            fn()
            self._outcome.append(None)
        except BaseException as exc:
            self._outcome.append(exc)

    @property
    def done(self) -> bool:
        """True once ``fn`` returned or raised."""
        return bool(self._outcome)

    @property
    def error(self) -> BaseException | None:
        """What ``fn`` raised (None while it runs, or if it returned)."""
        return self._outcome[0] if self._outcome else None

    def wait(self, deadline: float, cancel: threading.Event | None = None) -> bool:
        """Wait until ``fn`` is done, ``deadline`` (``time.monotonic()``) passes or ``cancel`` is set; ``done``."""
        while not self._outcome and self._thread.is_alive():
            left = deadline - time.monotonic()
            if left <= 0 or (cancel is not None and cancel.is_set()):
                break
            self._thread.join(min(left, 0.05))
        return self.done
