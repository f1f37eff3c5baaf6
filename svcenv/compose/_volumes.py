"""``volumes`` of a service: bind mounts, named and anonymous volumes, tmpfs mounts."""

from __future__ import annotations

from collections.abc import Mapping

from ._model import ComposeVolume
from ._values import Scope

__all__ = ["volumes"]

_VOLUME_TYPES = ("bind", "volume", "tmpfs")
_VOLUME_FLAGS = {"ro", "rw", "z", "Z", "nocopy", "consistent", "cached", "delegated"}
_PROPAGATION = {"shared", "slave", "private", "rshared", "rslave", "rprivate"}


def _short_volume(s: Scope, key: str, text: str) -> ComposeVolume:
    parts = text.split(":")
    if len(parts) == 1:
        return ComposeVolume("volume", _target(s, key, parts[0]))
    if len(parts) > 3:
        raise s.ctx.error(key, f"{text!r} is not a volume (forms: ./src:/dst, name:/dst, /dst, with :ro or :rw)")
    source, target = parts[0], _target(s, key, parts[1])
    flags = tuple(parts[2].split(",")) if len(parts) == 3 else ()
    for flag in flags:
        if flag not in _VOLUME_FLAGS | _PROPAGATION:
            raise s.ctx.error(key, f"{flag!r} in {text!r} is not a volume mode (ro, rw, z, Z, nocopy, rshared, ...)")
    options = tuple(f if f not in _PROPAGATION else f"propagation={f}" for f in flags if f not in ("ro", "rw"))
    if source.startswith((".", "/", "~")):
        return ComposeVolume("bind", target, s.ctx.path(source), "ro" in flags, options)
    return ComposeVolume("volume", target, _named(s, key, source), "ro" in flags, options)


def _target(s: Scope, key: str, target: str) -> str:
    if not target.startswith("/"):
        raise s.ctx.error(key, f"the container path {target!r} is not absolute")
    return target


def _named(s: Scope, key: str, name: str) -> str:
    if name not in s.volumes:
        declared = ", ".join(s.volumes) or "none"
        raise s.ctx.error(
            key, f"the volume {name!r} is not declared under the top-level volumes (declared: {declared})"
        )
    return name


_LONG_VOLUME = {
    "bind": ("create_host_path", "propagation", "selinux"),
    "volume": ("nocopy", "subpath"),
    "tmpfs": ("size", "mode"),
}


def volumes(s: Scope, key: str, value: object) -> tuple[ComposeVolume, ...]:
    """``volumes``: short (``./src:/dst:ro``, ``name:/dst``, ``/dst``) and long (``{type: bind, ...}``) forms."""
    if not isinstance(value, list):
        raise s.ctx.wrong(key, "a list of volumes", value)
    volumes = []
    for i, item in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(item, Mapping):
            volumes.append(_short_volume(s, where, s.ctx.string(where, item)))
            continue
        s.ctx.keys(where, item, ("type", "source", "target", "read_only", "consistency", *_LONG_VOLUME))
        kind = s.ctx.string(f"{where}.type", item.get("type", "volume"))
        if kind not in _VOLUME_TYPES:
            raise s.ctx.error(f"{where}.type", f"{kind!r}: svcenv supports {', '.join(_VOLUME_TYPES)}")
        target = _target(s, f"{where}.target", s.ctx.string(f"{where}.target", item.get("target")))
        source = s.ctx.string(f"{where}.source", item["source"]) if item.get("source") else None
        if kind == "bind":
            if source is None:
                raise s.ctx.error(f"{where}.source", "a bind mount needs a source")
            source = s.ctx.path(source)
        elif kind == "volume" and source is not None:
            source = _named(s, f"{where}.source", source)
        elif kind == "tmpfs" and source is not None:
            raise s.ctx.error(f"{where}.source", "a tmpfs mount has no source")
        options: list[str] = []
        for section in (k for k in _LONG_VOLUME if k in item):
            if section != kind:
                raise s.ctx.error(f"{where}.{section}", f"only for type {section}, not {kind}")
            sub = s.ctx.mapping(f"{where}.{section}", item[section])
            s.ctx.keys(f"{where}.{section}", sub, _LONG_VOLUME[section])
            for name, option in sub.items():
                if name == "size":
                    option = s.ctx.size(f"{where}.tmpfs.size", option)
                options.append(f"{name}={str(option).lower() if isinstance(option, bool) else option}")
        read_only = s.ctx.boolean(f"{where}.read_only", item.get("read_only", False))
        volumes.append(ComposeVolume(kind, target, source, read_only, tuple(options)))
    return tuple(volumes)
