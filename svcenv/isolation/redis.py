"""Redis isolation: a logical database per xdist worker, emptied with ``FLUSHDB`` (never ``FLUSHALL``)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ..errors import ConfigurationError

if TYPE_CHECKING:
    import redis

    from ..handles import RedisHandle

__all__ = ["claim_redis_db", "flush_redis", "flush_redis_db", "redis_db_for_worker", "subscribers_by_db"]


def redis_db_for_worker(worker: str | None = None, databases: int = 16) -> int:
    """Logical db for an xdist worker: ``main``/``gw0`` -> 1, ``gw1`` -> 2, ... (0 is left to the app)."""
    from . import worker_id

    worker = worker or worker_id()
    match = re.fullmatch(r"gw(\d+)", worker)
    index = int(match.group(1)) + 1 if match else 1
    if index >= databases:
        raise ConfigurationError(
            f"redis has {databases} logical databases, not enough for xdist worker {worker}; "
            "run fewer workers or raise redis' `databases` setting"
        )
    return index


_claimed: set[tuple[str, int]] = set()


def claim_redis_db(client: redis.Redis, backend: str, url: str) -> None:
    """Before svcenv flushes a db on a server it did not start, make sure the db was empty.

    svcenv never flushes data it did not create: on an external server it uses
    a logical db only if that db holds nothing when svcenv first uses it.
    """
    db = int(client.connection_pool.connection_kwargs.get("db", 0))
    if backend != "external" or (url, db) in _claimed:
        return
    keys = int(client.dbsize())
    if keys:
        raise ConfigurationError(
            f"redis: logical db {db} of the external server already holds {keys} keys that svcenv did not "
            "create, and svcenv flushes that db between tests. Give svcenv a server or db it may empty "
            "(xdist worker N uses db N+1)."
        )
    _claimed.add((url, db))


def flush_redis(client: redis.Redis) -> None:
    """``FLUSHDB`` on the client's own logical database (never ``FLUSHALL``)."""
    client.flushdb()


def subscribers_by_db(client: redis.Redis) -> dict[int, int]:
    """How many clients of each logical database are subscribed to a channel, pattern or shard channel.

    Pub/sub is the one thing logical databases do not separate: a message published
    from db 2 reaches a subscriber that connected to db 1. Subscribers in two
    databases at once mean two xdist workers (or a worker and the app on db 0) can
    hear each other.
    """
    found: dict[int, int] = {}
    for entry in client.client_list():
        if any(int(entry.get(kind, 0) or 0) for kind in ("sub", "psub", "ssub")):
            db = int(entry.get("db", 0))
            found[db] = found.get(db, 0) + 1
    return found


def flush_redis_db(handle: RedisHandle, db: int) -> dict[int, int]:
    """``FLUSHDB`` of logical database ``db``, on a connection of its own that says ``SELECT db`` first.

    Never through a client the code under test used: it may have switched that
    client's connections to another db (``SELECT 0``), whose data is not ours.
    Returns :func:`subscribers_by_db` as seen just before (asked on the same connection).
    """
    client = handle.client(db=db, single_connection_client=True)
    try:
        subscribers = subscribers_by_db(client)
        client.flushdb()
        return subscribers
    finally:
        client.close()
