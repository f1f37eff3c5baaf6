"""``doctor`` and ``cache``."""

from __future__ import annotations

import argparse

from ..backends import Backend
from ..descriptors import Service
from ._common import EXIT_FAILED, EXIT_OK, project_config, say
from ._start import select_services

# -- doctor, cache ------------------------------------------------------------------------------


def cmd_cache(args: argparse.Namespace) -> int:
    """List or remove the pre-initialised Postgres images."""
    from ..backends import get_backend
    from ..backends.docker import DockerBackend

    backend = get_backend("docker")
    try:
        assert isinstance(backend, DockerBackend)
        backend.check()
        if args.action == "clear":
            print(f"removed {backend.clear_cache()} cached image(s), {backend.clear_builds()} built image(s)")
            return EXIT_OK
        rows = backend.cached_images()
        if not rows:
            print("no cached Postgres images")
        for row in rows:
            print(f"{row['image']}  base {row['base']}  {row['size_mb']} MB  created {row['created'][:19]}")
        for row in backend.built_images():
            print(f"{row['image']}  built for build=  {row['size_mb']} MB  created {row['created'][:19]}")
        return EXIT_OK
    finally:
        backend.close()


def _backend_details(name: str, backend: Backend, service: Service) -> str:
    """What a backend would use for ``service``: the image, the binaries, or the URL."""
    if name == "docker":
        details = f"image {service.effective_image}"
        heap = getattr(service, "heap", None)
        if service.kind == "elasticsearch" and isinstance(heap, str):
            details += f"; needs about twice its heap ({heap}) of container memory"
        return details
    if name == "local":
        return backend.capabilities().get(service.kind, "")
    from ..backends.external import configured_url, redact

    url = configured_url(service.name)
    return redact(url) if url else ""


def cmd_doctor(args: argparse.Namespace) -> int:
    """Print, per service, which backends can run it and what `auto` picks.

    With no names: every service the project knows (all kinds svcenv knows without a config file).
    """
    from ..backends import AUTO_ORDER, get_backend

    config = project_config(args)
    services = select_services(config, args.services or config.known)
    backends = {name: get_backend(name) for name in AUTO_ORDER}
    unserved = []
    try:
        for name, backend in backends.items():
            for line in backend.describe():
                print(f"# {name}: {line}")
        for service in services:
            verdicts = {name: backend.supports(service) for name, backend in backends.items()}
            missing = {name: backends[name].image_problem(service) for name in AUTO_ORDER if verdicts[name] is None}
            usable = [name for name in AUTO_ORDER if verdicts[name] is None]
            doomed = bool(usable) and "forbids pulling" in (missing.get(usable[0]) or "")
            if not usable:
                print(f"{service.name}: auto uses NOTHING (no backend can run it)")
            elif doomed:
                print(f"{service.name}: auto uses {usable[0]}, but its image is missing: starting it fails")
            else:
                print(f"{service.name}: auto uses {usable[0]}")
            for name in AUTO_ORDER:
                reason = verdicts[name]
                problem = missing.get(name)
                if reason is not None:
                    print(f"  {name:<9} no   {reason.removeprefix(name + ': ')}")
                elif problem is not None and "forbids pulling" in problem:
                    print(f"  {name:<9} no   {problem}")
                elif problem is not None:
                    print(f"  {name:<9} ok   {problem}")
                else:
                    print(f"  {name:<9} ok   {_backend_details(name, backends[name], service)}")
            if not usable or doomed:
                unserved.append(service.name)
    finally:
        for backend in backends.values():
            backend.close()
    if unserved:
        say(f"no backend can run: {', '.join(unserved)}")
        return EXIT_FAILED
    return EXIT_OK
