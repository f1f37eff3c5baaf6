"""Removes an environment's containers when its owner dies, even by SIGKILL (no Ryuk image needed).

Started by the Docker backend as ``python -m svcenv.backends._docker_reaper ENV_ID``
with its stdin the read end of a pipe whose write end only the owner holds. It
sleeps in ``read()``. The owner writes ``disarm`` on a clean stop (or when it
hands the services over, e.g. ``--svcenv-keep``), and the reaper exits without
touching anything. If the read ends at EOF instead, the owner is gone: the
reaper removes every container (with its anonymous volumes) labelled
``svcenv.environment=ENV_ID``, except those labelled ``svcenv.keep=true``, and
then the environment's network and named volumes unless a kept container uses them.
If the engine does not answer then (it stopped, or its host is unreachable), the
reaper keeps trying, backing off up to 5 s between attempts, for
``SVCENV_REAPER_PATIENCE`` seconds (default 600), so what the owner could not
remove from a stopped engine goes once the engine is back.

It runs in its own session, so a Ctrl-C aimed at the owner's process group
does not reach it, and it imports the Docker SDK only when it has work to do.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from typing import Any

PATIENCE_S = 600.0
"""How long the reaper waits for an engine that does not answer (``SVCENV_REAPER_PATIENCE``)."""


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


def reap(env_id: str) -> int:
    """Remove the environment's containers, sparing kept ones; return how many."""
    import docker

    from .docker_network import remove_unused

    client = docker.from_env(timeout=30)
    try:
        removed = remove_labelled(client, {"svcenv.environment": env_id}, spare_kept=True)
        remove_unused(client, {"svcenv.environment": env_id})  # its network and volumes, unless kept ones use them
        return removed
    finally:
        client.close()


def reap_patiently(env_id: str, patience: float) -> int:
    """:func:`reap`, retried (backing off from 0.2 s to 5 s) while the engine does not answer, for up
    to ``patience`` seconds; returns how many containers went. The last failure propagates."""
    deadline = time.monotonic() + patience
    delay = 0.2
    while True:
        try:
            return reap(env_id)
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


def main(argv: list[str]) -> int:
    """Wait for the owner's word or its death; clean up after a death."""
    env_id = argv[1]
    message = sys.stdin.buffer.read()  # returns at EOF: the owner closed the pipe or died
    if message.strip() == b"disarm":
        return 0
    try:
        reap_patiently(env_id, _patience())
    except Exception:
        return 1  # no one to tell: `python -m svcenv prune` removes what is left
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
