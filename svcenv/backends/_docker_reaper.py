"""Removes an environment's containers when its owner dies, even by SIGKILL (no Ryuk image needed).

Started by the Docker backend as ``python -m svcenv.backends._docker_reaper ENV_ID``
with its stdin the read end of a pipe whose write end only the owner holds. It
sleeps in ``read()``. The owner writes ``disarm`` on a clean stop (or when it
hands the services over, e.g. ``--svcenv-keep``), and the reaper exits without
touching anything. If the read ends at EOF instead, the owner is gone: the
reaper removes every container (with its anonymous volumes) labelled
``svcenv.environment=ENV_ID``, except those labelled ``svcenv.keep=true``.

It runs in its own session, so a Ctrl-C aimed at the owner's process group
does not reach it, and it imports the Docker SDK only when it has work to do.
"""

from __future__ import annotations

import sys


def reap(env_id: str) -> int:
    """Remove the environment's containers; return how many."""
    import docker
    import docker.errors

    client = docker.from_env(timeout=30)
    removed = 0
    try:
        for container in client.containers.list(all=True, filters={"label": f"svcenv.environment={env_id}"}):
            if (container.labels or {}).get("svcenv.keep") == "true":
                continue
            try:
                container.remove(force=True, v=True)
                removed += 1
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: another path is removing it already
                    raise
    finally:
        client.close()
    return removed


def main(argv: list[str]) -> int:
    """Wait for the owner's word or its death; clean up after a death."""
    env_id = argv[1]
    message = sys.stdin.buffer.read()  # returns at EOF: the owner closed the pipe or died
    if message.strip() == b"disarm":
        return 0
    reap(env_id)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
