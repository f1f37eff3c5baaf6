"""Finding the installed servers: Postgres binaries, redis-server, an Elasticsearch distribution."""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ._common import _executable, _Missing, _run

# -- discovery ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PostgresInstall:
    """A PostgreSQL installation: its ``bin`` directory and version (``"15.20"``)."""

    bindir: Path
    version: str

    @property
    def postgres(self) -> Path:
        return self.bindir / "postgres"

    @property
    def initdb(self) -> Path:
        return self.bindir / "initdb"


@dataclass(frozen=True)
class RedisInstall:
    """A ``redis-server`` binary and its version."""

    binary: Path
    version: str


@dataclass(frozen=True)
class ElasticsearchInstall:
    """An unpacked Elasticsearch distribution."""

    home: Path

    @property
    def launcher(self) -> Path:
        return self.home / "bin" / "elasticsearch"


def _major_version(bindir: str) -> tuple[int, ...]:
    found = re.search(r"/(\d+(?:\.\d+)*)/bin/?$", bindir)
    return tuple(int(p) for p in found.group(1).split(".")) if found else (0,)


def _postgres_candidates(override: str | None, path: str | None) -> Iterator[Path]:
    if override:
        yield Path(override)
        return  # an explicit choice must not silently fall through to another install
    on_path = shutil.which("postgres", path=path)
    if on_path:
        yield Path(os.path.realpath(on_path)).parent
    pg_config = shutil.which("pg_config", path=path)
    if pg_config:
        with contextlib.suppress(OSError, RuntimeError, subprocess.TimeoutExpired):
            yield Path(_run([pg_config, "--bindir"]).strip())
    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_major_version, reverse=True):
        yield Path(bindir)


@functools.lru_cache(maxsize=8)
def _find_postgres(override: str | None, path: str | None) -> PostgresInstall:
    looked: list[str] = []
    for bindir in _postgres_candidates(override, path):
        install = PostgresInstall(bindir, "")
        if not (_executable(install.postgres) and _executable(install.initdb)):
            looked.append(str(bindir))
            continue
        said = _run([str(install.postgres), "--version"])
        found = re.search(r"\(PostgreSQL\)\s+(\S+)", said)
        return PostgresInstall(bindir, found.group(1) if found else said.strip())
    where = f"SVCENV_POSTGRES_BIN={override}" if override else "PATH, pg_config --bindir, /usr/lib/postgresql/*/bin"
    checked = f" (checked {', '.join(dict.fromkeys(looked))})" if looked else ""
    raise _Missing(
        f"no postgres and initdb binaries in {where}{checked}; install PostgreSQL or set SVCENV_POSTGRES_BIN"
    )


def find_postgres() -> PostgresInstall:
    """The PostgreSQL installation to use; raises ``_Missing`` saying where it looked."""
    return _find_postgres(os.environ.get("SVCENV_POSTGRES_BIN"), os.environ.get("PATH"))


@functools.lru_cache(maxsize=8)
def _find_redis(override: str | None, path: str | None) -> RedisInstall:
    if override:
        binary = Path(override) / "redis-server" if Path(override).is_dir() else Path(override)
        where = f"SVCENV_REDIS_BIN={override}"
    else:
        which = shutil.which("redis-server", path=path)
        binary = Path(which) if which else Path("redis-server")
        where = "PATH"
    if not _executable(binary):
        raise _Missing(f"no redis-server in {where}; install Redis or set SVCENV_REDIS_BIN")
    said = _run([str(binary), "--version"])
    found = re.search(r"v=(\S+)", said)
    return RedisInstall(binary, found.group(1) if found else said.strip())


def find_redis() -> RedisInstall:
    """The ``redis-server`` to use; raises ``_Missing`` saying where it looked."""
    return _find_redis(os.environ.get("SVCENV_REDIS_BIN"), os.environ.get("PATH"))


def find_elasticsearch() -> ElasticsearchInstall:
    """The distribution ``SVCENV_ELASTICSEARCH_HOME``/``ES_HOME`` names; raises ``_Missing`` otherwise."""
    home = os.environ.get("SVCENV_ELASTICSEARCH_HOME") or os.environ.get("ES_HOME")
    if not home:
        raise _Missing("no local distribution; set SVCENV_ELASTICSEARCH_HOME")
    install = ElasticsearchInstall(Path(home))
    if not _executable(install.launcher):
        raise _Missing(f"no executable bin/elasticsearch in {home}; set SVCENV_ELASTICSEARCH_HOME to a distribution")
    return install
