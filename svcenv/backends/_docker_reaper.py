"""Removes an environment's containers when its owner dies, even by SIGKILL (no Ryuk image needed).

Started by the Docker backend as
``python -m svcenv.backends._docker_reaper ENV_ID OWNER_PID OWNER_START``, with its
stdin the read end of a pipe whose write end only the owner holds. The owner
writes ``disarm`` on a clean stop (or when it hands the services over, e.g.
``--svcenv-keep``), and the reaper exits without touching anything. It also
treats the owner as gone, and reaps, when either of these happens first:

* the read ends at EOF: every write end is closed;
* the owner process itself ends (an ``os.pidfd_open`` descriptor of it turns
  readable; without pidfds, a check every 0.5 s that it is still this process's
  parent, or alive with the start time ``OWNER_START`` names). This matters when
  a fork of the owner (``multiprocessing``'s ``fork`` start method, ``os.fork()``)
  still holds a copy of the write end: the backend closes that copy in the child
  at fork, but one made by other means would otherwise keep the containers until
  the child ends. Right after its start the reaper checks that the owner is still
  there (it may have died already).

A ``disarm`` already in the pipe when the owner dies still wins. To reap, it removes
every container (with its anonymous volumes) labelled ``svcenv.environment=ENV_ID``,
except those labelled ``svcenv.keep=true``, and then the environment's network and
named volumes unless a kept container uses them. The owner may also have written
``owe KIND NAME`` lines: networks and volumes whose removal it could not prove (an
engine shutting down forgets them in memory while they stay on disk); each is removed
by name, and the reap is done only once the engine proves it gone (see
``docker_network.unproven``). If the engine does not answer then
(it stopped, or its host is unreachable), the reaper keeps trying, backing off up to
5 s between attempts, for ``SVCENV_REAPER_PATIENCE`` seconds (default 600), so what
the owner could not remove from a stopped engine goes once the engine is back.

Without ``OWNER_PID`` it waits for ``disarm`` or EOF only. The owner watches its
reaper and starts a new one if it is killed (see ``DockerBackend._arm_reaper``).
It runs in its own session, so a Ctrl-C aimed at the owner's process group does
not reach it, and it imports the Docker SDK only when it has work to do (until
then, the standard library and :mod:`svcenv._util`, which ``python -m`` has loaded
with the ``svcenv`` package already).
"""

from __future__ import annotations

import os
import select
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

PATIENCE_S = 600.0
"""How long the reaper waits for an engine that does not answer (``SVCENV_REAPER_PATIENCE``)."""

POLL_S = 0.5
"""How often the owner is looked at where there are no pidfds."""

DISARM = b"disarm"


def remove_labelled(client: Any, labels: Mapping[str, str], spare_kept: bool = False) -> int:
    """Remove (with their anonymous volumes) the containers carrying every one of ``labels``.

    ``client`` is a Docker SDK client. With ``spare_kept``, containers labelled
    ``svcenv.keep=true`` are left alone. Returns how many were removed.
    """
    import docker.errors

    removed = 0
    filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
    # ignore_removed: a container removed between the listing and its inspection is not an error.
    for container in client.containers.list(all=True, filters=filters, ignore_removed=True):
        if spare_kept and (container.labels or {}).get("svcenv.keep") == "true":
            continue
        try:
            container.remove(force=True, v=True)
            removed += 1
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: another path is removing it already
                raise
    return removed


def reap(env_id: str, owed: Sequence[tuple[str, str]] = ()) -> int:
    """Remove the environment's containers, sparing kept ones, and what is ``owed`` (kind, name);
    return how many containers went. Raises while an owed network or volume is not proven gone."""
    import docker

    from .docker_network import Owed, remove_unused, unproven

    client = docker.from_env(timeout=30)
    try:
        removed = remove_labelled(client, {"svcenv.environment": env_id}, spare_kept=True)
        remove_unused(client, {"svcenv.environment": env_id})  # its network and volumes, unless kept ones use them
        for kind, name in owed:
            why = unproven(client, Owed(kind, name, "its owner could not prove it removed"), env_id)
            if why is not None:
                raise RuntimeError(f"{kind} {name}: {why}")
        return removed
    finally:
        client.close()


def reap_patiently(env_id: str, patience: float, owed: Sequence[tuple[str, str]] = ()) -> int:
    """:func:`reap`, retried (backing off from 0.2 s to 5 s) while the engine does not answer or has
    not proven the ``owed`` gone, for up to ``patience`` seconds; returns how many containers went.
    The last failure propagates."""
    deadline = time.monotonic() + patience
    delay = 0.2
    while True:
        try:
            return reap(env_id, owed)
        except Exception:
            if time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _patience() -> float:
    try:
        return max(0.0, float(os.environ.get("SVCENV_REAPER_PATIENCE", PATIENCE_S)))
    except ValueError:
        return PATIENCE_S


class Owner:
    """The owner process, by pid and start time: :meth:`gone` says whether it has ended."""

    def __init__(self, pid: int, start: str | None) -> None:
        self.pid = pid
        self.start = start
        self.pidfd: int | None = None
        self.child = False
        try:
            self.pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            self.ended = True  # it died before this process looked
            return
        except (AttributeError, OSError):  # no pidfds here (not Linux, Linux < 5.3, a seccomp filter)
            pass
        # Looked at after the pidfd is open: if the owner is still here now, the pidfd is the owner's.
        self.child = os.getppid() == pid
        self.ended = not self.child and not self._alive()
        if self.ended and self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None

    def _alive(self) -> bool:
        """Whether ``pid`` still runs and is the owner (the same start time); a zombie is not alive."""
        from svcenv._util import pid_alive, process_start

        if not pid_alive(self.pid):
            return False
        return self.start is None or process_start(self.pid) == self.start

    def gone(self, readable: list[int]) -> bool:
        """Whether the owner has ended, given what ``select`` found readable (its pidfd, if any)."""
        if self.ended:
            return True
        if self.pidfd is not None:
            self.ended = self.pidfd in readable
        elif self.child:
            self.ended = os.getppid() != self.pid  # orphaned: re-parented to init or a subreaper
        else:
            self.ended = not self._alive()
        return self.ended


def _drain(fd: int, received: bytearray) -> None:
    """Add to ``received`` what is in the pipe now, without waiting for more."""
    os.set_blocking(fd, False)
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # BlockingIOError: nothing more is there
            return
        if not chunk:
            return
        received += chunk


def _disarmed(received: bytes | bytearray) -> bool:
    """Whether the owner's last word is ``disarm``."""
    return received.rstrip().rsplit(b"\n", 1)[-1].strip() == DISARM


def owed_in(received: bytes | bytearray) -> list[tuple[str, str]]:
    """The (kind, name) of each ``owe KIND NAME`` line the owner wrote."""
    owed = []
    for line in received.decode(errors="replace").splitlines():
        word, kind, name = ([*line.split(), "", "", ""])[:3]
        if word == "owe" and kind in ("network", "volume") and name:
            owed.append((kind, name))
    return owed


def wait_for_owner(owner: Owner | None, fd: int = 0, received: bytearray | None = None) -> bool:
    """Block until the owner disarms the reaper (True) or is gone (False): EOF on ``fd``, or its end.

    A ``disarm`` in the pipe when the owner is found gone still counts. What the owner wrote is
    left in ``received``.
    """
    received = bytearray() if received is None else received
    while True:
        if owner is not None and owner.gone([]):
            _drain(fd, received)
            return _disarmed(received)
        watched = [fd] if owner is None or owner.pidfd is None else [fd, owner.pidfd]
        timeout = POLL_S if owner is not None and owner.pidfd is None else None
        try:
            readable = select.select(watched, [], [], timeout)[0]
        except InterruptedError:
            continue
        if fd in readable:
            chunk = os.read(fd, 4096)
            if not chunk:  # EOF: every write end is closed
                return _disarmed(received)
            received += chunk
            if _disarmed(received):
                return True
        if owner is not None:
            owner.gone(readable)


def _owner(argv: list[str]) -> Owner | None:
    if len(argv) < 3:
        return None
    try:
        pid = int(argv[2])
    except ValueError:
        return None
    start = argv[3] if len(argv) > 3 and argv[3] not in ("", "-") else None
    return Owner(pid, start)


def main(argv: list[str]) -> int:
    """Wait for the owner's word or its end; clean up after an end without ``disarm``."""
    env_id = argv[1]
    received = bytearray()
    if wait_for_owner(_owner(argv), sys.stdin.fileno(), received):
        return 0
    try:
        reap_patiently(env_id, _patience(), owed_in(received))
    except Exception:
        return 1  # no one to tell: `python -m svcenv prune` removes what is left
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
