"""Reuse across runs: which services to find again, and where their records live.

Pass a :class:`Reuse` to :class:`~svcenv.Environment` (``reuse=True`` makes the
default one). Each service is then found by a *configuration hash*
(:func:`config_hash`: its image, env, command, ports and settings, the svcenv
version and the project; never a generated password). Under a lock per hash,
the environment attaches to the running container recorded for that hash
(checked: still running, same hash label, answers its probe) or starts a fresh
one and records it, secrets included, in a 0600 state file. So two concurrent
runs never both start one, and never attach to a half-started one. A changed
configuration has another hash, hence a fresh service.

Reused containers carry ``svcenv.keep=true`` (reapers, sweeps and ``prune``
spare them), ``svcenv.reuse-hash=<hash>`` and ``svcenv.state-dir=<dir>``
(where their record lives). Only backends whose services outlive their owner
reuse (Docker); services of the external backend already run and are used as
they are.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ._util import FALSY, TRUTHY, in_ci
from ._version import __version__
from .backends.base import (
    LABEL_KEEP,
    LABEL_PROJECT,
    LABEL_REUSE_HASH,
    LABEL_STATE_DIR,
    Backend,
)
from .handles import ServiceHandle, attached_handle
from .probes import wait_until_ready
from .recorded import attached_probe, remove_entry
from .records import spec_of
from .state import Record, StateDir, project_key

if TYPE_CHECKING:
    from .descriptors import Service

__all__ = [
    "LABEL_KEEP",
    "LABEL_PROJECT",
    "LABEL_REUSE_HASH",
    "LABEL_STATE_DIR",
    "Reuse",
    "config_hash",
    "reuse_wanted",
]

ATTACH_PROBE_TIMEOUT = 5.0
"""Seconds a recorded service gets to answer its probe before it counts as broken."""


def reuse_wanted(
    *,
    asked: bool = False,
    refused: bool = False,
    forced: bool = False,
    configured: bool = False,
    notice: Callable[[str], None] = lambda message: None,
) -> bool:
    """Whether to reuse services: the one rule for the CLI and the pytest plugin.

    ``asked``/``refused``/``forced``: the runner's options (``--reuse``,
    ``--no-reuse``, ``--force-reuse``); ``configured``: ``reuse = true`` in the
    project's configuration. ``SVCENV_REUSE`` (``1``/``0``/``force``) wins over
    the configuration. Under ``CI=true`` reuse is refused (``notice`` says so)
    unless forced: CI runs must start from nothing.
    """
    setting = os.environ.get("SVCENV_REUSE", "").strip().lower()
    forced = forced or setting == "force"
    if refused:
        return False
    wanted = asked or forced or setting in TRUTHY or (configured and setting not in FALSY)
    if wanted and not forced and in_ci():
        notice("CI=true: starting fresh services, not reusing (--force-reuse or SVCENV_REUSE=force reuses)")
        return False
    return wanted


def config_hash(service: Service, project_dir: Path) -> str:
    """What identifies a reusable server: everything that shapes it, not how long one waits for it."""
    spec = spec_of(service)
    for key in ("timeout", "depends_on", "backend", "probe"):
        spec.pop(key, None)
    material = {"spec": spec, "svcenv": __version__, "project": project_key(project_dir), "backend": "docker"}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Reuse:
    """Where reused services are recorded (``store``) and whose they are (``project_dir``)."""

    store: StateDir = field(default_factory=StateDir)
    project_dir: Path = field(default_factory=Path.cwd)

    def digest(self, service: Service) -> str:
        """The configuration hash of ``service`` in this project."""
        return config_hash(service, self.project_dir)

    def labels(self, digest: str) -> dict[str, str]:
        """The labels a fresh reused service carries."""
        return {
            LABEL_KEEP: "true",
            LABEL_REUSE_HASH: digest,
            LABEL_STATE_DIR: str(self.store.root),
            LABEL_PROJECT: project_key(self.project_dir),
        }

    def lock(self, digest: str, cancel: threading.Event) -> contextlib.AbstractContextManager[None]:
        """Held while one process looks for, or starts, the service of ``digest``; InterruptedError on ``cancel``."""
        return self.store.lock(f"reuse-{digest}", cancel)

    def find(
        self, service: Service, backend: Backend, digest: str, cancel: threading.Event
    ) -> tuple[ServiceHandle, Record] | None:
        """The recorded service of ``digest`` and its entry, if it runs this configuration and answers.

        A recorded service that is gone or broken is removed with its record; then None.
        """
        record = self.store.read(self.store.reuse_file(digest))
        if record is None:
            return None
        entry: Record = record.get("service") or {}
        handle = self._alive(service, backend, entry, digest, cancel)
        if handle is not None:
            return handle, entry
        if cancel.is_set():
            raise InterruptedError  # not broken: the check was cut short
        with contextlib.suppress(Exception):
            remove_entry(backend, entry)
        self.store.delete(self.store.reuse_file(digest))
        return None

    def _alive(
        self, service: Service, backend: Backend, entry: Record, digest: str, cancel: threading.Event
    ) -> ServiceHandle | None:
        try:
            instance = backend.attach(entry["snapshot"])
            status, labels = instance.state()
            if status != "running" or labels.get(LABEL_REUSE_HASH) != digest:
                return None
            handle = attached_handle(service, entry["snapshot"], instance)
            probe = attached_probe(service)
            if probe is not None:
                wait_until_ready(handle, probe, ATTACH_PROBE_TIMEOUT, cancel)
        except Exception:
            return None
        return handle

    def record(self, entry: Record, digest: str) -> None:
        """Record a freshly started service (its ``entry``) for later runs."""
        self.store.write(
            self.store.reuse_file(digest),
            {
                "hash": digest,
                "project": project_key(self.project_dir),
                "project_dir": str(self.project_dir),
                "created": time.time(),
                "pid": os.getpid(),
                "service": dict(entry),
            },
        )
