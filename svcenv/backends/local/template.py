"""The Postgres template data directory: ``initdb`` once per configuration, copied per instance."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ..._util import file_lock
from ._common import COMMAND_TIMEOUT_S, INITDB_ARGS, MARKER, TEMPLATE_LAYOUT, TMP_PREFIX, _run
from .accounts import Account, _chown, _server_env
from .discovery import PostgresInstall
from .places import _write_marker, cache_root, tmp_base

log = logging.getLogger("svcenv")

# -- the Postgres template ----------------------------------------------------------------


def _copy_tree(source: Path, target: Path, account: Account | None) -> None:
    """Copy a data directory, keeping modes and (as root) owners."""
    if shutil.which("cp"):
        _run(["cp", "-a", "--", str(source), str(target)], timeout=COMMAND_TIMEOUT_S)
        return
    shutil.copytree(source, target, symlinks=True)
    if account is not None:
        for root, dirs, files in os.walk(target):
            for name in (".", *dirs, *files):
                os.lchown(os.path.join(root, name), account.uid, account.gid)


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def publish(data: Path, final: Path, account: Account | None, info: dict[str, str]) -> None:
    """Copy a built data directory to ``final`` (with a marker saying what it is) in one rename."""
    staging = final.with_name(f"{final.name}.build-{os.getpid()}")
    staging.mkdir()
    _copy_tree(data, staging / "data", account)
    (staging / MARKER).write_text(json.dumps(info))
    os.sync()  # the rename below must not publish a template whose files are not on disk
    os.rename(staging, final)


def template_key(layout: int, account: Account | None, **material: object) -> str:
    """A short hash of what a template data directory depends on (``material``), its layout and owner."""
    key = {"layout": layout, "owner": account.uid if account else os.geteuid(), **material}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def _template_key(install: PostgresInstall, account: Account | None, user: str, dbname: str) -> str:
    bindir = str(install.bindir.resolve())
    material = {"bindir": bindir, "version": install.version, "user": user, "dbname": dbname, "initdb": INITDB_ARGS}
    return template_key(TEMPLATE_LAYOUT, account, **material)


def _initdb(install: PostgresInstall, account: Account | None, data: Path, user: str, dbname: str) -> None:
    """Run initdb into ``data`` and create ``dbname`` in single-user mode, as ``account``."""
    env, cwd = _server_env(), data.parent
    initdb = [str(install.initdb), "-D", str(data), f"--username={user}", *INITDB_ARGS]
    _run(initdb, COMMAND_TIMEOUT_S, account=account, env=env, cwd=cwd)
    script = "" if dbname == "postgres" else f"CREATE DATABASE {_quote_ident(dbname)}\n"
    # A checkpoint with a small min_wal_size drops WAL segments the copy would otherwise carry.
    single = [str(install.postgres), "--single", "-D", str(data), "-F", "-c", "exit_on_error=true"]
    single += ["-c", "min_wal_size=2MB", "-c", "max_wal_size=4MB", "postgres"]
    _run(single, COMMAND_TIMEOUT_S, stdin=script + "CHECKPOINT\n", account=account, env=env, cwd=cwd)


def postgres_template(install: PostgresInstall, account: Account | None, user: str, dbname: str) -> tuple[Path, bool]:
    """The cached template data directory for (install, user, dbname); builds it if missing.

    Returns ``(data directory, whether this call built it)``. Concurrent callers,
    in this or other processes, wait for one build under a file lock.
    """
    name = f"pg-{install.version}-{_template_key(install, account, user, dbname)}"
    return cached_data_dir(name, lambda final: _build_template(install, account, user, dbname, final))


def cached_data_dir(name: str, build: Callable[[Path], None]) -> tuple[Path, bool]:
    """``<cache>/<name>/data``, made by ``build(final)`` once, under a file lock, if it is not there yet.

    Returns ``(data directory, whether this call built it)``. Concurrent callers, in this or
    other processes, wait for one build; the leftovers of a build that died are removed first.
    """
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    if (final / MARKER).is_file():
        return final / "data", False
    with file_lock(root / f"{final.name}.lock"):
        if (final / MARKER).is_file():
            return final / "data", False
        for leftover in root.glob(f"{final.name}.build-*"):
            shutil.rmtree(leftover, ignore_errors=True)  # a build that died; we hold the lock
        build(final)
    return final / "data", True


def _build_template(install: PostgresInstall, account: Account | None, user: str, dbname: str, final: Path) -> None:
    started = time.monotonic()
    # initdb runs in a scratch directory the account can reach (the cache may be under /root).
    scratch = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-build-", dir=tmp_base()))
    try:
        _write_marker(scratch, {"build": final.name})
        _chown(scratch, account)
        _initdb(install, account, scratch / "data", user, dbname)
        info = {"postgres": install.version, "bindir": str(install.bindir), "user": user, "dbname": dbname}
        publish(scratch / "data", final, account, info)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("svcenv: built Postgres %s template %s in %.2fs", install.version, final, time.monotonic() - started)
