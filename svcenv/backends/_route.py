"""Whether this host reaches an address straight over one of its own interfaces.

A container on a local Linux engine's bridge network has an address that the
host itself routes to over the bridge: connecting there skips the engine's
port proxy (``docker-proxy``, a userland copy of every byte, ~0.3 ms a round
trip here). svcenv's own clients use it only when the host's main IPv4 routing
table says so for *this* network namespace: the most specific route for the
address goes out of the network's bridge interface with no gateway. A remote
engine's bridges, a rootless engine's (in another namespace) and a Docker
Desktop VM's are not in that table, so they are never used.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from pathlib import Path

from .._util import flag

__all__ = ["DIRECT_ENV", "answers", "direct_wanted", "routes_directly"]

DIRECT_ENV = "SVCENV_DIRECT"
"""``0`` keeps svcenv's own clients on the published ``host:port`` (through the engine's port proxy)."""

ROUTES = Path("/proc/net/route")
_RTF_UP, _RTF_GATEWAY = 0x1, 0x2


def direct_wanted() -> bool:
    """Whether svcenv's clients may connect straight to containers (``SVCENV_DIRECT``, default on)."""
    return flag(DIRECT_ENV, default=True)


def routes_directly(address: str, interface: str, table: str | None = None) -> bool:
    """True when the most specific route of ``table`` (default: this host's ``/proc/net/route``) for
    ``address`` is up, goes out of ``interface`` and has no gateway."""
    try:
        wanted = struct.unpack("<I", ipaddress.IPv4Address(address).packed)[0]  # the table's byte order
        text = ROUTES.read_text() if table is None else table
    except (OSError, ValueError):
        return False
    best: tuple[int, str, int, int] | None = None
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            destination, gateway, flags, mask = (int(fields[i], 16) for i in (1, 2, 3, 7))
        except ValueError:
            continue
        if not flags & _RTF_UP or wanted & mask != destination:
            continue
        length = bin(mask).count("1")
        if best is None or length > best[0]:
            best = (length, fields[0], gateway, flags)
    return best is not None and best[1] == interface and best[2] == 0 and not best[3] & _RTF_GATEWAY


def answers(address: str, port: int, timeout: float = 0.25) -> bool:
    """Whether something at ``address`` answers a TCP connect to ``port``: accepted, or refused by its
    kernel (nothing listens there yet). No answer within ``timeout``, or unreachable, is False."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
