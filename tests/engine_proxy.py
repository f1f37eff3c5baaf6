"""A fault-injecting proxy in front of the real Docker engine, for the teardown fault tests.

Everything the tests do goes to the real engine (``/var/run/docker.sock``): real
containers, real networks, real probes. The only faults that cannot be produced
for real on a healthy engine are an engine that refuses to remove things and an
engine that stops answering; this proxy injects exactly those, per request:

* ``refuse_deletes``: any ``DELETE`` (containers, networks, volumes) and any
  ``POST /containers/<id>/kill`` or ``/stop`` is answered ``500`` with a JSON
  ``{"message": "injected by the test proxy: refused"}``; every other request
  goes through.
* ``hang``: every request's head is read and never answered; the connection stays
  open until hang is turned off or the proxy closes (then it is closed, unanswered).
* normal: every request goes through.

And, in any mode, ``fail_copies(n)``: the next ``n`` file copies into a container (``PUT
/containers/<id>/archive``) are answered ``500``, as Podman 4.3 now and then answers one under
load ("passing bulk input to subprocess: write |1: broken pipe").

Each client connection carries one request: unless the request asks for an
``Upgrade`` (attach, exec), its ``Connection`` header is rewritten to ``close``,
so the engine closes the connection after its answer and the next request comes
on a new connection, where the mode in force at that moment applies. After the
head, bytes are piped both ways until the engine's side closes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from .procs import reapers_of_engine, signal_all, wait_gone

REAL_ENGINE = "/var/run/docker.sock"
REFUSED_MESSAGE = "injected by the test proxy: refused"
_HEAD_LIMIT = 1 << 16
_TICK = 0.1
_STOP_OR_KILL = re.compile(r"^(?:/v[0-9.]+)?/containers/[^/]+/(?:kill|stop)$")


def _upstream_path() -> str:
    """The real engine's socket: ``DOCKER_HOST`` if it names a unix socket, else the default one."""
    host = os.environ.get("DOCKER_HOST", "")
    return host.removeprefix("unix://") if host.startswith("unix://") else REAL_ENGINE


class EngineProxy:
    """The proxy: ``url`` is its ``DOCKER_HOST``; ``refuse_deletes()``, ``hang()``, ``normal()`` set the mode."""

    def __init__(self, upstream: str | None = None) -> None:
        self.upstream = upstream or _upstream_path()
        # A short directory of its own: a unix socket path must stay under ~108 bytes.
        self._dir = Path(tempfile.mkdtemp(prefix="svcenv-proxy-"))
        self.path = str(self._dir / "docker.sock")
        self.url = f"unix://{self.path}"
        self._cond = threading.Condition()
        self._mode = "normal"
        self._closed = False
        self._sockets: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._copies_to_fail = 0
        self.seen: list[tuple[str, str, str]] = []
        """``(method, path, what the proxy did)`` for every request: forwarded, refused, hung or failed."""
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(64)
        self._listener.settimeout(_TICK)
        self._acceptor = threading.Thread(target=self._accept_loop, name="engine-proxy-accept", daemon=True)
        self._acceptor.start()

    # -- modes ------------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        with self._cond:
            return self._mode

    def set_mode(self, mode: str) -> None:
        if mode not in ("normal", "refuse_deletes", "hang"):
            raise ValueError(f"unknown proxy mode {mode!r}")
        with self._cond:
            self._mode = mode
            self._cond.notify_all()  # hung connections are released when hang is turned off

    def refuse_deletes(self, on: bool = True) -> None:
        self.set_mode("refuse_deletes" if on else "normal")

    def hang(self, on: bool = True) -> None:
        self.set_mode("hang" if on else "normal")

    def normal(self) -> None:
        self.set_mode("normal")

    def fail_copies(self, n: int) -> None:
        """Answer the next ``n`` copies into a container (``PUT …/archive``) with a 500."""
        with self._cond:
            self._copies_to_fail = n

    def _fails_copy(self, method: str, path: str) -> bool:
        with self._cond:
            if method == "PUT" and path.endswith("/archive") and self._copies_to_fail > 0:
                self._copies_to_fail -= 1
                return True
            return False

    def count(self, what: str) -> int:
        """How many requests the proxy treated as ``what`` (``forwarded``, ``refused``, ``hung``)."""
        with self._cond:
            return sum(1 for *_, done in self.seen if done == what)

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Stop accepting, release hung connections, cut every pipe and join the threads."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)
        self._acceptor.join(5)
        self._listener.close()
        for thread in list(self._threads):
            thread.join(5)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> EngineProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    # -- connections ------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self.closed:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(client,), name="engine-proxy-conn", daemon=True)
            with self._cond:
                if self._closed:
                    client.close()
                    return
                self._sockets.add(client)
                self._threads.add(thread)
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            client.settimeout(_TICK)
            read = self._read_head(client)
            if read is None:
                return
            head, rest = read
            method, path, lines = _parse(head)
            mode = self.mode
            if mode == "hang":
                self._record(method, path, "hung")
                with self._cond:
                    while self._mode == "hang" and not self._closed:
                        self._cond.wait(_TICK)
                return  # released: closed without an answer
            if (mode == "refuse_deletes" and _refused(method, path)) or self._fails_copy(method, path):
                self._record(method, path, "refused")
                _refuse(client)
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            with self._cond:
                if self._closed:
                    return
                self._sockets.add(upstream)
            upstream.connect(self.upstream)
            upstream.sendall(_rewrite(lines) + rest)
            self._record(method, path, "forwarded")
            self._pipe(client, upstream)
        except OSError:
            return
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    _shut(sock)
                    sock.close()
                    with self._cond:
                        self._sockets.discard(sock)
            with self._cond:
                self._threads.discard(threading.current_thread())

    def _read_head(self, client: socket.socket) -> tuple[bytes, bytes] | None:
        data = b""
        while b"\r\n\r\n" not in data:
            if self.closed or len(data) > _HEAD_LIMIT:
                return None
            try:
                chunk = client.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                return None
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        return head, rest

    def _pipe(self, client: socket.socket, upstream: socket.socket) -> None:
        """Bytes both ways until the engine's side ends (the client's end only half-closes toward it)."""
        upstream.settimeout(None)
        client.settimeout(None)
        peer = {client: upstream, upstream: client}
        with selectors.DefaultSelector() as selector:
            selector.register(client, selectors.EVENT_READ)
            selector.register(upstream, selectors.EVENT_READ)
            while not self.closed:
                for key, _ in selector.select(_TICK):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    chunk = sock.recv(65536)
                    if chunk:
                        peer[sock].sendall(chunk)
                    elif sock is upstream:
                        return  # the engine has answered and closed
                    else:
                        selector.unregister(client)  # the client is done sending: tell the engine
                        upstream.shutdown(socket.SHUT_WR)

    def _record(self, method: str, path: str, what: str) -> None:
        with self._cond:
            self.seen.append((method, path, what))


def _parse(head: bytes) -> tuple[str, str, list[str]]:
    lines = head.decode("latin-1").split("\r\n")
    method, _, rest = lines[0].partition(" ")
    target = rest.rsplit(" ", 1)[0]
    return method.upper(), target.split("?", 1)[0], lines


def _rewrite(lines: list[str]) -> bytes:
    """The head with ``Connection: close``, unless it asks for an ``Upgrade`` (then unchanged)."""
    names = [line.partition(":")[0].strip().lower() for line in lines[1:]]
    if "upgrade" not in names:
        kept = [line for line, name in zip(lines[1:], names, strict=True) if name not in ("connection", "keep-alive")]
        lines = [lines[0], *kept, "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _refused(method: str, path: str) -> bool:
    return method == "DELETE" or (method == "POST" and _STOP_OR_KILL.match(path) is not None)


def _refuse(client: socket.socket) -> None:
    body = json.dumps({"message": REFUSED_MESSAGE}).encode()
    client.settimeout(5)
    client.sendall(
        b"HTTP/1.1 500 Internal Server Error\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n"
        b"Connection: close\r\n\r\n" + body
    )
    client.shutdown(socket.SHUT_WR)
    with contextlib.suppress(OSError):  # let the client read the answer and close first (unread input resets)
        while client.recv(65536):
            pass


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture(name="engine_proxy")
def engine_proxy_fixture(monkeypatch: pytest.MonkeyPatch) -> Iterator[EngineProxy]:
    """An :class:`EngineProxy` in normal mode, with ``DOCKER_HOST`` pointing at it for the test."""
    # Restored when this fixture ends, before `leaks` counts leftovers, in whatever order plugins
    # (pytest-django's autouse fixtures) made pytest set `monkeypatch` up.
    with EngineProxy() as proxy, monkeypatch.context() as patch:
        patch.setenv("DOCKER_HOST", proxy.url)
        yield proxy
        # A reaper left armed (the test's point, often) reaps through the healed proxy and ends; one
        # that outlived its owner would otherwise retry against a closed socket for 600 s.
        proxy.normal()
        left = wait_gone(reapers_of_engine(proxy.url), 20)
        signal_all(left, signal.SIGKILL)  # processes this test made (through the owner), by pid
        assert not left, f"reapers {left} still ran 20 s after the proxy was healed"
