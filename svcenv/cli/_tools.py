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
            print(f"removed {backend.clear_cache()} cached image(s)")
            return EXIT_OK
        rows = backend.cached_images()
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
    from ..backends.external import configured_url, redact

    url = configured_url(service.name)
    return redact(url) if url else ""


def cmd_doctor(args: argparse.Namespace) -> int:
    """Print, per service, which backends can run it and what `auto` picks."""
    from ..backends import AUTO_ORDER, get_backend

    services = select_services(project_config(args), args.services)
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
        say(f"no backend can run: {', '.join(unserved)}")
        return EXIT_FAILED
    return EXIT_OK
