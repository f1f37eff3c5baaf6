"""Handing a used test database out again: as it is, reset, or replaced by a fresh clone.

A returned database is recycled by the pool's worker under this rule. It is
handed out again only when every change the test could have made is either
proved absent or undone; anything else, and any error on the way, drops it
and clones a new one (what the pool always did). Nothing here trusts the test:
the proof comes from the server's own bookkeeping.

1. **Nobody is left on it.** svcenv closes the test's connection (an open
   transaction on it is rolled back by that), then waits briefly until
   ``pg_stat_activity`` shows no backend on the database. Other sessions still
   connected (the application's pool, a thread): dropped. Then the database is
   renamed to a new unique name (``ALTER DATABASE … RENAME``, which itself fails
   if anyone is connected), so no name is ever handed out twice and a stale
   connection string cannot reach the next test's database.
2. **Nothing outside it changed.** Its ``pg_database`` row (owner, ACL,
   connection limit, ...) equals a fresh clone's; no ``ALTER DATABASE … SET``,
   comment or security label on it; no prepared transaction, replication slot
   or subscription on it.
3. **The write counters explain every change.** Postgres counts every row
   inserted, updated or deleted, in every table of the database, the system
   catalogs and TOAST tables included, whether the transaction committed or not
   (``pg_stat_all_tables``, summed in ``pg_stat_database``). A backend flushes
   its counters as it exits and before it leaves ``pg_stat_activity`` (step 1
   waited for that), and the pool flushes its own (``pg_stat_force_next_flush``,
   PostgreSQL 15+) before it records the baseline at hand-out. Any DDL, GRANT,
   COMMENT, TRUNCATE, ANALYZE, temporary table or large object writes catalog
   rows, so a changed catalog counter means: dropped. The per-table deltas must
   add up to the database's deltas (a table that was dropped leaves a gap; the
   shared catalogs, counted apart, are what step 2 covers) and
   ``stats_reset`` must be unchanged (``pg_stat_reset*`` sets it); a crash restart,
   which discards counters, breaks the pool's admin connections, and any
   database handed out before an admin connection failed is dropped.
4. **Sequences** are not counted, so each one's ``last_value``/``is_called`` is
   read and compared with the template's.

No changes at all: handed out as it is. Only user tables written (and
sequences moved): those tables, plus every table that references them by
foreign key, are emptied with ``TRUNCATE ONLY`` and the template's rows are
copied back in (triggers off: ``session_replication_role = replica``), and
sequences are set back with ``setval``. That needs the template's rows in
memory, so it applies when the written tables' template data is small
(:data:`MAX_TEMPLATE_BYTES` in all), none of them has an ``ENABLE ALWAYS``
trigger, and the pool's role is a superuser on PostgreSQL 15 or later.
Otherwise, and when the reset itself fails: dropped.

What a reset database does not share with a fresh clone: physical layout
(``ctid``, relfilenodes, free space) and planner statistics, exactly what any
VACUUM or ANALYZE changes too. Row contents, their order in a sequential scan
of an unmodified table, the schema, ACLs and sequences are the template's.

``SVCENV_POSTGRES_RESET=0`` turns recycling off (every database is dropped and
a fresh clone made), as does ``PostgresTemplate(reset=False)``.
"""

from __future__ import annotations

import logging
import os
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .postgres_setup import ident

if TYPE_CHECKING:
    import psycopg

    from ..handles import PostgresHandle

__all__ = [
    "MAX_TEMPLATE_BYTES",
    "RESET_ENV",
    "Baseline",
    "TemplateState",
    "drop_database",
    "recycle",
    "reset_enabled",
    "rollback_prepared",
]

RESET_ENV = "SVCENV_POSTGRES_RESET"
MAX_TEMPLATE_BYTES = 1 << 20
"""At most this much template data (``COPY`` text of all tables) is kept in memory for resets."""

log = logging.getLogger("svcenv")

_USER_RELATIONS = """
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
"""
_SNAPSHOT = b"""
SELECT d.tup_inserted, d.tup_updated, d.tup_deleted, d.stats_reset::text,
       (SELECT coalesce(json_agg(json_build_array(s.relid::bigint, n_tup_ins, n_tup_upd, n_tup_del)), '[]')
          FROM pg_stat_all_tables s JOIN pg_class c ON c.oid = s.relid
         WHERE n_tup_ins + n_tup_upd + n_tup_del > 0 AND NOT c.relisshared)
FROM pg_stat_database d WHERE d.datid = (SELECT oid FROM pg_database WHERE datname = current_database())
"""
DATABASE_CHECK = b"""
SELECT (to_jsonb(d) - '{oid,datname,datfrozenxid,datminmxid}'::text[])::text,
       (SELECT count(*) FROM pg_stat_activity a WHERE a.datid = d.oid),
       EXISTS (SELECT FROM pg_db_role_setting s WHERE s.setdatabase = d.oid)
       OR EXISTS (SELECT FROM pg_shdescription s WHERE s.objoid = d.oid AND s.classoid = 'pg_database'::regclass)
       OR EXISTS (SELECT FROM pg_shseclabel s WHERE s.objoid = d.oid AND s.classoid = 'pg_database'::regclass)
       OR EXISTS (SELECT FROM pg_prepared_xacts p WHERE p.database = d.datname)
       OR EXISTS (SELECT FROM pg_replication_slots r WHERE r.datoid = d.oid)
       OR EXISTS (SELECT FROM pg_subscription s WHERE s.subdbid = d.oid)
FROM pg_database d WHERE d.datname = %s
"""
"""(signature of the ``pg_database`` row, backends on it, whether anything outside it refers to it)."""


def reset_enabled(flag: bool | None) -> bool:
    """``flag``, else ``$SVCENV_POSTGRES_RESET`` (on unless ``0``/``false``/``no``/``off``)."""
    if flag is not None:
        return flag
    return os.environ.get(RESET_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


@dataclass(frozen=True)
class Table:
    name: str  # schema-qualified and quoted
    data: bytes | None  # the template's rows as COPY text; None: too large or not resettable


@dataclass
class TemplateState:
    """What a reset needs to know about the template, read once from a pristine clone."""

    signature: str
    tables: dict[int, Table]
    toast_owner: dict[int, int]
    closure: dict[int, frozenset[int] | None]  # table -> it and every table referencing it (None: unresettable)
    sequences: dict[int, tuple[str, int, bool]]  # oid -> (name, last_value, is_called)
    sequence_query: bytes | None = None

    @classmethod
    def capture(cls, conn: psycopg.Connection[Any], signature: str) -> TemplateState | None:
        """Read the template's state from ``conn`` (autocommit, on a clone nobody has used); None: no resets."""
        row = conn.execute(
            b"SELECT current_setting('server_version_num')::int >= 150000 AND rolsuper"
            b" FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        if not row or not row[0]:
            log.debug("svcenv: database resets need a superuser on PostgreSQL 15+; every database is re-cloned")
            return None
        tables: dict[int, Table] = {}
        toast: dict[int, int] = {}
        budget = MAX_TEMPLATE_BYTES
        query = (
            "SELECT c.oid, quote_ident(n.nspname) || '.' || quote_ident(c.relname), c.reltoastrelid,"  # noqa: S608
            " pg_table_size(c.oid), EXISTS (SELECT FROM pg_trigger t WHERE t.tgrelid = c.oid AND t.tgenabled = 'A')"
            f" {_USER_RELATIONS} AND c.relkind = 'r' ORDER BY c.oid"
        )
        for oid, name, toast_oid, size, always in conn.execute(query.encode()).fetchall():
            data: bytes | None = None
            if not always and size <= budget:
                with conn.cursor().copy(f"COPY {name} TO STDOUT".encode()) as copy:
                    data = b"".join(bytes(chunk) for chunk in copy)
                if len(data) > budget:
                    data = None
                else:
                    budget -= len(data)
            tables[oid] = Table(name, data)
            if toast_oid:
                toast[toast_oid] = oid
        referencing: dict[int, set[int]] = {}
        for child, parent in conn.execute(b"SELECT conrelid, confrelid FROM pg_constraint WHERE contype = 'f'"):
            referencing.setdefault(parent, set()).add(child)
        sequences: dict[int, tuple[str, int, bool]] = {}
        names = conn.execute(
            f"SELECT c.oid, quote_ident(n.nspname) || '.' || quote_ident(c.relname) {_USER_RELATIONS}"
            " AND c.relkind = 'S' ORDER BY c.oid".encode()
        ).fetchall()
        state = cls(signature, tables, toast, {t: _closure(t, referencing, tables) for t in tables}, sequences)
        if names:
            state.sequence_query = " UNION ALL ".join(
                f"SELECT {oid}::oid, last_value, is_called FROM {name}"  # noqa: S608 (quote_ident-ed names)
                for oid, name in names
            ).encode()
            by_oid = dict(names)
            for oid, last_value, is_called in conn.execute(state.sequence_query):
                sequences[oid] = (by_oid[oid], last_value, is_called)
        return state

    def changes(self, conn: psycopg.Connection[Any], baseline: Baseline) -> tuple[set[int], list[int]] | None:
        """(tables to reset, sequences to set back), or None when the database cannot be proved resettable."""
        now = Baseline.take(conn, baseline.epoch, flush=False)
        if now.stats_reset != baseline.stats_reset or set(baseline.relations) - set(now.relations):
            return None
        summed = [0, 0, 0]
        written: set[int] = set()
        for rel, counts in now.relations.items():
            before = baseline.relations.get(rel, (0, 0, 0))
            delta = [a - b for a, b in zip(counts, before, strict=True)]
            if any(d < 0 for d in delta):
                return None
            if not any(delta):
                continue
            summed = [s + d for s, d in zip(summed, delta, strict=True)]
            owner = self.toast_owner.get(rel, rel)
            if owner not in self.tables:
                return None  # a catalog (DDL, GRANT, TRUNCATE, temp objects, large objects...) or unknown relation
            written.add(owner)
        if summed != [a - b for a, b in zip(now.totals, baseline.totals, strict=True)]:
            return None  # writes to a relation that no longer exists
        resets: set[int] = set()
        for table in written:
            closure = self.closure[table]
            if closure is None or any(self.tables[t].data is None for t in closure):
                return None
            resets |= closure
        moved: list[int] = []
        if self.sequence_query is not None:
            for oid, last_value, is_called in conn.execute(self.sequence_query):
                if self.sequences[oid][1:] != (last_value, is_called):
                    moved.append(oid)
        return resets, moved

    def reset(self, conn: psycopg.Connection[Any], tables: set[int], sequences: list[int]) -> None:
        """Put the template's rows back into ``tables`` and its values into ``sequences``."""
        with conn.transaction():
            conn.execute(b"SET LOCAL session_replication_role = replica")  # no user or FK triggers fire
            if tables:
                conn.execute(f"TRUNCATE ONLY {', '.join(self.tables[t].name for t in sorted(tables))}".encode())
            for oid in sorted(tables):
                table = self.tables[oid]
                if table.data:
                    with conn.cursor().copy(f"COPY {table.name} FROM STDIN".encode()) as copy:
                        copy.write(table.data)
            if sequences:
                calls = ", ".join(f"setval({oid}::oid, %s, %s)" for oid in sequences)
                args = [v for oid in sequences for v in self.sequences[oid][1:]]
                conn.execute(f"SELECT {calls}".encode(), args)


def _closure(table: int, referencing: dict[int, set[int]], tables: dict[int, Table]) -> frozenset[int] | None:
    """``table`` and every table that references it by foreign key, transitively (TRUNCATE needs them all)."""
    seen = {table}
    todo = [table]
    while todo:
        for child in referencing.get(todo.pop(), ()):
            if child not in tables:
                return None  # e.g. a partitioned table, which TRUNCATE ONLY refuses
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return frozenset(seen)


@dataclass
class Baseline:
    """The write counters of a database as it was handed out."""

    epoch: int
    totals: tuple[int, int, int]
    stats_reset: str | None
    relations: dict[int, tuple[int, int, int]] = field(default_factory=dict)

    @classmethod
    def take(cls, conn: psycopg.Connection[Any], epoch: int, flush: bool = True) -> Baseline:
        """The counters now; ``flush`` first sends this connection's own pending counts (PostgreSQL 15+).

        The flush happens when the backend goes idle after that statement, before it answers, so the
        next statement sees it.
        """
        if flush:
            conn.execute(b"SELECT pg_stat_force_next_flush()")
        row = conn.execute(_SNAPSHOT).fetchone()
        assert row is not None
        ins, upd, dele, stats_reset, relations = row
        return cls(epoch, (ins, upd, dele), stats_reset, {r[0]: (r[1], r[2], r[3]) for r in relations})


def recycle(
    admin: psycopg.Connection[Any],
    handle: PostgresHandle,
    state: TemplateState,
    baseline: Baseline,
    name: str,
    renamed: str,
) -> tuple[str, psycopg.Connection[Any], Baseline, str] | str:
    """Apply the module's rule to the returned database ``name``.

    Returns (new name, an open connection to it, its baseline, ``"untouched"`` or
    ``"reset"``) when it may be handed out again as ``renamed``, else the name to drop
    it by (``name``, or ``renamed`` once it was renamed).
    """
    from .._util import NotYet, poll

    def nobody_on_it() -> tuple[Any, ...] | None:
        row = admin.execute(DATABASE_CHECK, (name,)).fetchone()
        if row is not None and row[1]:
            raise NotYet(f"{row[1]} backends still on {name}")
        return row

    try:
        row = poll(nobody_on_it, 0.5, first=0.001, cap=0.002)
        if row is None or row[2] or row[0] != state.signature:
            return name
        admin.execute(f"ALTER DATABASE {ident(name)} RENAME TO {ident(renamed)}".encode())
    except Exception:  # still in use (then the drop forces it), or the server failed
        return name
    try:
        conn = handle.connect(renamed, autocommit=True)
    except Exception:
        return renamed
    try:
        found = state.changes(conn, baseline)
        if found is None:
            conn.close()
            return renamed
        tables, sequences = found
        if tables or sequences:
            state.reset(conn, tables, sequences)
            baseline = Baseline.take(conn, baseline.epoch)
        conn.autocommit = False
        return renamed, conn, baseline, "reset" if tables or sequences else "untouched"
    except Exception as exc:
        log.debug("svcenv: could not reset %s (%s); it is dropped", renamed, exc)
        conn.close()
        return renamed


def drop_database(admin: psycopg.Connection[Any], name: str, patience: float = 2.0) -> None:
    """``DROP DATABASE … WITH (FORCE)``, once the backends of just-closed connections are gone.

    Postgres makes a drop wait in 100 ms steps for backends that are still
    exiting; polling pg_stat_activity first is much finer-grained.
    """
    from .._util import NotYet, poll

    query = b"SELECT count(*) FROM pg_stat_activity WHERE datname = %s"

    def backends_gone() -> None:
        row = admin.execute(query, (name,)).fetchone()
        if row and row[0] != 0:
            raise NotYet(f"{row[0]} backends still on {name}")

    with suppress(NotYet):  # out of patience: FORCE terminates the rest
        poll(backends_gone, patience, first=0.002, cap=0.002)
    admin.execute(f"DROP DATABASE IF EXISTS {ident(name)} WITH (FORCE)".encode())


def rollback_prepared(admin: psycopg.Connection[Any], handle: PostgresHandle, name: str) -> bool:
    """Roll back the prepared transactions a test left on ``name`` (they block its drop); whether there were any."""
    from psycopg import sql

    gids = admin.execute(b"SELECT gid FROM pg_prepared_xacts WHERE database = %s", (name,)).fetchall()
    if gids:
        with handle.connect(name, autocommit=True) as conn:
            for (gid,) in gids:
                conn.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))
    return bool(gids)
