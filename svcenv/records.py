"""Specs: one service's configuration as JSON-able data, and the descriptor it describes.

A *spec* is what ``[tool.svcenv.services.NAME]`` says after checking (``name``,
``kind`` and the kind's keys), and what state files and reuse records keep of a
descriptor. :func:`build_service` makes the descriptor; :func:`spec_of`
describes one, every probe svcenv ships included (as a record of
:func:`svcenv.probes.to_record`), and refuses a probe it cannot describe.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

from .container import CONTAINER_FIELDS, from_spec_value, spec_value
from .descriptors import KINDS, Service
from .probes import HTTP, TCP, AllOf, Command, LogLine, Probe, from_record, to_record

__all__ = ["Spec", "build_service", "spec_of"]

Spec = dict[str, Any]
"""One service's configuration, JSON-able: ``{"name": ..., "kind": ..., ...}``."""


def _build_probe(items: Sequence[Mapping[str, Any]]) -> Probe | None:
    """A probe from spec items: the file's forms (``{tcp = true}``, ...) or records (``{"probe": "TCP", ...}``)."""
    probes: list[Probe] = []
    for item in items:
        if "probe" in item:
            probes.append(from_record(item))
        elif "tcp" in item:
            probes.append(TCP(port=None if item["tcp"] is True else int(item["tcp"])))
        elif "http" in item:
            probes.append(HTTP(item["http"], status=int(item.get("status", 200)), port=item.get("port")))
        elif "log" in item:
            probes.append(LogLine(item["log"], times=int(item.get("times", 1))))
        elif "command" in item:
            probes.append(Command(item["command"], exit_code=int(item.get("exit_code", 0))))
    if not probes:
        return None
    return probes[0] if len(probes) == 1 else AllOf(tuple(probes))


def _probe_spec(probe: Probe | None) -> list[dict[str, Any]] | None:
    """A probe as spec items (records, which keep every field); None for the kind's default.

    A probe svcenv does not ship cannot be described: ConfigurationError says so.
    """
    if probe is None:
        return None
    parts = probe.probes if isinstance(probe, AllOf) else (probe,)
    return [to_record(part) for part in parts]


def _image_for_version(kind: type[Service], version: str) -> str:
    base = os.environ.get(f"SVCENV_{kind.kind.upper()}_IMAGE") or kind.default_image or ""
    repository = base.rsplit(":", 1)[0] if ":" in base.rsplit("/", 1)[-1] else base
    return f"{repository}:{version}"


def build_service(spec: Mapping[str, Any]) -> Service:
    """The descriptor a spec describes (raises :class:`ConfigurationError` for impossible values)."""
    kind = KINDS[spec.get("kind", "service")]
    names = {f.name for f in fields(kind)}
    kwargs: dict[str, Any] = {}
    for key, value in spec.items():
        if key in ("kind", "version"):
            continue
        if key == "probe":
            kwargs["probe"] = _build_probe(value)
        elif key in ("ports", "depends_on", "tmpfs", "command"):
            kwargs[key] = tuple(value)
        elif key in CONTAINER_FIELDS:
            kwargs[key] = from_spec_value(key, value)
        elif key in names:
            kwargs[key] = value
    if "version" in spec and "image" not in spec:
        kwargs["image"] = _image_for_version(kind, str(spec["version"]))
    return kind(**kwargs)


def spec_of(service: Service) -> Spec:
    """``service`` as a spec, its image made concrete (``SVCENV_<KIND>_IMAGE`` read now).

    Two descriptors that would run the same server have equal specs; this is
    what reuse hashes. A given password is part of it; a generated one is not.
    """
    spec: Spec = {"kind": service.kind if KINDS.get(service.kind) is type(service) else "service"}
    for f in fields(service):
        value = getattr(service, f.name)
        if f.name == "probe":
            value = _probe_spec(value)
        elif f.name in CONTAINER_FIELDS:
            value = spec_value(service, f.name)
        elif isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, Mapping):
            value = dict(value)
        if value is not None:
            spec[f.name] = value
    # A built image is named by its build (and tagged when it is built); a local command has none.
    if service.build is None and not service.imageless:
        spec["image"] = service.effective_image
    return spec
