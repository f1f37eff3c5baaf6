"""Commands that start services: ``up`` (foreground or ``--detach``) and ``run``."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType

from ..config import ProjectConfig
from ..descriptors import Service
from ..environment import Environment
from ..errors import ConfigurationError
from ..state import Record, StateDir, entries_of, new_record, project_key
from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    Failed,
    Terminated,
    UsageError,
    install_stop_signals,
    print_dotenv,
    project_config,
    say,
)
from ._progress import Progress

# -- starting services --------------------------------------------------------------------------


@dataclass
class Running:
    """Services this CLI process started or attached to."""

    env: Environment
    reused: bool = False
    command_status: int | None = None
    """``run``: the exit status of CMD once it has ended (the teardown then reports it)."""
    late_signals: list[int] = field(default_factory=list)
    """SIGINT/SIGTERM that arrived after CMD ended or during the teardown (they do not cut it short)."""

    @property
    def entries(self) -> dict[str, Record]:
        return self.env.records()

    @property
    def outcomes(self) -> Mapping[str, str]:
        return self.env.outcomes

    @property
    def seconds(self) -> dict[str, float]:
        return {name: t.total_s for name, t in self.env.timings.items()}

    def stop(self) -> None:
        """Removes what is not kept or reused; those stay."""
        self.env.stop()


def _reuse_wanted(args: argparse.Namespace, config: ProjectConfig) -> bool:
    from ..reuse import reuse_wanted

    return reuse_wanted(
        asked=args.reuse, refused=args.no_reuse, forced=args.force_reuse, configured=config.reuse, notice=say
    )


def select_services(config: ProjectConfig, names: Sequence[str]) -> list[Service]:
    try:
        config.select(names)
    except ConfigurationError as exc:
        raise UsageError(str(exc)) from None
    return config.descriptors(names, apply_defaults=False)  # --backend/--timeout, else the file's, apply


def _start(args: argparse.Namespace, config: ProjectConfig, store: StateDir, detach: bool) -> Running:
    """Start (or attach to) the requested services with live progress; raises on failure or Ctrl-C."""
    from ..backends.base import LABEL_PROJECT, LABEL_STATE_DIR
    from ..reuse import Reuse

    services = select_services(config, args.services)
    reuse = _reuse_wanted(args, config)
    requested = list(args.services)
    extra = [s.name for s in services if requested and s.name not in requested]
    if extra:
        say(f"also starting {', '.join(extra)} (dependencies)")
    labels = {
        "svcenv.runner": "cli",
        LABEL_PROJECT: project_key(config.project_dir),
        LABEL_STATE_DIR: str(store.root),
    }
    progress = Progress([s.name for s in services])
    say(f"starting {', '.join(s.name for s in services)}{' (reuse)' if reuse else ''} ...")
    env = Environment(
        *services,
        backend=args.backend or config.backend,
        timeout=args.timeout or config.timeout,
        labels=labels,
        reuse=Reuse(store, config.project_dir) if reuse else False,
        keep=detach,
    )

    def poll() -> None:
        timings = env.timings
        for service in services:
            state = progress.states[service.name][0]
            if service.name in timings:
                if state not in ("ready", "attached", "completed"):
                    timing = timings[service.name]
                    outcome = env.outcomes.get(service.name)
                    done = outcome if outcome in ("attached", "completed") else "ready"
                    progress.set(service.name, done, timing.backend, timing.total_s)
            elif state == "pending" or state == "waiting":
                waiting = [d for d in service.depends_on if d not in timings]
                progress.set(service.name, *(("waiting", f"for {waiting[0]}") if waiting else ("starting", "")))

    progress.start(poll)
    try:
        env.start()
    except ConfigurationError as exc:
        raise UsageError(str(exc)) from None
    finally:
        progress.stop()
    return Running(env, reused=reuse)


def _report(running: Running, started: float) -> None:
    for handle in running.env:
        outcome = running.outcomes.get(handle.name, "started")
        verb = {"attached": "attached in", "completed": "completed in"}.get(outcome, "ready in")
        address = f"{handle.host}:{handle.port}" if handle.ports else handle.host
        how = handle.backend + (", reused" if outcome in ("attached", "kept") and running.reused else "")
        seconds = running.seconds.get(handle.name, 0.0)
        say(f"{handle.name:<14} {verb} {seconds:5.2f}s  {address}  ({how})")
    say(f"all ready in {time.monotonic() - started:.2f}s; environment {running.env.id}")


def _live_detached(store: StateDir, key: str) -> Record | None:
    """This project's detached record, if its services still run (a stale one is deleted)."""
    from ..backends import get_backend
    from ..recorded import container_state

    for record in store.environments(key):
        if record.get("mode") != "detached":
            continue
        entries = entries_of(record).values()
        docker_ids = [e["snapshot"]["id"] for e in entries if e["snapshot"].get("backend") == "docker"]
        alive = not docker_ids
        if docker_ids:
            docker = get_backend("docker")
            try:
                alive = any(container_state(docker, str(cid))[0] == "running" for cid in docker_ids)
            finally:
                docker.close()
        if alive:
            return record
        store.delete(store.env_file(str(record["id"])))
    return None


_SIGNAL_NAMES: dict[int, str] = {signal.SIGINT: "SIGINT (Ctrl-C)", signal.SIGTERM: "SIGTERM"}


class _HeldSignals:
    """SIGINT/SIGTERM recorded, not raised, while the teardown runs: it is bounded and must finish."""

    def __init__(self, received: list[int]) -> None:
        self.received = received
        self._previous: dict[int, object] = {}

    def _note(self, signum: int, frame: FrameType | None) -> None:
        if not self.received:
            # os.write: a print() from a signal handler can hit a reentrant-call error on stderr.
            with contextlib.suppress(OSError):
                os.write(
                    sys.stderr.fileno(),
                    f"\nsvcenv: {_SIGNAL_NAMES.get(signum, str(signum))} during teardown: still removing the services "
                    "(bounded in time); a final line says what is left\n".encode(),
                )
        self.received.append(signum)

    def __enter__(self) -> _HeldSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._note) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]


def _stop(running: Running, held: _HeldSignals) -> list[str]:
    """Run the teardown to its end; what it could not remove (its TeardownWarning messages)."""
    import warnings

    from ..environment import TeardownWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TeardownWarning)
        try:
            running.stop()
        except KeyboardInterrupt:  # remembered by the teardown's shielded waits, raised at its end
            held.received.append(signal.SIGINT)
        except Terminated:
            held.received.append(signal.SIGTERM)
    problems = [str(w.message) for w in caught if issubclass(w.category, TeardownWarning)]
    for w in caught:
        if not issubclass(w.category, TeardownWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return problems


def _say_stopped(running: Running, problems: list[str], held: _HeldSignals) -> None:
    """The final line of a foreground session: what the teardown removed, or what may remain."""
    if held.received:
        what = _SIGNAL_NAMES.get(held.received[0], str(held.received[0]))
        if running.command_status is not None:
            say(
                f"{what} arrived during teardown, after the command had run and exited with status "
                f"{running.command_status}; the teardown ran to its end"
            )
        else:
            say(f"{what} arrived during teardown; the teardown ran to its end")
    if problems:
        say(
            "stopped, but the teardown was incomplete: " + "; ".join(problems) + "; what remains may still "
            "run: `python -m svcenv prune` removes it"
        )
    elif running.reused:
        kept = [n for n, o in running.outcomes.items() if o in ("attached", "kept")]
        say(f"reused services stay up: {', '.join(kept)}; `python -m svcenv down` removes them")
    else:
        say("stopped; nothing left running")


@contextlib.contextmanager
def _foreground(args: argparse.Namespace) -> Iterator[Running]:
    """Start (or attach), record the environment while the block runs, then remove what is not reused.

    Signals during the teardown do not cut it short (it is bounded); it always ends with a line
    that says what was removed or what may remain.
    """
    config = project_config(args)
    store = StateDir()
    install_stop_signals()
    started = time.monotonic()
    running = _start(args, config, store, detach=False)
    record = new_record(running.env.id, "foreground", config.project_dir, running.entries)
    try:
        _report(running, started)
        store.save_environment(record)
        yield running
    finally:
        with _HeldSignals(running.late_signals) as held:
            say("stopping ...")
            store.delete(store.env_file(str(record["id"])))
            problems = _stop(running, held)
            _say_stopped(running, problems, held)
        install_stop_signals()


def cmd_up(args: argparse.Namespace) -> int:
    """Start, print dotenv lines, then wait for Ctrl-C/SIGTERM (or detach)."""
    if args.detach:
        install_stop_signals()
        return _up_detached(args, project_config(args), StateDir())
    ran: list[Running] = []
    try:
        with _foreground(args) as running:
            ran.append(running)
            print_dotenv(running.env.env_vars())
            say("press Ctrl-C to stop and remove them" if not running.reused else "press Ctrl-C to leave")
            while True:
                time.sleep(3600)
    except (KeyboardInterrupt, Terminated):
        return EXIT_FAILED if ran and ran[0].env.teardown_problems else EXIT_OK


def _up_detached(args: argparse.Namespace, config: ProjectConfig, store: StateDir) -> int:
    key = project_key(config.project_dir)
    started = time.monotonic()
    with store.lock(f"project-{key}"):
        existing = _live_detached(store, key)
        reuse_only = existing is not None and all(e.get("reuse_hash") for e in entries_of(existing).values())
        if existing is not None and not (reuse_only and _reuse_wanted(args, config)):
            raise Failed(
                f"project {config.project_dir} already has a detached environment {existing['id']}; "
                "`python -m svcenv down` removes it"
            )
        try:
            running = _start(args, config, store, detach=True)
        except (KeyboardInterrupt, Terminated):
            print(file=sys.stderr)
            say("interrupted; nothing left running")
            return EXIT_OK
        entries = {**(entries_of(existing) if existing else {}), **running.entries}
        record = new_record(running.env.id, "detached", config.project_dir, entries)
        store.save_environment(record)
        if existing is not None:
            store.delete(store.env_file(str(existing["id"])))
    _report(running, started)
    print_dotenv(running.env.env_vars())
    say(f"detached; `python -m svcenv status` shows them, `python -m svcenv down` removes them ({store.root})")
    return EXIT_OK
