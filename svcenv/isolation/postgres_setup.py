"""How a Postgres template is prepared: a callable, a ``.sql`` file, SQL text or ``module:function``."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from ..errors import ConfigurationError

if TYPE_CHECKING:
    import psycopg

__all__ = ["Setup", "ident", "run_setup"]

Setup: TypeAlias = "Callable[[psycopg.Connection[Any]], None] | str | Path | None"
"""How a template is prepared: a callable given a connection, a ``.sql`` file, SQL text, or
``"package.module:function"``."""


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _load_callable(spec: str) -> Callable[[psycopg.Connection[Any]], None]:
    import importlib

    module_name, _, attr = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"postgres template setup {spec!r} cannot be imported: {exc}") from exc
    if not callable(target):
        raise ConfigurationError(f"postgres template setup {spec!r} is not callable")
    return target  # type: ignore[no-any-return]


def run_setup(conn: psycopg.Connection[Any], setup: Setup) -> None:
    """Apply ``setup`` (callable, SQL file, SQL text or ``module:function``) on ``conn``."""
    if setup is None:
        return
    if callable(setup):
        setup(conn)
        return
    text = str(setup)
    path = Path(text)
    if isinstance(setup, Path) or (text.endswith(".sql") and "\n" not in text):
        if not path.is_file():
            raise ConfigurationError(f"postgres template setup file {text!r} does not exist")
        conn.execute(path.read_text(encoding="utf-8").encode())
    elif re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*", text):
        _load_callable(text)(conn)
    else:
        conn.execute(text.encode())
