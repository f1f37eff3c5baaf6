"""A second Docker engine on a test host of the tests' own: ``dockerd`` in a network namespace.

The ``remote_engine`` fixture (session scope) makes a network namespace
``svcenv-remote-<random>`` joined to this host by a veth pair (host side
``10.211.A.B+1/30``, namespace side ``+2``), and starts a ``dockerd`` in it that
listens on ``tcp://10.211.A.B+2:2375`` only, with a data root, exec root (so its
own managed containerd and its socket), pid file and config file in a private
directory under /var/tmp. Its containers, bridges and iptables rules live in the
namespace; to svcenv it is an engine on another host: ``DOCKER_HOST=tcp://…``,
ports published on that address and reached over the veth.

Why these choices:

* ``nsenter --net=…`` rather than ``ip netns exec``: the latter also remounts
  ``/sys`` in a new mount namespace, which hides the cgroup mounts ("Devices
  cgroup isn't mounted"). nsenter only changes the network namespace.
* ``--tls=false`` says "no TLS" explicitly: without it dockerd 20.10 sleeps to
  make its warning about a TCP socket without TLS seen.
* ``--shutdown-timeout 2``: a stop (end of session, or a test that stops the engine)
  does not wait 10 s per container.

Teardown has one path for every exit (the session's end, an error, Ctrl-C, and
the pytest or xdist worker process being SIGKILLed): a guard process
(``python tests/remote_engine.py guard …``, in a session of its own, holding the
read end of a pipe) does it when the pipe closes. It stops the dockerd pids it was
told (only if their cmdline still names the private directory), kills what is left
in the namespace (containerd, shims, their containers), unmounts what is left
under the directory, deletes the veth and the namespace and removes the directory.

Images come from the local engine, ``docker save … | docker --host … load``, all
missing ones in one stream (the test images share their base layer, which then
crosses once), at most once per session: the data root survives a restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

if __package__:
    from .procs import alive, children, cmdline, signal_all, wait_gone
else:  # run as the guard script: tests/ is on sys.path
    from procs import alive, children, cmdline, signal_all, wait_gone  # type: ignore[no-redef]

PORT = 2375
PREFIX = "svcenv-remote-"
ROOT_BASE = "/var/tmp"  # on disk (not a tmpfs /tmp): the images take ~1.3 GB unpacked
LOCK = "/run/lock/svcenv-remote-engine.lock"
IMAGES = ("svcenv-test/postgres:15", "svcenv-test/redis:7")
"""Loaded into every remote engine (more on request: :meth:`RemoteEngine.ensure_images`)."""
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


def _run(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout)


# -- the guard: the one teardown path -------------------------------------------------------


def _netns_pids(netns: str) -> list[int]:
    done = _run("ip", "netns", "pids", netns, check=False)
    return [int(p) for p in done.stdout.split()] if done.returncode == 0 else []


def teardown(netns: str, veth: str, root: Path, dockerd_pids: Iterable[int]) -> list[str]:
    """Remove everything of one remote engine; return what could not be removed (empty: all gone)."""
    problems: list[str] = []
    ours = [p for p in dockerd_pids if alive(p) and str(root) in cmdline(p)]  # a reused pid is not ours
    signal_all(ours, signal.SIGTERM)
    signal_all(wait_gone(ours, STOP_TIMEOUT_S), signal.SIGKILL)
    # What is left in the namespace (containerd, shims, docker-proxy) and under the directory,
    # and the containers the shims run (their own namespaces: the shims' children).
    stragglers = set(_netns_pids(netns)) | {
        int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit() and str(root) in cmdline(int(e.name))
    }
    stragglers.discard(os.getpid())
    if stragglers:
        signal_all({c for p in stragglers for c in children(p)} - stragglers, signal.SIGKILL)
        signal_all(stragglers, signal.SIGKILL)
        left = wait_gone(stragglers, 10)
        if left:
            problems.append(f"processes still running: {left}")
    # Cgroups of containers that did not stop cleanly (empty directories once their processes are gone).
    for container in (root / "data" / "containers").glob("*"):
        for cgroup in Path("/sys/fs/cgroup").glob(f"*/docker/{container.name}"):
            with contextlib.suppress(OSError):
                cgroup.rmdir()
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(str(root))), key=len, reverse=True):
        if _run("umount", "-l", mount, check=False).returncode != 0:
            problems.append(f"could not unmount {mount}")
    if Path(f"/sys/class/net/{veth}").exists():
        _run("ip", "link", "del", veth, check=False)  # takes its peer in the namespace along
    if Path(f"/run/netns/{netns}").exists() and _run("ip", "netns", "del", netns, check=False).returncode != 0:
        problems.append(f"could not delete network namespace {netns}")
    shutil.rmtree(root, ignore_errors=True)
    if root.exists():
        problems.append(f"could not remove {root}")
    deadline = time.monotonic() + 5  # the kernel frees a deleted veth a moment later
    while Path(f"/sys/class/net/{veth}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if Path(f"/sys/class/net/{veth}").exists():
        problems.append(f"veth {veth} still there")
    return problems


def guard(netns: str, veth: str, root: str) -> int:
    """Read ``pid N`` lines (dockerd pids) from stdin until EOF, then tear everything down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    pids: set[int] = set()
    for line in sys.stdin:
        word, _, value = line.partition(" ")
        if word == "pid":
            pids.add(int(value))
    problems = teardown(netns, veth, Path(root), pids)
    print("clean" if not problems else "left: " + "; ".join(problems), flush=True)
    return 1 if problems else 0


# -- the engine -----------------------------------------------------------------------------


@dataclass
class RemoteEngine:
    """One ``dockerd`` in a network namespace of its own; ``url`` is its ``DOCKER_HOST``."""

    netns: str
    veth: str
    address: str
    """The engine host's address (namespace side of the veth): where its ports are published."""
    host_address: str
    root: Path
    _guard: subprocess.Popen[str]
    _dockerd: subprocess.Popen[bytes] | None = None
    loaded: set[str] = field(default_factory=set)
    """Ids of the images loaded into this engine (each is loaded once)."""
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """``tcp://ADDRESS:2375``: what ``DOCKER_HOST`` is set to for svcenv."""
        return f"tcp://{self.address}:{PORT}"

    @property
    def pid(self) -> int | None:
        """The running dockerd's pid (None when stopped)."""
        return self._dockerd.pid if self._dockerd is not None and self._dockerd.poll() is None else None

    def answers(self, timeout: float = 2) -> bool:
        """Whether the engine answers ``/_ping`` now."""
        try:
            with urllib.request.urlopen(f"http://{self.address}:{PORT}/_ping", timeout=timeout) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def start(self) -> float:
        """Start dockerd (again: same data root, so what it had is still there); seconds until it answers."""
        assert self.pid is None, "dockerd runs already"
        began = time.monotonic()
        config = self.root / "daemon.json"
        config.write_text("{}\n")
        log = (self.root / "dockerd.log").open("ab")
        argv = [
            "nsenter",
            f"--net=/run/netns/{self.netns}",
            "dockerd",
            f"--host=tcp://{self.address}:{PORT}",
            "--tls=false",
            f"--data-root={self.root / 'data'}",
            f"--exec-root={self.root / 'exec'}",
            f"--pidfile={self.root / 'dockerd.pid'}",
            f"--config-file={config}",
            "--shutdown-timeout=2",
            "--log-level=warn",
        ]
        with log:
            # nsenter execs dockerd: this pid is dockerd's. Its own session: a Ctrl-C is not for it.
            self._dockerd = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        self._tell(f"pid {self._dockerd.pid}")
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.answers(timeout=1):
            if self._dockerd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the remote dockerd did not start; its log ends:\n{self.log_tail()}")
            time.sleep(0.1)
        return time.monotonic() - began

    def begin_stop(self) -> None:
        """SIGTERM to dockerd, without waiting for its end (:meth:`stop` waits)."""
        assert self._dockerd is not None, "dockerd does not run"
        assert self._dockerd.poll() is None, "dockerd has ended"
        self._dockerd.terminate()

    def stop(self) -> float:
        """Stop dockerd (SIGTERM to the pid this fixture started; SIGKILL after 30 s); seconds it took."""
        proc, self._dockerd = self._dockerd, None
        if proc is None or proc.poll() is not None:
            return 0.0
        began = time.monotonic()
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return time.monotonic() - began

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of dockerd's log."""
        path = self.root / "dockerd.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def docker(self, *args: str, timeout: float = 60) -> str:
        """The docker CLI against this engine; its stdout."""
        return _run("docker", f"--host={self.url}", *args, timeout=timeout).stdout

    def ensure_images(self, images: Iterable[str] = IMAGES) -> float:
        """Load the ``images`` (from the local engine) that this engine lacks, in one stream; seconds taken."""
        began = time.monotonic()
        wanted = {image: _run("docker", "image", "inspect", "-f", "{{.Id}}", image).stdout.strip() for image in images}
        missing = [image for image, image_id in wanted.items() if image_id not in self.loaded]
        if not missing:
            return 0.0
        save = subprocess.Popen(["docker", "save", *missing], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        load = subprocess.run(
            ["docker", f"--host={self.url}", "load", "-q"],
            stdin=save.stdout,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert save.stdout is not None
        assert save.stderr is not None
        save.stdout.close()
        saved_err = save.stderr.read().decode(errors="replace")
        save.stderr.close()
        if save.wait() != 0 or load.returncode != 0:
            raise RuntimeError(f"docker save | docker load failed: {saved_err} {load.stderr}")
        self.loaded |= {wanted[image] for image in missing}
        seconds = time.monotonic() - began
        self.timings["load_s"] = self.timings.get("load_s", 0.0) + seconds
        return seconds

    def leftovers(self, label: str = "svcenv.environment") -> dict[str, list[str]]:
        """svcenv's containers, networks and named volumes carrying ``label`` on this engine, and (the
        engine is the tests' alone) every dangling anonymous volume."""
        found = {
            "containers": self.docker("ps", "-aq", "--filter", f"label={label}").split(),
            "networks": self.docker("network", "ls", "-q", "--filter", f"label={label}").split(),
            "volumes": self.docker("volume", "ls", "-q", "--filter", f"label={label}").split(),
            "dangling volumes": self.docker("volume", "ls", "-qf", "dangling=true").split(),
        }
        return {k: v for k, v in found.items() if v}

    def settle(self, label: str, limit: float = 30.0) -> tuple[float, dict[str, list[str]]]:
        """Poll until nothing carrying ``label`` is left (or ``limit``); seconds taken and the last count."""
        began = time.monotonic()
        while True:
            left = self.leftovers(label)
            if not left or time.monotonic() - began > limit:
                return time.monotonic() - began, left
            time.sleep(0.1)

    def _tell(self, line: str) -> None:
        assert self._guard.stdin is not None
        self._guard.stdin.write(line + "\n")
        self._guard.stdin.flush()

    def close(self) -> str:
        """Stop dockerd and let the guard remove everything; the guard's verdict (``clean`` or what is left)."""
        with contextlib.suppress(Exception):
            self.stop()
        return _finish(self._guard)


def _finish(guard_proc: subprocess.Popen[str]) -> str:
    """Close the guard's pipe (its signal to tear down), wait for it; its verdict."""
    assert guard_proc.stdin is not None
    assert guard_proc.stdout is not None
    with contextlib.suppress(OSError):
        guard_proc.stdin.close()
    guard_proc.wait(timeout=STOP_TIMEOUT_S + 60)
    return guard_proc.stdout.read().strip()


def _free_subnet() -> tuple[str, str]:
    """A /30 in 10.211.0.0/16 that no interface here uses: (host address, engine address). Under LOCK."""
    used = _run("ip", "-o", "-4", "addr", "show").stdout
    for _ in range(200):
        base = random.randrange(0, 1 << 16, 4)
        a, b = divmod(base, 256)
        host, engine = f"10.211.{a}.{b + 1}", f"10.211.{a}.{b + 2}"
        if f" {host}/" not in used and f" {engine}/" not in used:
            return host, engine
    raise RuntimeError("no free /30 in 10.211.0.0/16")


def make_remote_engine() -> RemoteEngine:
    """Create the namespace, the veth pair and the private directory, start the guard, then dockerd."""
    token = secrets.token_hex(4)
    netns, veth, peer = f"{PREFIX}{token}", f"svr{token}h", f"svr{token}n"
    root = Path(tempfile.mkdtemp(prefix=PREFIX, dir=ROOT_BASE))
    os.chmod(root, 0o700)
    guard_proc = subprocess.Popen(
        [sys.executable, __file__, "guard", netns, veth, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a Ctrl-C for pytest's process group must not end the guard
    )
    engine: RemoteEngine | None = None
    try:
        Path(LOCK).parent.mkdir(parents=True, exist_ok=True)
        with open(LOCK, "w") as lock:  # two sessions must not pick the same subnet
            fcntl.flock(lock, fcntl.LOCK_EX)
            host, address = _free_subnet()
            engine = RemoteEngine(netns, veth, address, host, root, guard_proc)
            _run("ip", "netns", "add", netns)
            _run("ip", "link", "add", veth, "type", "veth", "peer", "name", peer)
            _run("ip", "link", "set", peer, "netns", netns)
            _run("ip", "addr", "add", f"{host}/30", "dev", veth)
            _run("ip", "link", "set", veth, "up")
            _run("ip", "-n", netns, "addr", "add", f"{address}/30", "dev", peer)
            _run("ip", "-n", netns, "link", "set", peer, "up")
            _run("ip", "-n", netns, "link", "set", "lo", "up")
        engine.timings["start_s"] = engine.start()
        return engine
    except BaseException:
        if engine is not None:
            engine.close()
        else:
            _finish(guard_proc)
        raise


def _missing_tools() -> list[str]:
    missing = [tool for tool in ("ip", "nsenter", "dockerd", "docker") if shutil.which(tool) is None]
    if os.geteuid() != 0:
        missing.append("root")
    return missing


@pytest.fixture(scope="session")
def remote_engine(docker_engine: None) -> Iterator[RemoteEngine]:
    """A second Docker engine on a test host of the tests' own, with the test images loaded."""
    from .conftest import need

    missing = _missing_tools()
    if missing:
        need(f"a second engine in a network namespace needs {', '.join(missing)}")
    engine = make_remote_engine()
    verdict = "not closed"
    try:
        engine.ensure_images()
        yield engine
    finally:
        verdict = engine.close()
    assert verdict == "clean", f"the remote engine's teardown: {verdict}"


if __name__ == "__main__" and sys.argv[1:2] == ["guard"]:
    sys.exit(guard(*sys.argv[2:5]))
