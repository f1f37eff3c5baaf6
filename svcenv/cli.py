"""``python -m svcenv``: real services for shells, other programs and CI.

Commands (``python -m svcenv COMMAND --help`` for each)::

    up [SERVICE...] [--detach]     start, print dotenv lines; stay up until Ctrl-C/SIGTERM (or detach)
    down [--all]                   stop this project's detached and reused services (or all recorded ones)
    status                         recorded environments: services, backend, address, health (probed now)
    env [--format dotenv|json|shell]   the variables of this project's running environment
    run [SERVICE...] -- CMD...     start, run CMD with the variables, tear down, exit with CMD's status
    logs SERVICE [--tail N]        the log of a running service
    prune                          remove containers, records and local dirs whose owner is gone
    doctor [SERVICE...]            which backends can run each service here
    cache list|clear               the pre-initialised Postgres images on the engine

Services come from the project configuration (``[tool.svcenv]`` in
``pyproject.toml`` or ``svcenv.toml``, see :mod:`svcenv.config`), else
postgres, redis and elasticsearch. Reuse across runs is opt-in: ``--reuse``,
``reuse = true`` in the configuration, or ``SVCENV_REUSE=1``; under ``CI=true``
it is refused (services start fresh, with a notice) unless ``--force-reuse`` or
``SVCENV_REUSE=force``.

Exit codes:

* 0: success (``up`` stopped by Ctrl-C/SIGTERM counts as success);
* 1: a service or backend failed (a start failure, no backend, no running
  environment, an unhealthy service in ``status``);
* 2: bad usage or configuration (an unknown service or option, a bad config key,
  ``--detach`` on the local backend);
* ``run``: CMD's exit status; 128+N if CMD died of signal N; 126/127 if CMD
  cannot be executed/found; 130/143 if SIGINT/SIGTERM came before CMD started.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from .backends import Backend
from .config import ProjectConfig, load_config
from .descriptors import Service
from .environment import Environment
from .errors import ConfigurationError, SvcenvError
from .state import Record, StateDir, entries_of, new_record, pid_alive, project_key

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class _Terminated(BaseException):
    """SIGTERM arrived: leave like Ctrl-C, tearing everything down (not an Exception: nothing may swallow it)."""


class _UsageError(Exception):
    """Bad usage: exit 2."""


class _Failed(Exception):
    """A failure already explained in its message: exit 1."""


# -- the parser ---------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    common.add_argument(
        "--config", type=Path, default=argparse.SUPPRESS, help="the configuration file (default: looked up from cwd)"
    )
    parser = argparse.ArgumentParser(
        prog="python -m svcenv",
        description="Real Postgres, Redis and Elasticsearch (and any image) for shells, programs and CI.",
        epilog="Exit codes: 0 ok, 1 service/backend failure, 2 usage/config error; run: CMD's status.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--config", type=Path, default=None, help="the configuration file (default: looked up)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    starting = argparse.ArgumentParser(add_help=False)
    starting.add_argument("services", nargs="*", metavar="SERVICE", help="services to start (default: all)")
    starting.add_argument("--backend", default=None, help="auto (default, or $SVCENV_BACKEND), docker, local, external")
    starting.add_argument("--timeout", type=float, default=None, help="seconds each service gets to become ready")
    starting.add_argument("--reuse", action="store_true", help="attach to running services of the same configuration")
    starting.add_argument("--no-reuse", action="store_true", help="start fresh even if the configuration says reuse")
    starting.add_argument("--force-reuse", action="store_true", help="reuse even under CI=true")

    up = commands.add_parser(
        "up",
        parents=[common, starting],
        help="start services, print how to reach them, stay up until Ctrl-C",
        description="Start services in parallel, print their variables as dotenv lines on stdout "
        "(progress goes to stderr), and keep them up until Ctrl-C or SIGTERM, then remove them. "
        "With --detach, leave them running (recorded in the state dir) and exit; `down` removes them.",
    )
    up.add_argument("--detach", "-d", action="store_true", help="leave them running and exit (docker/external only)")
    down = commands.add_parser(
        "down",
        parents=[common],
        help="stop this project's detached and reused services",
        description="Remove the detached environment and the reused services of this project "
        "(the directory holding the configuration, else the cwd), or with --all every one recorded.",
    )
    down.add_argument("--all", action="store_true", help="every recorded environment and reused service")
    commands.add_parser(
        "status",
        parents=[common],
        help="show running environments and the health of their services",
        description="List recorded environments and reused services: service, backend, address and health "
        "(each probed now). Exits 1 if any service is unhealthy or gone.",
    )
    env = commands.add_parser(
        "env",
        parents=[common],
        help="print the variables of this project's running environment",
        description="Print the variables (secrets included) of this project's running environment, "
        'e.g. eval "$(python -m svcenv env --format shell)".',
    )
    env.add_argument("--format", choices=("dotenv", "json", "shell"), default="dotenv")
    commands.add_parser(
        "run",
        parents=[common, starting],
        usage="python -m svcenv run [options] [SERVICE ...] -- CMD [ARG ...]",
        help="start services, run CMD with their variables, tear down",
        description="Start services, run CMD (an argv list, no shell) with their variables in its environment, "
        "tear down, and exit with CMD's status. SIGINT/SIGTERM are forwarded to CMD.",
    )
    logs = commands.add_parser(
        "logs",
        parents=[common],
        help="print the log of a running service",
        description="Print the log of a service of this project's running environment "
        "(docker: the container's log; local: the server's log file).",
    )
    logs.add_argument("service", metavar="SERVICE")
    logs.add_argument("--tail", type=int, default=None, help="only the last N lines")
    prune = commands.add_parser(
        "prune",
        parents=[common],
        help="remove what svcenv left behind by owners that are gone",
        description="Remove every svcenv container whose owner process is gone, unless it is a detached or "
        "reused one still recorded; records whose services are gone; stale local server directories.",
    )
    prune.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only containers that carry this label (repeatable)",
    )
    doctor = commands.add_parser(
        "doctor",
        parents=[common],
        help="show which backends can run each service here",
        description="For each service, say which backends can run it on this machine and which one "
        "`auto` would pick. Exits 1 if a requested service has no backend.",
    )
    doctor.add_argument("services", nargs="*", metavar="SERVICE", help="services to check (default: all)")
    cache = commands.add_parser(
        "cache",
        parents=[common],
        help="list or clear the pre-initialised Postgres images",
        description="svcenv keeps one pre-initialised Postgres image per configuration on the Docker engine "
        "(svcenv-cache/postgres:<key>); fresh instances start from it. `list` shows them, `clear` removes them.",
    )
    cache.add_argument("action", choices=("list", "clear"))
    return parser


def _say(message: str) -> None:
    print(f"svcenv: {message}", file=sys.stderr, flush=True)


def _config(args: argparse.Namespace) -> ProjectConfig:
    return load_config(args.config)


# -- live progress ------------------------------------------------------------------------------


class Progress:
    """Per-service state and elapsed time on stderr: redrawn in place on a TTY, plain lines otherwise."""

    HEARTBEAT = 5.0

    def __init__(self, names: Sequence[str], stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.t0 = time.monotonic()
        self.states: dict[str, tuple[str, str, float | None]] = dict.fromkeys(names, ("pending", "", None))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._drawn = 0
        self._poll: Callable[[], None] | None = None
        self._thread: threading.Thread | None = None

    def set(self, name: str, state: str, detail: str = "", seconds: float | None = None) -> None:
        """Record a service's state (``seconds``: its time to ready, if known); in plain mode, print it."""
        with self._lock:
            previous = self.states.get(name, ("", "", None))
            done = None
            if state in ("ready", "attached", "failed"):
                done = seconds if seconds is not None else time.monotonic() - self.t0
            self.states[name] = (state, detail, done)
            if not self.tty and previous[:2] != (state, detail):
                self.stream.write(f"svcenv: {name}: {self._describe(name)}\n")
                self.stream.flush()

    def _describe(self, name: str) -> str:
        state, detail, done = self.states[name]
        if done is not None:
            return f"{state} after {done:.2f}s" + (f" ({detail})" if detail else "")
        return f"{state} {detail}".strip()

    def start(self, poll: Callable[[], None] | None = None) -> None:
        """Tick in the background: ``poll`` (updates states), redraw (TTY) or heartbeat lines (plain)."""
        self._poll = poll
        self._thread = threading.Thread(target=self._run, name="svcenv-progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        beat = time.monotonic() + self.HEARTBEAT
        while not self._stop.wait(0.1):
            if self._poll is not None:
                with contextlib.suppress(Exception):
                    self._poll()
            if self.tty:
                self._draw()
            elif time.monotonic() >= beat:
                beat += self.HEARTBEAT
                with self._lock:
                    slow = [n for n, (s, _, done) in self.states.items() if done is None]
                    for name in slow:
                        self.stream.write(f"svcenv: {name}: {self._describe(name)}, {self.elapsed:.0f}s so far\n")
                    self.stream.flush()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def _draw(self) -> None:
        with self._lock:
            lines = []
            for name, (state, detail, done) in self.states.items():
                seconds = done if done is not None else self.elapsed
                lines.append(f"  {name:<14} {state:<9} {seconds:6.2f}s  {detail}".rstrip())
            out = f"\x1b[{self._drawn}F" if self._drawn else ""
            out += "".join(f"\x1b[2K{line}\n" for line in lines)
            self.stream.write(out)
            self.stream.flush()
            self._drawn = len(lines)

    def stop(self) -> None:
        """Stop ticking and erase the live block (TTY)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._poll is not None:
            with contextlib.suppress(Exception):
                self._poll()
        if self.tty and self._drawn:
            with self._lock:
                self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
                self.stream.flush()
                self._drawn = 0


# -- starting services --------------------------------------------------------------------------


@dataclass
class Running:
    """Services this CLI process started or attached to."""

    env: Environment
    """Handles and variables (an attached environment when services are reused)."""
    entries: dict[str, Record]
    outcomes: dict[str, str]
    seconds: dict[str, float]
    stop: Callable[[], None]
    """Removes what is not reused; reused services stay."""
    disown: Callable[[], None]
    reused: bool = False


def _reuse_wanted(args: argparse.Namespace, config: ProjectConfig) -> bool:
    setting = os.environ.get("SVCENV_REUSE", "").strip().lower()
    force = bool(args.force_reuse) or setting == "force"
    if args.no_reuse:
        return False
    wanted = args.reuse or force or setting in _TRUE or (config.reuse and setting not in _FALSE)
    if wanted and IN_CI and not force:
        _say("CI=true: starting fresh services, not reusing (pass --force-reuse or SVCENV_REUSE=force to reuse)")
        return False
    return bool(wanted)


def _services(config: ProjectConfig, names: Sequence[str]) -> list[Service]:
    try:
        config.select(names)
    except ConfigurationError as exc:
        raise _UsageError(str(exc)) from None
    return config.descriptors(names, apply_defaults=False)  # --backend/--timeout, else the file's, apply


def _refuse_local(services: Sequence[Service], backend: str | None) -> None:
    """``--detach`` needs servers that outlive the CLI: local ones end with their owner."""
    from .backends import choose, requested_backend

    made: dict[str, Backend] = {}
    try:
        for service in services:
            if choose(service, requested_backend(service, backend), made).name == "local":
                raise _UsageError(
                    f"service {service.name!r} would run on the local backend, whose servers end with the "
                    "process that started them; --detach needs docker (or external). "
                    "Use `up` in the foreground, or --backend docker."
                )
    finally:
        for made_backend in made.values():
            made_backend.close()


def _start(args: argparse.Namespace, config: ProjectConfig, store: StateDir, detach: bool) -> Running:
    """Start (or attach to) the requested services with live progress; raises on failure or Ctrl-C."""
    from .reuse import LABEL_KEEP, LABEL_PROJECT, LABEL_STATE_DIR, Reuser, entries_from, prewarm

    services = _services(config, args.services)
    backend = args.backend or config.backend
    timeout = args.timeout or config.timeout
    reuse = _reuse_wanted(args, config)
    requested = list(args.services)
    extra = [s.name for s in services if requested and s.name not in requested]
    if extra:
        _say(f"also starting {', '.join(extra)} (dependencies)")
    labels = {
        "svcenv.runner": "cli",
        LABEL_PROJECT: project_key(config.project_dir),
        LABEL_STATE_DIR: str(store.root),
    }
    progress = Progress([s.name for s in services])
    names = ", ".join(s.name for s in services)
    _say(f"starting {names}{' (reuse)' if reuse else ''} ...")
    if reuse:
        reuser = Reuser(
            store, config.project_dir, backend=backend, timeout=timeout, labels=labels, on_state=progress.set
        )
        progress.start()
        try:
            acquired = reuser.acquire(services)
        finally:
            progress.stop()
            reuser.close()
        return Running(
            acquired.env,
            acquired.entries,
            acquired.outcomes,
            acquired.seconds,
            acquired.stop,
            lambda: None,
            reused=True,
        )
    if detach:
        _refuse_local(services, backend)
        labels[LABEL_KEEP] = "true"
    with contextlib.suppress(Exception):
        prewarm(services, backend)  # a failure here shows again, explained, when the service starts
    env = Environment(*services, backend=backend, timeout=timeout, labels=labels)

    def poll() -> None:
        timings = env.timings
        for service in services:
            state = progress.states[service.name][0]
            if service.name in timings:
                if state != "ready":
                    timing = timings[service.name]
                    progress.set(service.name, "ready", timing.backend, timing.total_s)
            elif state == "pending" or state == "waiting":
                waiting = [d for d in service.depends_on if d not in timings]
                progress.set(service.name, *(("waiting", f"for {waiting[0]}") if waiting else ("starting", "")))

    progress.start(poll)
    try:
        env.start()
    finally:
        progress.stop()
    seconds = {name: t.total_s for name, t in env.timings.items()}
    return Running(env, entries_from(env), dict.fromkeys(seconds, "started"), seconds, env.stop, env.disown)


def _report(running: Running, started: float) -> None:
    for handle in running.env:
        outcome = running.outcomes.get(handle.name, "started")
        verb = "attached in" if outcome == "attached" else "ready in"
        address = f"{handle.host}:{handle.port}" if handle.ports else handle.host
        how = handle.backend + (", reused" if outcome in ("attached", "started") and running.reused else "")
        seconds = running.seconds.get(handle.name, 0.0)
        _say(f"{handle.name:<14} {verb} {seconds:5.2f}s  {address}  ({how})")
    _say(f"all ready in {time.monotonic() - started:.2f}s; environment {running.env.id}")


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


def _install_stop_signals() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
        # A shell starts background jobs with SIGINT ignored; `up` promises to stop on it.
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _live_detached(store: StateDir, key: str) -> Record | None:
    """This project's detached record, if its services still run (a stale one is deleted)."""
    from .reuse import container_state, docker_client

    for record in store.environments(key):
        if record.get("mode") != "detached":
            continue
        entries = entries_of(record).values()
        docker_ids = [e["snapshot"]["id"] for e in entries if e["snapshot"].get("backend") == "docker"]
        alive = not docker_ids
        if docker_ids:
            client = docker_client()
            try:
                alive = any(container_state(client, str(cid))[0] == "running" for cid in docker_ids)
            finally:
                client.close()
        if alive:
            return record
        store.delete(store.env_file(str(record["id"])))
    return None


def cmd_up(args: argparse.Namespace) -> int:
    """Start, print dotenv lines, then wait for Ctrl-C/SIGTERM (or detach)."""
    config = _config(args)
    store = StateDir()
    _install_stop_signals()
    if args.detach:
        return _up_detached(args, config, store)
    started = time.monotonic()
    running: Running | None = None
    record: Record | None = None
    try:
        running = _start(args, config, store, detach=False)
        _report(running, started)
        record = new_record(running.env.id, "foreground", config.project_dir, running.entries)
        store.save_environment(record)
        _print_dotenv(running.env.env_vars())
        _say("press Ctrl-C to stop and remove them" if not running.reused else "press Ctrl-C to leave")
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, _Terminated):
        print(file=sys.stderr)
        _say("stopping ...")
        return EXIT_OK
    finally:
        if record is not None:
            store.delete(store.env_file(str(record["id"])))
        if running is not None:
            running.stop()
            if running.reused:
                kept = [n for n, o in running.outcomes.items() if o != "external"]
                _say(f"reused services stay up: {', '.join(kept)}; `python -m svcenv down` removes them")
            else:
                _say("stopped; nothing left running")


def _up_detached(args: argparse.Namespace, config: ProjectConfig, store: StateDir) -> int:
    key = project_key(config.project_dir)
    started = time.monotonic()
    with store.lock(f"project-{key}"):
        existing = _live_detached(store, key)
        reuse_only = existing is not None and all(e.get("reuse_hash") for e in entries_of(existing).values())
        if existing is not None and not (reuse_only and _reuse_wanted(args, config)):
            raise _Failed(
                f"project {config.project_dir} already has a detached environment {existing['id']}; "
                "`python -m svcenv down` removes it"
            )
        try:
            running = _start(args, config, store, detach=True)
        except (KeyboardInterrupt, _Terminated):
            print(file=sys.stderr)
            _say("interrupted; nothing left running")
            return EXIT_OK
        entries = {**(entries_of(existing) if existing else {}), **running.entries}
        record = new_record(running.env.id, "detached", config.project_dir, entries)
        store.save_environment(record)
        if existing is not None:
            store.delete(store.env_file(str(existing["id"])))
        running.disown()
    _report(running, started)
    _print_dotenv(running.env.env_vars())
    _say(f"detached; `python -m svcenv status` shows them, `python -m svcenv down` removes them ({store.root})")
    return EXIT_OK


def _print_dotenv(variables: Mapping[str, str]) -> None:
    for key, value in variables.items():
        print(f"{key}={value}")
    sys.stdout.flush()


# -- run ----------------------------------------------------------------------------------------


def _terminal_delivers_sigint() -> bool:
    """True if a SIGINT here came from our terminal, which also delivered it to the child (same group)."""
    try:
        return sys.stdin.isatty() and os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError):
        return False


def _run_child(cmd: Sequence[str], variables: Mapping[str, str]) -> int:
    child: subprocess.Popen[bytes] | None = None
    pending: list[int] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and _terminal_delivers_sigint():
            return
        if child is None:
            pending.append(signum)
        else:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)

    main_thread = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)} if main_thread else {}
    try:
        try:
            child = subprocess.Popen(list(cmd), env={**os.environ, **variables})
        except FileNotFoundError:
            _say(f"error: command not found: {cmd[0]}")
            return 127
        except PermissionError:
            _say(f"error: command cannot be executed: {cmd[0]}")
            return 126
        for signum in pending:
            child.send_signal(signum)
        status = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return status if status >= 0 else 128 - status


def cmd_run(args: argparse.Namespace, cmd: Sequence[str]) -> int:
    """Start, run CMD with the variables, tear down, return CMD's status."""
    if not cmd:
        raise _UsageError("run needs a command after --, e.g. python -m svcenv run -- pytest")
    config = _config(args)
    store = StateDir()
    _install_stop_signals()
    started = time.monotonic()
    running: Running | None = None
    record: Record | None = None
    try:
        running = _start(args, config, store, detach=False)
        _report(running, started)
        record = new_record(running.env.id, "foreground", config.project_dir, running.entries)
        store.save_environment(record)
        return _run_child(cmd, running.env.env_vars())
    except KeyboardInterrupt:
        _say("interrupted before the command started")
        return 128 + signal.SIGINT
    except _Terminated:
        _say("terminated before the command started")
        return 128 + signal.SIGTERM
    finally:
        if record is not None:
            store.delete(store.env_file(str(record["id"])))
        if running is not None:
            running.stop()


# -- down, status, env, logs, prune -------------------------------------------------------------


class _Docker:
    """A Docker client made on first use (commands that find no docker service need no engine)."""

    def __init__(self) -> None:
        self._client: Any = None

    def __call__(self) -> Any:
        if self._client is None:
            from .reuse import docker_client

            self._client = docker_client()
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def _is_docker(entry: Mapping[str, Any]) -> bool:
    return bool(entry["snapshot"].get("backend") == "docker")


def cmd_down(args: argparse.Namespace) -> int:
    """Remove detached environments and reused services (this project's, or all)."""
    from .reuse import remove_entry

    config = None if args.all else _config(args)
    store = StateDir()
    key = None if config is None else project_key(config.project_dir)
    client = _Docker()
    removed = 0
    services: list[str] = []
    try:
        for record in store.environments(key):
            if record.get("mode") == "foreground" and pid_alive(int(record.get("pid", 0))):
                _say(f"foreground environment {record['id']} (pid {record['pid']}) still runs; stop it with Ctrl-C")
                continue
            for entry in entries_of(record).values():
                if not entry.get("reuse_hash"):
                    removed += remove_entry(client(), entry) if _is_docker(entry) else 0
                    services.append(str(entry["name"]))
            store.delete(store.env_file(str(record["id"])))
        for record in store.reused(key):
            with store.lock(f"reuse-{record['hash']}"):
                entry = record["service"]
                removed += remove_entry(client(), entry) if _is_docker(entry) else 0
                services.append(f"{entry['name']} (reused)")
                store.delete(store.reuse_file(str(record["hash"])))
    finally:
        client.close()
    where = "all projects" if key is None else str(config.project_dir if config else "")
    if not services:
        print(f"nothing recorded for {where}")
    else:
        print(f"stopped {', '.join(services)} ({removed} container(s) removed) for {where}")
    return EXIT_OK


def _project_entries(store: StateDir, config: ProjectConfig) -> dict[str, Record]:
    """This project's running services: its newest live environment record, else its reused services."""
    from .reuse import config_hash

    key = project_key(config.project_dir)
    for record in reversed(store.environments(key)):
        if record.get("mode") == "detached" or pid_alive(int(record.get("pid", 0))):
            return entries_of(record)
    current: dict[str, str] = {}
    with contextlib.suppress(SvcenvError):
        current = {s.name: config_hash(s, config.project_dir) for s in config.descriptors()}
    chosen: dict[str, Record] = {}
    for record in store.reused(key):  # oldest first: newer ones win, the current configuration's wins
        entry = record["service"]
        name = str(entry["name"])
        keep_chosen = name in chosen and current.get(name) == chosen[name].get("reuse_hash")
        if not keep_chosen or current.get(name) == record["hash"]:
            chosen[name] = entry
    if not chosen:
        raise _Failed(
            f"no running environment for project {config.project_dir}; start one with `python -m svcenv up --detach`"
        )
    return chosen


def cmd_env(args: argparse.Namespace) -> int:
    """Print the variables of this project's running environment."""
    from .reuse import attach_entries

    config = _config(args)
    variables = attach_entries(_project_entries(StateDir(), config)).env_vars()
    if args.format == "json":
        print(json.dumps(variables, indent=2))
    elif args.format == "shell":
        for key, value in variables.items():
            print(f"export {key}={shlex.quote(value)}")
    else:
        _print_dotenv(variables)
    return EXIT_OK


def cmd_logs(args: argparse.Namespace) -> int:
    """Print a running service's log."""
    config = _config(args)
    entries = _project_entries(StateDir(), config)
    entry = entries.get(args.service)
    if entry is None:
        raise _UsageError(f"no running service {args.service!r}; running: {', '.join(entries)}")
    backend = entry["snapshot"]["backend"]
    if backend == "docker":
        from .reuse import docker_client

        client = docker_client()
        try:
            raw = client.containers.get(entry["snapshot"]["id"]).logs(tail=args.tail if args.tail else "all")
        finally:
            client.close()
        sys.stdout.write(bytes(raw).decode("utf-8", errors="replace"))
    elif backend == "local" and entry.get("log_path"):
        text = Path(entry["log_path"]).read_text(errors="replace")
        lines = text.splitlines(keepends=True)
        sys.stdout.write("".join(lines[-args.tail :] if args.tail else lines))
    else:
        raise _Failed(f"service {args.service!r} runs on the {backend} backend; svcenv keeps no log of it")
    sys.stdout.flush()
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    """Print recorded environments and reused services with their health."""
    from .reuse import attach_entries, health

    store = StateDir()
    records = store.environments()
    listed = {str(e.get("env_id")) for r in records for e in entries_of(r).values()}
    reused = [r for r in store.reused() if str(r["service"].get("env_id")) not in listed]
    if not records and not reused:
        print(f"no running environments ({store.root})")
        return EXIT_OK
    client = _Docker()
    bad = 0
    try:
        for record in [*records, *reused]:
            if "hash" in record:
                title = f"reused service of {record.get('project_dir')}"
            else:
                owner = record.get("pid", 0)
                alive = "" if record.get("mode") == "detached" or pid_alive(int(owner)) else ", owner gone"
                title = f"{record.get('mode')} environment {record['id']} of {record.get('project_dir')}"
                title += f" (pid {owner}{alive})"
            print(title)
            for name, entry in entries_of(record).items():
                handle = attach_entries({name: entry})[name]
                docker = client() if handle.backend == "docker" else None
                verdict = health(handle, docker)
                bad += verdict != "healthy"
                address = f"{handle.host}:{handle.port}" if handle.ports else handle.host
                mark = "  reused" if entry.get("reuse_hash") else ""
                print(f"  {name:<14} {handle.backend:<8} {address:<21} {verdict}{mark}")
    finally:
        client.close()
    return EXIT_FAILED if bad else EXIT_OK


def cmd_prune(args: argparse.Namespace) -> int:
    """Remove containers, records and local dirs whose owner is gone (sparing recorded kept ones)."""
    from .reuse import LABEL_KEEP, LABEL_STATE_DIR, container_state, remove_entry

    store = StateDir()
    client = _Docker()
    records = containers = 0
    try:
        for record in store.environments():
            entries = entries_of(record).values()
            if record.get("mode") == "foreground":
                gone = not pid_alive(int(record.get("pid", 0)))
            else:
                ids = [e["snapshot"]["id"] for e in entries if _is_docker(e)]
                gone = bool(ids) and all(container_state(client(), str(i))[0] != "running" for i in ids)
            if gone:
                for entry in entries:
                    if _is_docker(entry) and not entry.get("reuse_hash"):
                        containers += remove_entry(client(), entry)
                store.delete(store.env_file(str(record["id"])))
                records += 1
        for record in store.reused():
            with store.lock(f"reuse-{record['hash']}"):
                entry = record["service"]
                if _is_docker(entry) and container_state(client(), str(entry["snapshot"]["id"]))[0] != "running":
                    containers += remove_entry(client(), entry)
                    store.delete(store.reuse_file(str(record["hash"])))
                    records += 1
        only = dict(label.partition("=")[::2] for label in args.label)
        containers += _prune_containers(client, only, LABEL_KEEP, LABEL_STATE_DIR)
    finally:
        client.close()
    from .backends.local import sweep_stale

    directories = sweep_stale()
    print(f"pruned {containers} container(s), {records} record(s), {directories} local server dir(s)")
    return EXIT_OK


def _prune_containers(client: _Docker, only: Mapping[str, str], keep_label: str, dir_label: str) -> int:
    from .backends.base import LABEL_ENVIRONMENT, LABEL_OWNER_PID

    try:
        client().ping()
    except Exception:
        return 0  # no engine answers: no containers to prune
    references: dict[str, set[str] | None] = {}

    def recorded(directory: str, env_id: str) -> bool:
        if directory not in references:
            path = Path(directory)
            try:
                references[directory] = StateDir(path, create=False).referenced_env_ids() if path.is_dir() else set()
            except OSError:
                references[directory] = None  # unreadable: assume it still records it
        refs = references[directory]
        return refs is None or env_id in refs

    removed = 0
    filters = {"label": [LABEL_ENVIRONMENT, *(f"{k}={v}" for k, v in only.items())]}
    for container in client().containers.list(all=True, filters=filters):
        labels = container.labels or {}
        owner = labels.get(LABEL_OWNER_PID, "")
        if owner.isdigit() and pid_alive(int(owner)):
            continue
        if labels.get(keep_label) == "true" and recorded(labels.get(dir_label, ""), labels.get(LABEL_ENVIRONMENT, "")):
            continue
        with contextlib.suppress(Exception):
            container.remove(force=True, v=True)
            removed += 1
    return removed


# -- doctor, cache ------------------------------------------------------------------------------


def cmd_cache(args: argparse.Namespace) -> int:
    """List or remove the pre-initialised Postgres images."""
    from .backends import pgcache
    from .backends.docker import DockerBackend

    backend = DockerBackend()
    backend.check()
    try:
        if args.action == "clear":
            print(f"removed {pgcache.clear(backend.client)} cached image(s)")
            return EXIT_OK
        rows = pgcache.entries(backend.client)
        if not rows:
            print("no cached Postgres images")
        for row in rows:
            print(f"{row['image']}  base {row['base']}  {row['size_mb']} MB  created {row['created'][:19]}")
        return EXIT_OK
    finally:
        backend.close()


def _backend_details(name: str, backend: Backend, service: Service) -> str:
    """What a backend would use for ``service``: the image, the binaries, or the URL."""
    if name == "docker":
        return f"image {service.effective_image}"
    if name == "local":
        capabilities: dict[str, str] = getattr(backend, "capabilities", dict)()
        return capabilities.get(service.kind, "")
    from .backends.external import configured_url, redact

    url = configured_url(service.name)
    return redact(url) if url else ""


def cmd_doctor(args: argparse.Namespace) -> int:
    """Print, per service, which backends can run it and what `auto` picks."""
    from .backends import AUTO_ORDER, get_backend

    services = _services(_config(args), args.services)
    backends = {name: get_backend(name) for name in AUTO_ORDER}
    unserved = []
    for service in services:
        verdicts = {name: backend.supports(service) for name, backend in backends.items()}
        usable = [name for name in AUTO_ORDER if verdicts[name] is None]
        print(f"{service.name}: auto uses {usable[0] if usable else 'NOTHING (no backend can run it)'}")
        for name in AUTO_ORDER:
            reason = verdicts[name]
            if reason is None:
                print(f"  {name:<9} ok   {_backend_details(name, backends[name], service)}")
            else:
                print(f"  {name:<9} no   {reason.removeprefix(name + ': ')}")
        if not usable:
            unserved.append(service.name)
    for backend in backends.values():
        backend.close()
    if unserved:
        _say(f"no backend can run: {', '.join(unserved)}")
        return EXIT_FAILED
    return EXIT_OK


# -- main ---------------------------------------------------------------------------------------

_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "up": cmd_up,
    "down": cmd_down,
    "status": cmd_status,
    "env": cmd_env,
    "logs": cmd_logs,
    "prune": cmd_prune,
    "doctor": cmd_doctor,
    "cache": cmd_cache,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, cmd = argv[:at], argv[at + 1 :]
    parser = _parser()
    args = parser.parse_args(argv)
    if cmd and args.command != "run":
        parser.error(f"{args.command} takes no command after --")
    try:
        if args.command == "run":
            return cmd_run(args, cmd)
        return _COMMANDS[args.command](args)
    except (_UsageError, ConfigurationError) as exc:
        if args.debug:
            raise
        parser.print_usage(sys.stderr)
        _say(f"error: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        _say("interrupted")
        return 128 + signal.SIGINT
    except Exception as exc:
        if args.debug:
            raise
        said = str(exc) if isinstance(exc, (SvcenvError, _Failed)) else f"{type(exc).__name__}: {exc}"
        _say(f"error: {said}")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
