"""``ports`` and ``expose`` of a service."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping

from ._model import ComposePort
from ._values import Scope

__all__ = ["expose", "ports"]

_PORT = re.compile(
    r"^(?:(?:(?P<ip>\[[0-9A-Fa-f:.]+\]|[0-9.]+):)?(?P<published>\d*(?:-\d+)?):)?"
    r"(?P<target>\d+(?:-\d+)?)(?:/(?P<protocol>tcp|udp|sctp))?$"
)
_PORT_FORMS = '"80", "8080:80", "127.0.0.1:8080:80/tcp", "8000-8001:8000-8001" or {target: 80, published: 8080}'


def _port_number(s: Scope, key: str, text: str) -> list[int]:
    first, _, last = text.partition("-")
    low, high = int(first), int(last or first)
    if not 0 < low <= high < 65536:
        raise s.ctx.error(key, f"port {text!r} is not in 1..65535")
    return list(range(low, high + 1))


def _short_port(s: Scope, key: str, item: object) -> list[ComposePort]:
    text = s.ctx.string(key, item)
    match = _PORT.match(text.strip())
    if not match:
        raise s.ctx.error(key, f"{text!r} is not a port (forms: {_PORT_FORMS})")
    targets = _port_number(s, key, match["target"])
    published = match["published"] or None
    host_ip = match["ip"].strip("[]") if match["ip"] else None
    if host_ip is not None:
        try:
            ipaddress.ip_address(host_ip)
        except ValueError:
            raise s.ctx.error(key, f"{host_ip!r} in {text!r} is not an IP address") from None
    hosts: list[str | None] = [published] * len(targets)
    if published and "-" in published:
        numbers = _port_number(s, key, published)
        if len(targets) > 1 and len(numbers) != len(targets):
            raise s.ctx.error(key, f"{text!r}: the host range and the container range differ in length")
        if len(targets) > 1:
            hosts = [str(n) for n in numbers]
    elif published:
        _port_number(s, key, published)
        if len(targets) > 1:
            raise s.ctx.error(key, f"{text!r}: a container port range needs a host port range of the same length")
    protocol = match["protocol"] or "tcp"
    return [ComposePort(t, h, host_ip, protocol) for t, h in zip(targets, hosts, strict=True)]


def ports(s: Scope, key: str, value: object) -> tuple[ComposePort, ...]:
    """``ports``: short (``"127.0.0.1:8080:80/tcp"``) and long (``{target: 80}``) forms; ranges expanded."""
    if not isinstance(value, list):
        raise s.ctx.wrong(key, f"a list of ports ({_PORT_FORMS})", value)
    ports: list[ComposePort] = []
    for i, item in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(item, Mapping):
            ports += _short_port(s, where, item)
            continue
        s.ctx.keys(where, item, ("target", "published", "host_ip", "protocol", "mode", "name", "app_protocol"))
        if "target" not in item:
            raise s.ctx.error(where, "a port in the long form needs a target")
        target = s.ctx.integer(f"{where}.target", item["target"], minimum=1)
        _port_number(s, f"{where}.target", str(target))
        published = s.ctx.string(f"{where}.published", item["published"]) if item.get("published") else None
        if published is not None and not re.fullmatch(r"\d+(-\d+)?", published):
            raise s.ctx.error(f"{where}.published", f"{published!r} is not a port or port range")
        protocol = s.ctx.string(f"{where}.protocol", item.get("protocol", "tcp"))
        if protocol not in ("tcp", "udp", "sctp"):
            raise s.ctx.error(f"{where}.protocol", f"{protocol!r} is not tcp, udp or sctp")
        host_ip = s.ctx.string(f"{where}.host_ip", item["host_ip"]) if item.get("host_ip") else None
        ports.append(ComposePort(target, published, host_ip, protocol))
    return tuple(ports)


def expose(s: Scope, key: str, value: object) -> tuple[ComposePort, ...]:
    """``expose``: container ports (``3000``, ``"8000-8010"``, ``"53/udp"``), never published by Compose."""
    if not isinstance(value, list):
        raise s.ctx.wrong(key, 'a list of container ports ("3000", "8000-8010", "53/udp")', value)
    exposed: list[ComposePort] = []
    for i, item in enumerate(value):
        text = s.ctx.string(f"{key}[{i}]", item)
        match = re.fullmatch(r"(\d+(?:-\d+)?)(?:/(tcp|udp|sctp))?", text.strip())
        if not match:
            raise s.ctx.error(f"{key}[{i}]", f"{text!r} is not a container port (forms: 3000, 8000-8010, 53/udp)")
        exposed += [ComposePort(p, protocol=match[2] or "tcp") for p in _port_number(s, f"{key}[{i}]", match[1])]
    return tuple(exposed)
