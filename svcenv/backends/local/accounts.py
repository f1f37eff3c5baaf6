"""The account servers run as when svcenv runs as root (Postgres refuses to run as root)."""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import threading
from dataclasses import dataclass
from pathlib import Path

from ..._util import flag
from ...errors import BackendUnavailable
from ._common import _run

log = logging.getLogger("svcenv")

# -- the account servers run as when we are root -----------------------------------------


@dataclass(frozen=True)
class Account:
    """The unprivileged user that runs Postgres and Elasticsearch when svcenv runs as root."""

    name: str
    uid: int
    gid: int


ACCOUNTS = ("postgres", "svcenv")
NOLOGIN = "/usr/sbin/nologin"


def _existing_account() -> Account | None:
    for name in ACCOUNTS:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)
    return None


def _account_problem() -> str | None:
    """Why no account can run Postgres here, or None (no side effects)."""
    if os.geteuid() != 0 or _existing_account() is not None or flag("SVCENV_LOCAL_CREATE_USER"):
        return None
    return (
        "svcenv runs as root, and Postgres and Elasticsearch refuse to run as root, but there is no 'postgres' "
        "or 'svcenv' account to run them as: create one (e.g. `useradd --system svcenv`), "
        "set SVCENV_LOCAL_CREATE_USER=1 to let svcenv create 'svcenv', or run as a normal user"
    )


_account_lock = threading.Lock()


def server_account() -> Account | None:
    """The account to run servers as: None when not root (they run as us)."""
    if os.geteuid() != 0:
        return None
    problem = _account_problem()
    if problem:
        raise BackendUnavailable(f"local: {problem}")
    with _account_lock:
        account = _existing_account()
        if account is None:
            log.info("svcenv: creating system user 'svcenv' to run servers (SVCENV_LOCAL_CREATE_USER=1)")
            with contextlib.suppress(RuntimeError):  # another process may have created it meanwhile
                _run(["useradd", "--system", "--user-group", "--no-create-home", "--shell", NOLOGIN, "svcenv"])
            account = _existing_account()
        if account is None:
            raise BackendUnavailable("local: could not create the system user 'svcenv' (useradd failed)")
        return account


def _chown(path: Path, account: Account | None) -> None:
    if account is not None:
        os.chown(path, account.uid, account.gid)


def _server_env() -> dict[str, str]:
    # libpq/server variables of the caller (PGDATA, PGPORT, ...) must not steer the server.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}
