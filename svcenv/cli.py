"""``python -m svcenv``: start services for a shell or another program.

Exit codes: 0 success (``up`` stopped by Ctrl-C/SIGTERM counts as success),
1 a service failed to start or no backend is available, 2 bad usage.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType

from .backends import Backend
from .descriptors import Elasticsearch, Postgres, Redis, Service
from .environment import Environment
from .errors import ConfigurationError, SvcenvError

KINDS: dict[str, Callable[[], Service]] = {"postgres": Postgres, "redis": Redis, "elasticsearch": Elasticsearch}
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _Terminated(Exception):
    """SIGTERM arrived: leave like Ctrl-C, tearing everything down."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m svcenv", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    up = commands.add_parser(
        "up",
        help="start services, print how to reach them, stay up until Ctrl-C",
        description="Start services in parallel, print their variables as dotenv lines on stdout "
        "(progress goes to stderr), and keep them up until Ctrl-C or SIGTERM, then remove them.",
    )
    up.add_argument("services", nargs="*", metavar="SERVICE", help=f"one of {', '.join(KINDS)} (default: all)")
    up.add_argument("--backend", default=None, help="auto (default, or $SVCENV_BACKEND), docker, local or external")
    up.add_argument("--timeout", type=float, default=None, help="seconds each service gets to become ready")
    doctor = commands.add_parser(
        "doctor",
        help="show which backends can run each service here",
        description="For each service, say which backends can run it on this machine and which one "
        "`auto` would pick. Exits 1 if a requested service has no backend.",
    )
    doctor.add_argument("services", nargs="*", metavar="SERVICE", help=f"one of {', '.join(KINDS)} (default: all)")
    cache = commands.add_parser(
        "cache",
        help="list or clear the pre-initialised Postgres images",
        description="svcenv keeps one pre-initialised Postgres image per configuration on the Docker engine "
        "(svcenv-cache/postgres:<key>); fresh instances start from it. `list` shows them, `clear` removes them.",
    )
    cache.add_argument("action", choices=("list", "clear"))
    return parser


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


def _services(names: Sequence[str]) -> list[Service]:
    unknown = [n for n in names if n not in KINDS]
    if unknown:
        raise _UsageError(f"unknown service {', '.join(map(repr, unknown))}; known services: {', '.join(KINDS)}")
    return [KINDS[name]() for name in dict.fromkeys(names or KINDS)]


class _UsageError(Exception):
    pass


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


def cmd_up(args: argparse.Namespace) -> int:
    """Start, print dotenv lines, wait for Ctrl-C/SIGTERM, tear down."""
    services = _services(args.services)
    env = Environment(*services, backend=args.backend, timeout=args.timeout)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
        # A shell starts background jobs with SIGINT ignored; `up` promises to stop on it.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    names = ", ".join(s.name for s in services)
    print(f"svcenv: starting {names} ...", file=sys.stderr, flush=True)
    started = time.monotonic()
    try:
        env.start()
        for name, timing in env.timings.items():
            handle = env[name]
            print(
                f"svcenv: {name:<14} ready in {timing.total_s:5.2f}s  {handle.host}:{handle.port}  ({handle.backend})",
                file=sys.stderr,
            )
        print(f"svcenv: all ready in {time.monotonic() - started:.2f}s; environment {env.id}", file=sys.stderr)
        for key, value in env.env_vars().items():
            print(f"{key}={value}")
        sys.stdout.flush()
        print("svcenv: press Ctrl-C to stop and remove them", file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, _Terminated):
        print("\nsvcenv: stopping ...", file=sys.stderr, flush=True)
        return EXIT_OK
    finally:
        env.stop()
        if env.state == "stopped":
            print("svcenv: stopped; nothing left running", file=sys.stderr, flush=True)


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

    backends = {name: get_backend(name) for name in AUTO_ORDER}
    unserved = []
    for service in _services(args.services):
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
        print(f"svcenv: no backend can run: {', '.join(unserved)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "doctor":
            return cmd_doctor(args)
        if args.command == "cache":
            return cmd_cache(args)
        return cmd_up(args)
    except (_UsageError, ConfigurationError) as exc:
        parser.print_usage(sys.stderr)
        print(f"svcenv: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SvcenvError as exc:
        if args.debug:
            raise
        print(f"svcenv: error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
