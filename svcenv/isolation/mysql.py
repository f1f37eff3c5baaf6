"""MySQL/MariaDB isolation: a fresh, empty database per test, created and dropped as root.

MySQL has no template databases, so a fresh database is ``CREATE DATABASE`` plus
the ``setup`` hooks run in it (tables are cheap to create on a tuned test
server). The service's user gets all privileges on it; it is dropped after the
test, failed or not. Names carry a random token, so xdist workers and parallel
sessions on one server never collide.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from ..mysql import MySQLHandle

__all__ = ["MySQLDatabases"]

MySQLSetup = Callable[[Any], None]
"""A callable given a PyMySQL connection to the fresh database (or SQL text)."""


def _ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


class MySQLDatabases:
    """Fresh databases on one MySQL server: :meth:`fresh` creates one, :meth:`drop` removes it."""

    def __init__(self, handle: MySQLHandle, setup: Sequence[MySQLSetup | str] = ()) -> None:
        self.handle = handle
        self.setup = list(setup)
        self.token = secrets.token_hex(3)
        self._counter = itertools.count(1)
        self._admin: Any = None

    def _root(self) -> Any:
        if self._admin is None:
            if not self.handle.root_password:
                raise ConfigurationError(
                    f"mysql service {self.handle.name!r}: fresh databases need the root password, which svcenv "
                    "does not know for this server (an external one); give the user CREATE and DROP rights "
                    "and use its own database instead"
                )
            self._admin = self.handle.connect(
                user="root", password=self.handle.root_password, database=None, autocommit=True
            )
        return self._admin

    def create(self) -> str:
        """Create a new database (the service's user may do anything in it) and run the setup in it."""
        name = f"svcenv_t_{self.token}_{next(self._counter)}"
        with self._root().cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {_ident(name)}")
            if self.handle.user != "root":
                cursor.execute(f"GRANT ALL ON {_ident(name)}.* TO %s@'%%'", (self.handle.user,))
        if self.setup:
            conn = self.handle.connect(name, autocommit=True)
            try:
                for item in self.setup:
                    if callable(item):
                        item(conn)
                    else:
                        with conn.cursor() as cursor:
                            cursor.execute(item)
            finally:
                conn.close()
        return name

    def drop(self, name: str) -> None:
        """Drop a database made by :meth:`create`."""
        with self._root().cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {_ident(name)}")

    @contextmanager
    def fresh(self) -> Iterator[str]:
        """A fresh database for the block; dropped afterwards even if the block fails."""
        name = self.create()
        try:
            yield name
        finally:
            self.drop(name)

    def close(self) -> None:
        """Close the root connection."""
        if self._admin is not None:
            self._admin.close()
            self._admin = None
