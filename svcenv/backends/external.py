"""The external backend: services that already run elsewhere, given by URL.

For CI service containers, a shared development database, or anything else
svcenv did not start. Each service's URL comes from ``ExternalBackend(urls={name:
url})``, else from the environment variable ``SVCENV_<NAME>_URL`` (``NAME`` is the
service name upper-cased, other characters as ``_``: ``SVCENV_POSTGRES_URL``,
``SVCENV_PG_REPLICA_URL``), read when the service is created.

What each kind accepts (credentials in the URL win over the descriptor's; what
the URL leaves out comes from the descriptor):

* Postgres: ``postgresql://`` or ``postgres://user:password@host:port/dbname``
  (port 5432 by default). The descriptor's generated password is never used.
* Redis: ``redis://`` or ``rediss://[user:]password@host:port/db`` (port 6379, db 0).
* MySQL/MariaDB: ``mysql://user:password@host:port/dbname`` (port 3306), like Postgres.
* Elasticsearch: ``http://host:port`` or ``https://host[:port]`` (443), no
  credentials and no path prefix: svcenv speaks unauthenticated HTTP to it.
* A generic :class:`~svcenv.Service`: ``anyscheme://host:port``; the port maps
  to the descriptor's first port.

Query strings and fragments are refused rather than silently dropped. A URL
that does not fit raises :class:`~svcenv.errors.ConfigurationError`, which shows
the URL with its password as ``***``.

svcenv did not create these services, so it never stops, drops or flushes
anything in them: ``stop()`` and ``cleanup()`` do nothing, and tests must clean
up their own data. The readiness probe still runs, so a wrong password or an
unreachable host fails the start with the probe's last error.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, unquote, urlsplit

from ..descriptors import Service
from ..errors import BackendUnavailable, ConfigurationError
from ..handles import env_prefix
from .base import AttachedInstance, Backend, Instance

if TYPE_CHECKING:
    from ..descriptors import Resolved

__all__ = [
    "ExternalBackend",
    "ExternalInstance",
    "ExternalTarget",
    "configured_url",
    "parse_url",
    "redact",
    "url_variable",
]

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_ANY_URL_VARIABLE = re.compile(r"SVCENV_[A-Z0-9_]+_URL")


def url_variable(service_name: str) -> str:
    """The variable that holds a service's URL: ``"pg-replica"`` -> ``"SVCENV_PG_REPLICA_URL"``."""
    return f"SVCENV_{env_prefix(service_name)}_URL"


def configured_url(service_name: str) -> str | None:
    """The URL ``SVCENV_<NAME>_URL`` gives for a service, or ``None`` if it is unset or empty."""
    return os.environ.get(url_variable(service_name)) or None


def redact(url: str) -> str:
    """``url`` fit to print: its password and query values as ``***``, its fragment dropped.

    Errs towards hiding: a malformed URL may carry its password where a
    well-formed one would not, so everything before the last ``@`` is treated as
    user information, and a non-numeric "port" is hidden too.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        return "(not shown: not of the form scheme://host)"
    userinfo, at, after = rest.rpartition("@")
    if at:
        user, colon, _password = userinfo.partition(":")
        return f"{scheme}://{user}{':***' if colon else ''}@{_redact_tail(after)}"
    netloc = re.match(r"[^/?#]*", rest)
    host, colon, port = (netloc[0] if netloc else "").rpartition(":")
    if colon and not port.isdigit() and not port.endswith("]"):
        return f"{scheme}://{host}:***"
    return f"{scheme}://{_redact_tail(rest)}"


def _redact_tail(text: str) -> str:
    """``host:port/path?a=1`` -> ``host:port/path?a=***``."""
    before, question, query = text.partition("#")[0].partition("?")
    if not question:
        return before
    keys = [pair.partition("=")[0] for pair in query.split("&") if pair]
    return before + "?" + "&".join(f"{key}=***" for key in keys)


@dataclass(frozen=True)
class ExternalTarget:
    """Where an external service listens and how to log in, as its URL says."""

    scheme: str
    host: str
    port: int
    credentials: Mapping[str, str] = field(repr=False)
    """Connection details the handle uses: ``scheme`` and, by kind, ``user``, ``password``, ``dbname``, ``db``."""
    display: str
    """The URL with its password as ``***``."""


class _Invalid:
    """Builds the ConfigurationError for one URL: names the service and its source, never the password."""

    def __init__(self, service: Service, url: str, source: str) -> None:
        self._prefix = f"service {service.name!r}: {source}={redact(url)}"

    def __call__(self, problem: str) -> ConfigurationError:
        return ConfigurationError(f"{self._prefix} {problem}")


def parse_url(service: Service, url: str, source: str = "the URL") -> ExternalTarget:
    """Parse and check ``url`` for ``service``; ``source`` says where it came from (for errors).

    Raises :class:`~svcenv.errors.ConfigurationError` if the URL does not fit the service's kind.
    """
    invalid = _Invalid(service, url, source)
    if "://" not in url:
        raise invalid("is not a URL of the form scheme://host:port")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise invalid(f"cannot be parsed ({exc})") from None
    scheme = _check_scheme(service, parts.scheme, invalid)
    if "@" not in parts.netloc and "@" in url.partition("://")[2]:
        raise invalid(
            "has an '@' after the host: percent-encode special characters in the user and password "
            "('@' as %40, '/' as %2F, ':' as %3A, '?' as %3F, '#' as %23)"
        )
    host = _check_host(parts, invalid)
    port = _check_port(service, scheme, parts, invalid)
    _check_no_query(service, parts, invalid)
    credentials = {"scheme": scheme, **_credentials(service, parts, invalid)}
    return ExternalTarget(scheme, host, port, credentials, redact(url))


def _check_scheme(service: Service, scheme: str, invalid: _Invalid) -> str:
    allowed = service.url_schemes
    if allowed:
        if scheme not in allowed:
            expected = " or ".join(f"{s}://" for s in allowed)
            raise invalid(f"has scheme {scheme!r}; a {service.kind} URL starts with {expected}")
        return service.canonical_url_scheme or scheme
    if not _SCHEME.fullmatch(scheme):
        raise invalid("has no valid scheme")
    return scheme


def _check_host(parts: SplitResult, invalid: _Invalid) -> str:
    host = parts.hostname
    if not host:
        raise invalid("names no host")
    if ":" in host:
        # The handles write f"{host}:{port}" into URLs, which breaks on an IPv6 literal.
        raise invalid("names an IPv6 address, which svcenv cannot use yet; use a host name")
    return host


def _check_port(service: Service, scheme: str, parts: SplitResult, invalid: _Invalid) -> int:
    try:
        port = parts.port
    except ValueError:
        raise invalid("has a port that is not a number in 1..65535") from None
    if port is None:
        port = service.external_default_port(scheme)
    if port is None:
        raise invalid("names no port (scheme://host:port)")
    if port == 0:
        raise invalid("has port 0")
    return port


def _check_no_query(service: Service, parts: SplitResult, invalid: _Invalid) -> None:
    if parts.query:
        keys = sorted({pair.partition("=")[0] for pair in parts.query.split("&") if pair})
        raise invalid(f"has query parameters ({', '.join(keys)}), which svcenv cannot pass on{service.url_query_hint}")
    if parts.fragment:
        raise invalid("has a fragment ('#...'), which svcenv cannot pass on")


def _credentials(service: Service, parts: SplitResult, invalid: _Invalid) -> dict[str, str]:
    """What the URL's user, password and path give the service (the kind decides: :meth:`Service.url_credentials`)."""
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    try:
        return service.url_credentials(user, password, parts.path.removeprefix("/"))
    except ValueError as exc:
        raise invalid(str(exc)) from None


class ExternalInstance(Instance):
    """A service that runs outside svcenv. Starting and stopping it do nothing."""

    backend = "external"

    def __init__(self, target: ExternalTarget, service_port: int | None) -> None:
        self.target = target
        self.id = target.display
        self.host = target.host
        self.ports = {service_port: target.port} if service_port is not None else {}
        self.credentials: dict[str, str] = dict(target.credentials)
        """What the handle connects with (see :attr:`ExternalTarget.credentials`); wins over the descriptor's."""

    def start(self) -> None:
        """Nothing to start: the service runs already (the readiness probe still runs)."""

    def stop(self) -> None:
        """Nothing to stop: svcenv did not start the service, so it leaves it and its data alone."""

    def exit_status(self) -> int | None:
        """Always ``None``: svcenv cannot see the process of an external service."""
        return None

    def logs(self, tail: int | None = None) -> str:
        """A note that the log is not available: it is kept wherever the service runs."""
        return f"(the log of external service {self.id} is not available to svcenv)"


class ExternalBackend(Backend):
    """Connects to services that already run, by URL; creates, stops and removes nothing.

    ``urls`` maps service names to URLs and wins over ``SVCENV_<NAME>_URL``.
    """

    name = "external"
    outlives_owner = True  # svcenv never stops them

    def __init__(self, urls: Mapping[str, str] | None = None) -> None:
        self._urls = dict(urls or {})

    def url_for(self, service_name: str) -> tuple[str, str] | None:
        """``(url, where it came from)`` for a service, or ``None`` if none is configured."""
        url = self._urls.get(service_name)
        if url:
            return url, f"urls[{service_name!r}]"
        url = configured_url(service_name)
        if url:
            return url, url_variable(service_name)
        return None

    def supports(self, service: Service | str) -> str | None:
        """``None`` if a URL is configured for the service, else why not (e.g. "SVCENV_POSTGRES_URL is not set")."""
        service_name = service if isinstance(service, str) else service.name
        if self.url_for(service_name) is not None:
            return None
        reason = f"{url_variable(service_name)} is not set"
        if self._urls:
            reason += f" and ExternalBackend(urls=...) has no entry for {service_name!r}"
        return reason

    def check(self) -> None:
        """Raise :class:`~svcenv.errors.BackendUnavailable` if no URL is configured for any service."""
        if any(self._urls.values()):
            return
        if any(value and _ANY_URL_VARIABLE.fullmatch(key) for key, value in os.environ.items()):
            return
        raise BackendUnavailable(
            "external: no service URL is configured; set SVCENV_<NAME>_URL for each service "
            "(e.g. SVCENV_POSTGRES_URL=postgresql://user:password@host:5432/dbname) "
            "or pass ExternalBackend(urls={name: url})"
        )

    def create(self, resolved: Resolved, labels: Mapping[str, str]) -> ExternalInstance:
        """An instance for the running service the URL names (nothing is created)."""
        found = self.url_for(resolved.name)
        if found is None:
            raise BackendUnavailable(
                f"external: service {resolved.name!r} has no URL: {self.supports(resolved.name)}; "
                f"set it to the running service's URL, e.g. {url_variable(resolved.name)}={_example(resolved.service)}"
            )
        url, source = found
        target = parse_url(resolved.service, url, source)
        return ExternalInstance(target, resolved.ports[0] if resolved.ports else None)

    def cleanup(self, labels: Mapping[str, str]) -> int:
        """Nothing to remove: svcenv made nothing. Returns 0."""
        return 0

    def attach(self, snapshot: Mapping[str, Any]) -> Instance:
        """The running service a snapshot names; nothing to stop or remove."""
        return AttachedInstance.from_snapshot(snapshot)


def _example(service: Service) -> str:
    return service.example_url or f"{service.scheme}://host:port"
