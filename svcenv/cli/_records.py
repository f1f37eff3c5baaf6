"""Commands that read the state dir: ``down``, ``status``, ``env``, ``logs``, ``prune``."""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from .._util import owner_identity, pid_alive, process_alive
from ..config import ProjectConfig
from ..errors import SvcenvError
from ..state import Record, StateDir, entries_of, project_key
from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    Failed,
    LazyBackends,
    UsageError,
    is_docker,
    print_dotenv,
    project_config,
    say,
)

# -- down, status, env, logs, prune -------------------------------------------------------------


def cmd_down(args: argparse.Namespace) -> int:
    """Remove detached environments and reused services (this project's, or all)."""
    from ..recorded import remove_entry

    config = None if args.all else project_config(args)
    store = StateDir()
    key = None if config is None else project_key(config.project_dir)
    backends = LazyBackends()
    removed = 0
    services: list[str] = []
    try:
        for record in store.environments(key):
            if record.get("mode") == "foreground" and pid_alive(int(record.get("pid", 0))):
                say(f"foreground environment {record['id']} (pid {record['pid']}) still runs; stop it with Ctrl-C")
                continue
            for entry in entries_of(record).values():
                if not entry.get("reuse_hash"):
                    removed += remove_entry(backends("docker"), entry) if is_docker(entry) else 0
                    services.append(str(entry["name"]))
            store.delete(store.env_file(str(record["id"])))
        for record in store.reused(key):
            with store.lock(f"reuse-{record['hash']}"):
                entry = record["service"]
                removed += remove_entry(backends("docker"), entry) if is_docker(entry) else 0
                services.append(f"{entry['name']} (reused)")
                store.delete(store.reuse_file(str(record["hash"])))
    finally:
        backends.close()
    where = "all projects" if key is None else str(config.project_dir if config else "")
    if not services:
        print(f"nothing recorded for {where}")
    else:
        print(f"stopped {', '.join(services)} ({removed} container(s) removed) for {where}")
    return EXIT_OK


def _project_entries(store: StateDir, config: ProjectConfig) -> dict[str, Record]:
    """This project's running services: its newest live environment record, else its reused services."""
    from ..reuse import config_hash

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
        raise Failed(
            f"no running environment for project {config.project_dir}; start one with `python -m svcenv up --detach`"
        )
    return chosen


def cmd_env(args: argparse.Namespace) -> int:
    """Print the variables of this project's running environment."""
    from ..recorded import attach_entries

    config = project_config(args)
    variables = attach_entries(_project_entries(StateDir(), config)).env_vars()
    if args.format == "json":
        print(json.dumps(variables, indent=2))
    elif args.format == "shell":
        for key, value in variables.items():
            print(f"export {key}={shlex.quote(value)}")
    else:
        print_dotenv(variables)
    return EXIT_OK


def cmd_logs(args: argparse.Namespace) -> int:
    """Print a running service's log."""
    config = project_config(args)
    entries = _project_entries(StateDir(), config)
    entry = entries.get(args.service)
    if entry is None:
        raise UsageError(f"no running service {args.service!r}; running: {', '.join(entries)}")
    backend = entry["snapshot"]["backend"]
    if backend != "docker" and not (backend == "local" and entry.get("log_path")):
        raise Failed(f"service {args.service!r} runs on the {backend} backend; svcenv keeps no log of it")
    from ..backends import get_backend

    made = get_backend(backend)
    try:
        instance = made.attach({**entry["snapshot"], "log_path": entry.get("log_path")})
        if args.follow:
            try:
                for line in instance.follow(args.tail):
                    sys.stdout.write(line + "\n")
                    sys.stdout.flush()
            except KeyboardInterrupt:
                pass  # Ctrl-C ends following, as with docker logs -f
        else:
            sys.stdout.write(instance.logs(args.tail or None))
    finally:
        made.close()
    sys.stdout.flush()
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    """Print recorded environments and reused services with their health."""
    from ..recorded import attach_entries, health

    store = StateDir()
    records = store.environments()
    listed = {str(e.get("env_id")) for r in records for e in entries_of(r).values()}
    reused = [r for r in store.reused() if str(r["service"].get("env_id")) not in listed]
    if not records and not reused:
        print(f"no running environments ({store.root})")
        return EXIT_OK
    backends = LazyBackends()
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
                backend = backends(handle.backend) if handle.backend in ("docker", "local") else None
                verdict = health(handle, backend)
                bad += verdict != "healthy"
                address = f"{handle.host}:{handle.port}" if handle.ports else handle.host
                mark = "  reused" if entry.get("reuse_hash") else ""
                print(f"  {name:<14} {handle.backend:<8} {address:<21} {verdict}{mark}")
    finally:
        backends.close()
    return EXIT_FAILED if bad else EXIT_OK


def cmd_prune(args: argparse.Namespace) -> int:
    """Remove containers, records and local dirs whose owner is gone (sparing recorded kept ones)."""
    from ..backends.docker_records import PruneIncomplete
    from ..recorded import container_state, remove_entry

    store = StateDir()
    backends = LazyBackends()
    records = containers = 0
    failures: list[str] = []

    def remove(entry: Mapping[str, object]) -> bool:
        """Remove a recorded entry's containers; False (and the failure noted) if the engine refused."""
        nonlocal containers
        try:
            containers += remove_entry(backends("docker"), entry)
        except Exception as exc:
            failures.append(f"environment {entry.get('env_id')} ({' '.join(str(exc).split())})")
            return False
        return True

    try:
        for record in store.environments():
            entries = entries_of(record).values()
            if record.get("mode") == "foreground":
                gone = not pid_alive(int(record.get("pid", 0)))
            else:
                ids = [e["snapshot"]["id"] for e in entries if is_docker(e)]
                gone = bool(ids) and all(container_state(backends("docker"), str(i))[0] != "running" for i in ids)
            if gone:
                ok = [remove(entry) for entry in entries if is_docker(entry) and not entry.get("reuse_hash")]
                if all(ok):  # else keep the record: it still names what remains
                    store.delete(store.env_file(str(record["id"])))
                    records += 1
        for record in store.reused():
            with store.lock(f"reuse-{record['hash']}"):
                entry = record["service"]
                docker_id = str(entry["snapshot"]["id"])
                running = container_state(backends("docker"), docker_id)[0] == "running" if is_docker(entry) else True
                if not running and remove(entry):
                    store.delete(store.reuse_file(str(record["hash"])))
                    records += 1
        only = dict(label.partition("=")[::2] for label in args.label)
        try:
            containers += backends("docker").prune(only=only, keep_alive=_still_wanted(args.force))
        except PruneIncomplete as incomplete:
            containers += incomplete.removed
            failures += incomplete.failures
    finally:
        backends.close()
    from ..backends.local import sweep_stale

    directories = sweep_stale()
    print(f"pruned {containers} container(s), {records} record(s), {directories} local server dir(s)")
    if failures:
        say(f"could not remove {len(failures)} container(s): {'; '.join(failures)}")
        return EXIT_FAILED
    return EXIT_OK


def _still_wanted(force: bool = False) -> Callable[[Mapping[str, str]], bool]:
    """Whether a container must survive ``prune``: its owner lives, or it is kept and still recorded.

    An owner is judged only from the machine boot and pid namespace it ran in (its
    ``svcenv.owner-host`` label): from anywhere else its pid means nothing, and its
    containers are spared unless ``force``. So is a kept one whose state dir this process
    cannot see (another mount namespace or machine).
    """
    from ..backends.base import (
        LABEL_ENVIRONMENT,
        LABEL_KEEP,
        LABEL_OWNER_HOST,
        LABEL_OWNER_PID,
        LABEL_OWNER_START,
        LABEL_STATE_DIR,
    )

    references: dict[str, set[str] | None] = {}

    def recorded(directory: str, env_id: str) -> bool:
        if directory not in references:
            path = Path(directory)
            try:
                # Not there: another mount namespace's or machine's, which this process cannot judge.
                references[directory] = StateDir(path, create=False).referenced_env_ids() if path.is_dir() else None
            except OSError:
                references[directory] = None  # unreadable: assume it still records it
        refs = references[directory]
        return refs is None or env_id in refs

    def keep_alive(labels: Mapping[str, str]) -> bool:
        where = labels.get(LABEL_OWNER_HOST)
        if where and where != owner_identity():
            return not force  # an owner elsewhere: its pid says nothing here
        owner = labels.get(LABEL_OWNER_PID, "")
        started = labels.get(LABEL_OWNER_START)
        if owner.isdigit() and process_alive(int(owner), started):
            return True
        kept = labels.get(LABEL_KEEP) == "true"
        return kept and not force and recorded(labels.get(LABEL_STATE_DIR, ""), labels.get(LABEL_ENVIRONMENT, ""))

    return keep_alive
