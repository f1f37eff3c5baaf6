"""Constants and small helpers the local backend's modules share."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .accounts import Account

TMP_PREFIX = "svcenv-local-"
MARKER = "svcenv.json"
LOG_FILE = "server.log"
WATCHDOG = Path(__file__).parents[1] / "_watchdog.py"
PORT_ATTEMPTS = 3
"""How often a start is retried when another process took the chosen port first."""
INITDB_ARGS = (
    "--auth-local=trust",
    "--auth-host=scram-sha-256",
    "--encoding=UTF8",
    "--locale=C",
    "--wal-segsize=1",  # 1 MB WAL segments: a smaller data directory to copy
    "--no-instructions",
    "--no-sync",
)
TEMPLATE_LAYOUT = 1
"""Bump when the template's contents change, so old cache entries are not reused."""
COMMAND_TIMEOUT_S = 120.0


class _Missing(Exception):
    """A server is not installed (the message says where svcenv looked)."""


def _run(
    argv: list[str],
    timeout: float = 10.0,
    *,
    stdin: str | None = None,
    account: Account | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> str:
    """Run a command to completion (as ``account`` if given); its stdout, or RuntimeError with its output."""
    done = subprocess.run(
        argv,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
        cwd=cwd,
        user=account.uid if account else None,
        group=account.gid if account else None,
        extra_groups=[] if account else None,
    )
    if done.returncode != 0:
        output = " ".join((done.stdout + done.stderr).split())[-800:]
        raise RuntimeError(f"{' '.join(argv[:2])} exited with status {done.returncode}: {output}")
    return str(done.stdout)


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)
