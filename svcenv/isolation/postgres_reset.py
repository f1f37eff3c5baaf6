"""Handing a used test database out again: as it is, reset, or replaced by a fresh clone.

A returned database is recycled by the pool's worker under this rule. It is
handed out again only when every change the test could have made is either
proved absent or undone; anything else, and any error on the way, drops it
and clones a new one (what the pool always did). Nothing here trusts the test:
the proof comes from the server's own bookkeeping.

1. **Nobody else is on it.** The test's own connection, if still open and idle
   (an open transaction is rolled back), may serve the next test: svcenv waits
   briefly until the server counts no other backend on the database, and the
   connection gets a new connection's client settings and, once checked,
   ``DISCARD ALL`` (prepared statements, temporary tables, ``SET``, advisory
   locks, ``LISTEN``); the name stays (:func:`keep_connection`). Otherwise svcenv
   closes it, waits until no backend is left, and renames the database to a new
   unique name (``ALTER DATABASE … RENAME``, which itself fails if anyone is
   connected) and connects anew, so a name is handed out again only to the
   connection that had it (with ``SVCENV_POSTGRES_KEEP_CONNECTIONS=0``, never).
   Other sessions still connected (the application's pool, a thread): dropped.
2. **Nothing outside it changed.** Its ``pg_database`` row (owner, ACL,
   connection limit, ...) equals a fresh clone's; no ``ALTER DATABASE … SET``,
   comment or security label on it; no prepared transaction, replication slot
   or subscription on it.
3. **The write counters explain every change.** Postgres counts every row
   inserted, updated or deleted, in every table of the database, the system
   catalogs and TOAST tables included, whether the transaction committed or not
   (``pg_stat_all_tables``, summed in ``pg_stat_database``). A backend flushes
   its counters as it exits and before it leaves ``pg_stat_activity`` (step 1
   waited for that), and the pool's connection flushes its own
   (``pg_stat_force_next_flush``, PostgreSQL 15+) before the counters are read
   and before it records the baseline at hand-out. Any DDL, GRANT,
   COMMENT, TRUNCATE, ANALYZE, temporary table or large object writes catalog
   rows, so a changed catalog counter means: dropped. The per-table deltas must
   add up to the database's deltas (a table that was dropped leaves a gap; the
   shared catalogs, counted apart, are what step 2 covers) and
   ``stats_reset`` must be unchanged (``pg_stat_reset*`` sets it); a crash restart,
   which discards counters, breaks the pool's admin connections, and any
   database handed out before an admin connection failed is dropped.
4. **Sequences** are not counted, so each one's ``last_value``/``is_called`` is
   read and compared with the template's.

5. **Objects the test created are dropped, and the catalogs prove it.** When
   the counters show catalog writes (DDL), the objects that are not the
   template's (relations, indexes, views, sequences, types, functions and
   schemas whose oid the template does not have) are dropped (``RESTRICT``:
   nothing of the template may depend on them). Then every catalog the test
   wrote must hold exactly the template's number of rows and no row version
   younger than the transaction id taken at hand-out: an altered, commented,
   granted or dropped template object, a trigger on a template table, a temp
   schema, statistics from ``ANALYZE``, anything not dropped, fails that, and
   the database is dropped instead.

No changes at all: handed out as it is. Only user tables written (and
sequences moved): those tables, plus every table that references them by
foreign key, are emptied with ``TRUNCATE ONLY`` and the template's rows are
copied back in (triggers off: ``session_replication_role = replica``), and
sequences are set back with ``setval``. Objects created (step 5): dropped
first, in the same transaction. That needs the template's rows in
memory, so it applies when the written tables' template data is small
(:data:`MAX_TEMPLATE_BYTES` in all), none of them has an ``ENABLE ALWAYS``
trigger, and the pool's role is a superuser on PostgreSQL 15 or later.
Otherwise, and when the reset itself fails: dropped.

What a reset database does not share with a fresh clone: physical layout
(``ctid``, relfilenodes, free space, oids of objects created later) and planner
statistics, exactly what any VACUUM or ANALYZE changes too (an index created on
a template table and dropped again leaves ``pg_class.relhasindex`` set, which
the server updates in place, as VACUUM would). Row contents, their order in a sequential scan
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
    "Changes",
    "ResetRefused",
    "TemplateState",
    "drop_database",
    "keep_connection",
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
SELECT pg_stat_get_db_tuples_inserted(d.oid), pg_stat_get_db_tuples_updated(d.oid),
       pg_stat_get_db_tuples_deleted(d.oid), pg_stat_get_db_stat_reset_time(d.oid)::text,
       pg_current_xact_id()::xid::text,
       (SELECT coalesce(json_agg(json_build_array(oid::bigint, i, u, x)), '[]')
          FROM (SELECT c.oid, pg_stat_get_tuples_inserted(c.oid) AS i, pg_stat_get_tuples_updated(c.oid) AS u,
                       pg_stat_get_tuples_deleted(c.oid) AS x
                  FROM pg_class c WHERE c.relkind IN ('r', 't', 'm', 'p') AND NOT c.relisshared) counted
         WHERE i + u + x > 0)
FROM pg_database d WHERE d.datname = current_database()
"""
"""The counters ``pg_stat_database`` and ``pg_stat_all_tables`` show, read by their functions: the views
compute some twenty more per relation (and join ``pg_index``), a cost every recycle paid twice."""
_FLUSH = b"SELECT pg_stat_force_next_flush()"
"""Makes the backend send its pending counters when it next goes idle (PostgreSQL 15+)."""
_BACKENDS = b"SELECT pg_stat_get_db_numbackends(oid) FROM pg_database WHERE datname = %s"
DATABASE_CHECK = b"""
SELECT (to_jsonb(d) - '{oid,datname,datfrozenxid,datminmxid}'::text[])::text,
       pg_stat_get_db_numbackends(d.oid),
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


_NEW_OBJECTS = {
    "pg_class": "SELECT 'rel', c.oid::bigint, c.relkind::text, quote_ident(n.nspname) || '.' || quote_ident(c.relname)"
    " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE c.oid > %(after)s AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp%%'",
    "pg_type": "SELECT 'type', t.oid::bigint, t.typtype::text, quote_ident(n.nspname) || '.' || quote_ident(t.typname)"
    " FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace"
    " WHERE t.oid > %(after)s AND t.typrelid = 0 AND t.typelem = 0 AND t.typtype <> 'm'"
    " AND n.nspname NOT LIKE 'pg\\_temp%%'",
    "pg_proc": "SELECT 'routine', p.oid::bigint, p.prokind::text, p.oid::regprocedure::text"
    " FROM pg_proc p WHERE p.oid > %(after)s",
    "pg_namespace": "SELECT 'schema', n.oid::bigint, '', quote_ident(n.nspname) FROM pg_namespace n"
    " WHERE n.oid > %(after)s AND n.nspname NOT LIKE 'pg\\_temp%%' AND n.nspname NOT LIKE 'pg\\_toast\\_temp%%'",
}
"""Objects of the kinds a reset can drop with an oid above ``after``, by the catalog that lists them:
(kind, oid, sub, name).

Oids come from one counter, so what a test creates has a higher oid than anything of the template (16383,
FirstNormalObjectId - 1, finds them all); the oid indexes make this cheap. An object that got a lower oid
(the counter wrapped) is not dropped, and the proof of step 5 then refuses the database.
"""

_DROPS = (  # (kind, subkinds, statement): an order in which a RESTRICT drop of objects made in one test succeeds
    ("rel", "v", "DROP VIEW IF EXISTS {}"),
    ("rel", "m", "DROP MATERIALIZED VIEW IF EXISTS {}"),
    ("rel", "f", "DROP FOREIGN TABLE IF EXISTS {}"),
    ("rel", "rp", "DROP TABLE IF EXISTS {}"),
    ("rel", "S", "DROP SEQUENCE IF EXISTS {}"),
    ("rel", "iI", "DROP INDEX IF EXISTS {}"),
    ("routine", "fpaw", "DROP ROUTINE IF EXISTS {}"),
    ("rel", "c", "DROP TYPE IF EXISTS {}"),
    ("type", "d", "DROP DOMAIN IF EXISTS {}"),
    ("type", "ebrp", "DROP TYPE IF EXISTS {}"),
    ("schema", "", "DROP SCHEMA IF EXISTS {}"),
)


@dataclass(frozen=True)
class Changes:
    """What a test changed that a reset can take back."""

    tables: set[int]
    """User tables to truncate and refill (with the tables that reference them)."""
    sequences: list[int]
    """Template sequences to set back."""
    catalogs: set[int]
    """System catalogs written (DDL): objects to drop, then the proof of step 5."""

    def __bool__(self) -> bool:
        return bool(self.tables or self.sequences or self.catalogs)


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
    catalogs: dict[int, tuple[str, int]] = field(default_factory=dict)
    """The database's own system catalogs: oid -> (name, rows in the template)."""
    objects: dict[str, frozenset[int]] = field(default_factory=dict)
    """The template's user-made objects of each kind of :data:`_NEW_OBJECTS` (its oids)."""
    max_oid: int = 16383
    """The highest of those oids."""
    client: dict[str, Any] = field(default_factory=dict)
    """A new psycopg connection object's :data:`_CLIENT_ATTRIBUTES` (what a kept connection is set back to)."""

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
        state.client = {attribute: getattr(conn, attribute) for attribute in _CLIENT_ATTRIBUTES}
        catalogs = conn.execute(
            b"SELECT c.oid, c.relname, c.reltoastrelid FROM pg_class c"
            b" WHERE c.relnamespace = 'pg_catalog'::regnamespace AND c.relkind = 'r' AND NOT c.relisshared"
        ).fetchall()
        # The catalogs' own names (relname from pg_class in pg_catalog), not user input.
        union = " UNION ALL ".join(f"SELECT {oid}::oid, count(*) FROM pg_catalog.{n}" for oid, n, _ in catalogs)  # noqa: S608
        counts = conn.execute(union.encode()).fetchall()
        catalog_names = {oid: name for oid, name, _ in catalogs}
        state.catalogs = {oid: (catalog_names[oid], count) for oid, count in counts}
        state.toast_owner.update({toast_oid: oid for oid, _, toast_oid in catalogs if toast_oid})
        found: dict[str, set[int]] = {}
        every = " UNION ALL ".join(_NEW_OBJECTS.values()).encode()
        for kind, oid, _, _ in conn.execute(every, {"after": 16383}).fetchall():
            found.setdefault(kind, set()).add(oid)
        state.objects = {kind: frozenset(oids) for kind, oids in found.items()}
        state.max_oid = max((oid for oids in found.values() for oid in oids), default=16383)
        if names:
            state.sequence_query = " UNION ALL ".join(
                f"SELECT {oid}::oid, last_value, is_called FROM {name}"  # noqa: S608 (quote_ident-ed names)
                for oid, name in names
            ).encode()
            by_oid = dict(names)
            for oid, last_value, is_called in conn.execute(state.sequence_query):
                sequences[oid] = (by_oid[oid], last_value, is_called)
        return state

    def changes(self, conn: psycopg.Connection[Any], baseline: Baseline, flush: bool = False) -> Changes | None:
        """What the test changed, or None when the database cannot be proved resettable.

        ``flush``: ``conn`` is the test's own connection, whose counts are sent first (else they are
        sent when a backend exits).
        """
        if flush:
            conn.execute(_FLUSH)
        return self.changes_from(conn.execute(self.counters_query), baseline)

    @property
    def counters_query(self) -> bytes:
        """The counters, then the sequences: one simple query (one round trip) of two statements."""
        return _SNAPSHOT + (b";" + self.sequence_query if self.sequence_query else b"")

    def changes_from(self, cursor: psycopg.Cursor[Any], baseline: Baseline) -> Changes | None:
        """:meth:`changes` from ``cursor`` at the results of :attr:`counters_query`."""
        row = cursor.fetchone()
        assert row is not None
        now = Baseline.parse(row, baseline.epoch)
        positions = cursor.fetchall() if cursor.nextset() else []
        if now.stats_reset != baseline.stats_reset or set(baseline.relations) - set(now.relations):
            return None
        summed = [0, 0, 0]
        written: set[int] = set()
        catalogs: set[int] = set()
        created = False
        template_relations = self.objects.get("rel", frozenset())
        for rel, counts in now.relations.items():
            before = baseline.relations.get(rel, (0, 0, 0))
            delta = [a - b for a, b in zip(counts, before, strict=True)]
            if any(d < 0 for d in delta):
                return None
            if not any(delta):
                continue
            summed = [s + d for s, d in zip(summed, delta, strict=True)]
            owner = self.toast_owner.get(rel, rel)
            if owner in self.tables:
                written.add(owner)
            elif owner in self.catalogs:
                catalogs.add(owner)  # DDL, GRANT, COMMENT, TRUNCATE, ANALYZE, temp objects, large objects...
            elif owner in template_relations:
                return None  # e.g. a materialized view of the template, refreshed
            else:
                created = True  # a relation the test made: dropped with the rest, or the proof fails
        if created and not catalogs:
            return None
        if not catalogs and summed != [a - b for a, b in zip(now.totals, baseline.totals, strict=True)]:
            return None  # writes to a relation that no longer exists (with DDL, the proof of step 5 says)
        resets: set[int] = set()
        for table in written:
            closure = self.closure[table]
            if closure is None or any(self.tables[t].data is None for t in closure):
                return None
            resets |= closure
        moved = [oid for oid, last_value, is_called in positions if self.sequences[oid][1:] != (last_value, is_called)]
        return Changes(resets, moved, catalogs)

    def reset(self, conn: psycopg.Connection[Any], changes: Changes, boundary: str) -> None:
        """Drop what the test created (and prove the catalogs are the template's), then put the template's
        rows back into the written tables and its values into the moved sequences.

        ``boundary`` is the transaction id taken at hand-out: every row version the test made is younger.
        Raises :class:`ResetRefused` when the proof fails (the database must then be dropped). ``conn``
        (autocommit) has sent its counts when this returns. It is one simple query, one round trip
        (plus one per table whose template rows are copied back).
        """
        import psycopg

        # No user, FK or event triggers fire during the reset.
        statements = ["BEGIN", "SET LOCAL session_replication_role = replica"]
        if changes.catalogs:
            statements.append(self._undo_ddl(changes.catalogs, boundary))
        tables, sequences = sorted(changes.tables), changes.sequences
        if tables:
            statements.append(f"TRUNCATE ONLY {', '.join(self.tables[t].name for t in tables)}")
        filled = [self.tables[t] for t in tables if self.tables[t].data]
        tail = []
        if sequences:
            calls = ", ".join(
                f"setval({oid}::oid, {int(self.sequences[oid][1])}, {bool(self.sequences[oid][2])})"
                for oid in sequences
            )
            tail.append(f"SELECT {calls}")
        tail += ["COMMIT", _FLUSH.decode()]
        try:
            if filled:
                conn.execute(";".join(statements).encode())
                for table in filled:
                    with conn.cursor().copy(f"COPY {table.name} FROM STDIN".encode()) as copy:
                        copy.write(table.data or b"")
                statements = []
            conn.execute(";".join([*statements, *tail]).encode())
        except BaseException as exc:
            with suppress(Exception):
                conn.execute(b"ROLLBACK")
            if isinstance(exc, psycopg.errors.RaiseException) and str(exc).startswith(_REFUSED):
                raise ResetRefused(str(exc)[len(_REFUSED) :].strip()) from None
            raise

    def _undo_ddl(self, catalogs: set[int], boundary: str) -> str:
        """Step 5 of the rule as one ``DO`` block: drop the objects that are not the template's (oid
        above its highest), in :data:`_DROPS` order, then prove ``catalogs`` are the template's, or raise."""
        if not boundary.isdigit():
            raise ResetRefused(f"unexpected transaction id {boundary!r}")
        written = {self.catalogs[oid][0] for oid in catalogs}
        # An object is made with a row in the catalog that lists it: look only where the test wrote.
        parts = [part % {"after": int(self.max_oid)} for catalog, part in _NEW_OBJECTS.items() if catalog in written]
        body = ["DECLARE r record; d text[] := '{}'; bad text; BEGIN"]
        if parts:
            body.append(f"FOR r IN SELECT * FROM ({' UNION ALL '.join(parts)}) o (kind, oid, sub, name) LOOP")  # noqa: S608
            for i, (kind, subs, _) in enumerate(_DROPS, 1):
                body.append(
                    f"IF r.kind = '{kind}' AND strpos('{subs}', r.sub) > 0 THEN"
                    f" d[{i}] := concat_ws(', ', d[{i}], r.name); CONTINUE; END IF;"
                )
            body.append("END LOOP;")
            for i, (_, _, statement) in enumerate(_DROPS, 1):
                body.append(f"IF d[{i}] IS NOT NULL THEN EXECUTE '{statement.format('')}' || d[{i}]; END IF;")
        counts = " UNION ALL ".join(
            f"SELECT '{self.catalogs[oid][0]}' AS c, {int(self.catalogs[oid][1])} AS e, count(*) AS n,"  # noqa: S608
            f" count(*) FILTER (WHERE age(xmin) <= age('{boundary}'::xid)) AS y FROM pg_catalog.{self.catalogs[oid][0]}"
            for oid in sorted(catalogs)
        )
        said = "format('%s: %s rows (%s in the template), %s made by the test', c, n, e, y)"
        body.append(f"SELECT string_agg({said}, '; ') INTO bad FROM ({counts}) p WHERE y > 0 OR n <> e;")  # noqa: S608
        body.append(f"IF bad IS NOT NULL THEN RAISE EXCEPTION '{_REFUSED} %', bad; END IF; END")
        return "DO $svcenv$ " + " ".join(body) + " $svcenv$"


_REFUSED = "svcenv: reset refused:"
"""How the ``DO`` block of :meth:`TemplateState._undo_ddl` begins the error it raises when the proof fails."""


class ResetRefused(Exception):
    """The catalogs of a returned database could not be proved to be the template's."""


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
    xid: str = "0"
    """A transaction id taken with the counters: every row version made after them is younger."""

    @classmethod
    def take(cls, conn: psycopg.Connection[Any], epoch: int, flush: bool = True) -> Baseline:
        """The counters now; ``flush`` first sends this connection's own pending counts (PostgreSQL 15+).

        The flush happens when the backend goes idle after that statement, before it answers, so the
        next statement sees it.
        """
        if flush:
            conn.execute(_FLUSH)
        row = conn.execute(_SNAPSHOT).fetchone()
        assert row is not None
        return cls.parse(row, epoch)

    @classmethod
    def parse(cls, row: Any, epoch: int) -> Baseline:
        """A baseline from a row of :data:`_SNAPSHOT`."""
        ins, upd, dele, stats_reset, xid, relations = row
        return cls(epoch, (ins, upd, dele), stats_reset, {r[0]: (r[1], r[2], r[3]) for r in relations}, xid)


def recycle(
    admin: psycopg.Connection[Any],
    handle: PostgresHandle,
    state: TemplateState,
    baseline: Baseline,
    name: str,
    renamed: str,
    used: psycopg.Connection[Any] | None = None,
) -> tuple[str, psycopg.Connection[Any], Baseline, str] | str:
    """Apply the module's rule to the returned database ``name``.

    Returns (name, an open connection to it, its baseline, ``"untouched"``,
    ``"reset"`` or ``"undone"`` (objects the test created were dropped)) when it
    may be handed out again, else the name to drop it by (``name``, or ``renamed``
    once it was renamed). ``used``, the connection the test had, serves the next
    test when :func:`keep_connection` allows (the name stays: nobody else can be
    on it); else it is closed, and the database is renamed and reached anew.
    """
    if used is not None:
        if keep_connection(used, state):
            done = _ready_again(used, state, baseline, admin)
            return name if done is None else (name, used, *done)
        used.close()
    try:
        _wait_for_backends(admin, name, 0)  # still someone on it after that: the check below says so
        row = admin.execute(DATABASE_CHECK, (name,)).fetchone()
        if row is None or row[1] or row[2] or row[0] != state.signature:
            return name
        admin.execute(f"ALTER DATABASE {ident(name)} RENAME TO {ident(renamed)}".encode())
    except Exception:  # still in use (then the drop forces it), or the server failed
        return name
    try:
        conn = handle.connect(renamed, autocommit=True)
    except Exception:
        return renamed
    done = _ready_again(conn, state, baseline)
    return renamed if done is None else (renamed, conn, *done)


def _ready_again(
    conn: psycopg.Connection[Any],
    state: TemplateState,
    baseline: Baseline,
    admin: psycopg.Connection[Any] | None = None,
) -> tuple[Baseline, str] | None:
    """Steps 2-5 on ``conn`` (autocommit): the new baseline and the outcome, or None (``conn`` closed).

    With ``admin``, ``conn`` is the test's own connection (:func:`keep_connection`):
    steps 1 and 2 are checked on it, in the query that reads the counters, and its
    session state goes with ``DISCARD ALL``. Else :func:`recycle` checked them.
    """
    try:
        found = state.changes(conn, baseline) if admin is None else _changes_if_alone(admin, conn, state, baseline)
        if found is None:
            conn.close()
            return None
        if found:
            state.reset(conn, found, baseline.xid)  # its counts are sent when it returns
        if admin is not None:
            conn.execute(b"DISCARD ALL")  # prepared statements, temp tables, SET, advisory locks, LISTEN
        if found:
            baseline = Baseline.take(conn, baseline.epoch, flush=False)
        conn.autocommit = False
        return baseline, ("undone" if found.catalogs else "reset") if found else "untouched"
    except Exception as exc:
        log.debug("svcenv: could not reset %s (%s); it is dropped", conn.info.dbname, exc)
        conn.close()
        return None


_OWN_DATABASE_CHECK = DATABASE_CHECK.replace(b"= %s", b"= current_database()")


def _changes_if_alone(
    admin: psycopg.Connection[Any], conn: psycopg.Connection[Any], state: TemplateState, baseline: Baseline
) -> Changes | None:
    """:meth:`TemplateState.changes` on the test's own connection, if it is the only one on the database
    (others are waited for briefly) and steps 1-2 hold; else None."""
    name = conn.info.dbname
    for attempt in range(2):
        # The check comes first: once it counts one backend (this), the others have sent their counts.
        cursor = conn.execute(_OWN_DATABASE_CHECK + b";" + state.counters_query)
        check = cursor.fetchone()
        if check is None or check[2] or check[0] != state.signature:
            return None
        if check[1] == 1:
            cursor.nextset()
            return state.changes_from(cursor, baseline)
        if attempt:
            return None
        _wait_for_backends(admin, name, 1)
    return None


def _wait_for_backends(admin: psycopg.Connection[Any], name: str, at_most: int) -> None:
    """Wait briefly (0.5 s) until at most ``at_most`` backends are on database ``name``: those of
    connections that were just closed are still exiting. It does not say whether they went."""
    from .._util import NotYet, poll

    def few_enough() -> None:
        row = admin.execute(_BACKENDS, (name,)).fetchone()
        if row is not None and row[0] > at_most:
            raise NotYet(f"{row[0] - at_most} more backends on {name}")

    with suppress(NotYet):
        poll(few_enough, 0.5, first=0.001, cap=0.002)


_CLIENT_ATTRIBUTES = (
    "isolation_level",
    "read_only",
    "deferrable",
    "prepare_threshold",
    "prepared_max",
    "row_factory",
    "cursor_factory",
    "server_cursor_factory",
)
"""What a test may set on a psycopg connection object that :func:`keep_connection` sets back."""


def keep_connection(conn: psycopg.Connection[Any], state: TemplateState) -> bool:
    """Whether the test's connection ``conn`` may serve the next test; if so, it is set back on the client.

    Only when it is still open and not in pipeline mode or a ``COPY``; an open
    transaction is rolled back. On the client, the transaction settings, row and
    cursor factories, adapters and notice/notify handlers become a new
    connection's. The server side (nobody else on the database, ``DISCARD ALL``)
    comes with the counters (:func:`recycle`).
    """
    from psycopg import pq

    if not state.client or conn.closed or conn.broken or conn.pgconn.pipeline_status != pq.PipelineStatus.OFF:
        return False
    if not all(hasattr(conn, a) for a in ("_adapters", "_notice_handlers", "_notify_handlers")):
        return False  # a psycopg whose client state svcenv does not know how to set back
    try:
        if conn.info.transaction_status == pq.TransactionStatus.ACTIVE:
            return False
        for attribute, value in state.client.items():  # first: the statements below use them
            if getattr(conn, attribute) != value:
                setattr(conn, attribute, value)
        conn._adapters = None  # made anew from the global map at first use
        conn._notice_handlers.clear()
        conn._notify_handlers.clear()
        # One round trip: end the test's transaction, and have its counts sent when the backend idles.
        if conn.info.transaction_status == pq.TransactionStatus.IDLE:
            conn.autocommit = True  # before: else psycopg would open a transaction for the flush
            conn.execute(_FLUSH)
        else:
            conn.execute(b"ROLLBACK;" + _FLUSH)  # psycopg sends no BEGIN while one is open
            conn.autocommit = True
    except Exception:
        return False
    return True


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
