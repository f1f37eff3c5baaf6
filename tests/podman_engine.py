"""Podman as an engine: Debian's ``podman system service`` (rootful), with its Docker-compatible API on
``unix:///run/svcenv-podman/podman.sock``, a storage of its own, and the test images loaded into it.

The ``podman_engine`` fixture (session scope) gives tests that engine; ``DOCKER_HOST`` set to
:attr:`PodmanEngine.url` points svcenv (and the docker CLI that counts leftovers) at it. The
dockerd at /var/run/docker.sock is not touched: its images are copied with ``docker save |
podman load``.

Isolation from any other Podman on the machine: the service runs with its own ``--root``,
``--runroot``, ``--tmpdir`` and ``--network-config-dir`` (all in a private directory under
/var/tmp), its own ``containers.conf`` (``CONTAINERS_CONF``) with file locks instead of the
machine-wide ``/dev/shm/libpod_lock`` (whose "refresh" on a fresh tmpdir would free another
Podman's locks), a default network of its own (bridge ``svcpod0``) and the subnets of its
networks from 10.213.0.0/16. Its ``default_ulimits`` are the service's own hard limits: Podman
asks for ``nofile``/``nproc`` 1048576 per container, which a root without ``CAP_SYS_RESOURCE``
(as in this test VM) cannot grant ("error setting rlimit type 7: operation not permitted").

One engine per machine at a time, shared by every pytest process that uses it (the xdist workers
of a session, and concurrent sessions): Podman names the bridges of new networks ``podmanN`` by
looking at the interfaces that exist, so two engines creating networks at the same moment could
pick the same name. Each user holds a shared ``flock`` on ``users.lock`` while it uses the engine;
the guard process (``python tests/podman_engine.py guard ROOT``, in a session of its own) that
owns the service polls for an exclusive lock, and once every user is gone (ended, failed, or
SIGKILLed: the kernel drops a dead process's locks) it tears everything down: it stops the
service it started (by pid), removes the engine's containers, pods, volumes and networks with the
podman CLI on the same storage, kills what is left running from the private directory (conmon,
aardvark-dns, their children), unmounts what is mounted under it and removes it. The process
that started the guard waits for its verdict at the end of its session (``clean``, or what is left).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import pytest

if __package__:
    from .procs import alive, children, cmdline, signal_all, wait_gone
else:  # run as the guard script: tests/ is on sys.path
    from procs import alive, children, cmdline, signal_all, wait_gone  # type: ignore[no-redef]

STATE_DIR = Path("/run/svcenv-podman")
SOCKET = STATE_DIR / "podman.sock"
URL = f"unix://{SOCKET}"
USERS_LOCK = STATE_DIR / "users.lock"
SETUP_LOCK = STATE_DIR / "setup.lock"
STATE_FILE = STATE_DIR / "engine.json"
ROOT_BASE = "/var/tmp"  # on disk (not a tmpfs): the images take ~1.4 GB unpacked
PREFIX = "svcenv-podman-"
IMAGES = ("svcenv-test/postgres:15", "svcenv-test/redis:7")
"""Loaded into the engine from the local Docker engine (Podman names them ``localhost/…``; svcenv's
short names find them)."""
DEFAULT_NETWORK = "svcenv-podman-default"
DEFAULT_BRIDGE = "svcpod0"
DEFAULT_SUBNET = "10.213.0.0/24"
SUBNET_POOL = "10.213.0.0/16"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
GUARD_WAIT_S = 300.0
"""How long the process that started the guard waits, at its end, for the other users to finish."""


def _run(*argv: str, check: bool = True, timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout, **kwargs)


def _hard_limit(pid: int, name: str) -> int | None:
    """A process's hard limit ``name`` ("Max open files") from /proc; None if unlimited or unknown."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith(name):
                hard = line[len(name) :].split()[1]
                return int(hard) if hard.isdigit() else None
    return None


# -- the engine's files and commands --------------------------------------------------------


def global_flags(root: Path) -> list[str]:
    """podman's global flags for the engine in ``root`` (the service and the CLI use the same)."""
    return [
        f"--root={root / 'storage'}",
        f"--runroot={root / 'run'}",
        f"--tmpdir={root / 'tmp'}",
        f"--network-config-dir={root / 'networks'}",
        "--cgroup-manager=cgroupfs",  # no systemd here
        "--events-backend=file",
    ]


def podman_env(root: Path) -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(root / "containers.conf"), "TMPDIR": str(root / "tmp")}


def podman(root: Path, *args: str, check: bool = True, timeout: float = 120) -> str:
    """The podman CLI on the engine's storage (not through the service); its stdout."""
    done = _run("podman", *global_flags(root), *args, check=False, timeout=timeout, env=podman_env(root))
    if check and done.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def write_config(root: Path, nofile: int, nproc: int) -> None:
    """containers.conf, and the default network (for containers created without one: the Postgres
    cache seed) with a bridge name and subnet of its own."""
    (root / "containers.conf").write_text(
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
        "\n[engine]\n"
        'lock_type = "file"\n'
        'events_logger = "file"\n'
        f'events_logfile_path = "{root / "events.log"}"\n'
        'cgroup_manager = "cgroupfs"\n'
        f'tmp_dir = "{root / "tmp"}"\n'
        f'volume_path = "{root / "storage" / "volumes"}"\n'
        "\n[network]\n"
        f'network_config_dir = "{root / "networks"}"\n'
        f'default_network = "{DEFAULT_NETWORK}"\n'
        f'default_subnet = "{DEFAULT_SUBNET}"\n'
        f'default_subnet_pools = [{{"base" = "{SUBNET_POOL}", "size" = 24}}]\n'
    )
    network = {
        "name": DEFAULT_NETWORK,
        "id": secrets.token_hex(32),
        "driver": "bridge",
        "network_interface": DEFAULT_BRIDGE,
        "created": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "subnets": [{"subnet": DEFAULT_SUBNET, "gateway": DEFAULT_SUBNET.replace(".0/24", ".1")}],
        "ipv6_enabled": False,
        "internal": False,
        "dns_enabled": False,
        "ipam_options": {"driver": "host-local"},
    }
    (root / "networks" / f"{DEFAULT_NETWORK}.json").write_text(json.dumps(network, indent=1))


def _answers(timeout: float = 2) -> bool:
    """Whether the service answers ``/_ping`` on the socket now."""
    import socket

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(SOCKET))
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: podman\r\n\r\n")
            status = sock.recv(64).split(b"\r\n", 1)[0]
    except OSError:
        return False
    return status.startswith(b"HTTP/1.") and status.split()[1:2] == [b"200"]


def _start_service(root: Path) -> subprocess.Popen[bytes]:
    """``podman system service`` on the socket; returns once it answers."""
    with contextlib.suppress(FileNotFoundError):
        SOCKET.unlink()  # a stale socket of an engine that is gone
    log = (root / "service.log").open("ab")
    with log:
        service = subprocess.Popen(
            ["podman", *global_flags(root), "system", "service", "--time=0", URL],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=podman_env(root),
            cwd=root,
            close_fds=True,  # it must never hold a user's lock
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _answers(timeout=1):
        if service.poll() is not None or time.monotonic() > deadline:
            tail = (root / "service.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"podman system service did not start; its log ends:\n{tail}")
        time.sleep(0.1)
    return service


def _stop(service: subprocess.Popen[bytes] | int | None) -> None:
    """Stop the service this guard started (SIGTERM, then SIGKILL after 30 s); by its pid only."""
    if service is None:
        return
    if isinstance(service, int):
        signal_all([service], signal.SIGTERM)
        signal_all(wait_gone([service], STOP_TIMEOUT_S), signal.SIGKILL)
        return
    if service.poll() is None:
        service.terminate()
        try:
            service.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()


# -- the guard: the one teardown path ---------------------------------------------------------


def nat_chains() -> set[str]:
    """netavark's per-network NAT chains now (``NETAVARK-DN-…``)."""
    done = _run("iptables", "-t", "nat", "-S", check=False)
    return {line.split()[1] for line in done.stdout.splitlines() if line.startswith("-N NETAVARK-DN-")}


def teardown(root: Path, service: subprocess.Popen[bytes] | int | None, chains_before: set[str] | None) -> list[str]:
    """Remove everything of the engine in ``root``; what could not be removed (empty: all gone).

    netavark 1.4 leaves a network's (empty, unreferenced) ``NETAVARK-DN-…`` NAT chain behind when
    the network goes: those that appeared since ``chains_before`` are deleted (``iptables -X``
    deletes only an empty chain nothing jumps to). Its shared chains (``NETAVARK_FORWARD``,
    ``NETAVARK-HOSTPORT-*``, the jumps to them) stay, as after any Podman on the host."""
    problems: list[str] = []
    _stop(service)
    bridges = set()
    for config in (root / "networks").glob("*.json"):
        with contextlib.suppress(OSError, ValueError):
            bridges.add(str(json.loads(config.read_text())["network_interface"]))
    if (root / "storage").is_dir():
        for args in (
            ("pod", "rm", "--all", "--force"),
            ("rm", "--all", "--force", "--volumes", "--time=0"),
            ("volume", "rm", "--all", "--force"),
            ("network", "prune", "--force"),
        ):
            try:
                podman(root, *args, timeout=120)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                problems.append(str(exc)[:300])
    # What still runs from the private directory (conmon, aardvark-dns, a container it lost track of).
    me = os.getpid()
    stragglers = {
        int(e.name)
        for e in Path("/proc").iterdir()
        if e.name.isdigit() and int(e.name) != me and str(root) in cmdline(int(e.name))
    }
    if stragglers:
        signal_all({c for p in stragglers for c in children(p)} - stragglers, signal.SIGKILL)
        signal_all(stragglers, signal.SIGKILL)
        left = wait_gone(stragglers, 10)
        if left:
            problems.append(f"processes still running: {left}")
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(str(root))), key=len, reverse=True):
        if _run("umount", "-l", mount, check=False).returncode != 0:
            problems.append(f"could not unmount {mount}")
    for bridge in sorted(bridges):  # netavark removes a bridge with its last container; one left is ours
        if Path(f"/sys/class/net/{bridge}").exists():
            addresses = _run("ip", "-o", "-4", "addr", "show", "dev", bridge, check=False).stdout
            if " 10.213." in addresses:
                _run("ip", "link", "del", bridge, check=False)
            if Path(f"/sys/class/net/{bridge}").exists():
                problems.append(f"bridge {bridge} still there")
    if chains_before is not None:
        for chain in sorted(nat_chains() - chains_before):
            if _run("iptables", "-t", "nat", "-X", chain, check=False).returncode != 0:
                problems.append(f"iptables chain {chain} still there")
    shutil.rmtree(root, ignore_errors=True)
    if root.exists():
        problems.append(f"could not remove {root}")
    return problems


def guard(root: str) -> int:
    """Start the service for ``root``; say ``ready PID``; tear everything down once no user holds
    ``users.lock`` (or the service ended); say ``clean`` or what is left."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    path = Path(root)
    service: subprocess.Popen[bytes] | None = None
    problems: list[str] = []
    users = USERS_LOCK.open("a")
    chains_before = nat_chains()
    try:
        nofile, nproc = resource.getrlimit(resource.RLIMIT_NOFILE)[1], resource.getrlimit(resource.RLIMIT_NPROC)[1]
        write_config(path, nofile, nproc)
        service = _start_service(path)
        # Podman sets its own limits as it starts (it may lower nproc): containers get at most those.
        actual = (_hard_limit(service.pid, "Max open files"), _hard_limit(service.pid, "Max processes"))
        if actual != (nofile, nproc) and None not in actual:
            _stop(service)
            write_config(path, int(actual[0] or nofile), int(actual[1] or nproc))
            service = _start_service(path)
        print(f"ready {service.pid}", flush=True)
        while True:
            try:
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break  # no user left
            except BlockingIOError:
                time.sleep(0.5)
            if service.poll() is not None:
                problems.append(f"podman system service ended by itself ({service.returncode})")
                fcntl.flock(users, fcntl.LOCK_EX)
                break
        with contextlib.suppress(FileNotFoundError):
            if json.loads(STATE_FILE.read_text()).get("root") == root:
                STATE_FILE.unlink()
    except Exception as exc:
        problems.append(f"{type(exc).__name__}: {exc}")
        print(f"failed {exc}", flush=True)
    finally:
        problems += teardown(path, service, chains_before)
        with contextlib.suppress(FileNotFoundError):
            SOCKET.unlink()
        users.close()
    print("clean" if not problems else "left: " + "; ".join(problems), flush=True)
    return 1 if problems else 0


# -- the engine, as the tests see it ----------------------------------------------------------


@dataclass
class PodmanEngine:
    """The Podman engine; ``url`` is its ``DOCKER_HOST``."""

    root: Path
    service_pid: int
    timings: dict[str, float] = field(default_factory=dict)
    url: str = URL

    def answers(self) -> bool:
        return _answers()

    def podman(self, *args: str, timeout: float = 120) -> str:
        """The podman CLI on the engine's storage; its stdout."""
        return podman(self.root, *args, timeout=timeout)

    def docker(self, *args: str, timeout: float = 60) -> str:
        """The docker CLI against the engine's compatible API; its stdout."""
        return _run("docker", f"--host={self.url}", *args, timeout=timeout).stdout

    def dangling_volumes(self) -> set[str]:
        """Anonymous volumes (a 64-hex name) that no container uses."""
        names = self.podman("volume", "ls", "-q", "--filter", "dangling=true").split()
        return {v for v in names if len(v) == 64}

    def leftovers(self, label: str, volumes_before: set[str] | None = None) -> dict[str, list[str]]:
        """svcenv's containers, networks and named volumes carrying ``label``, any pod (svcenv makes
        none), and (given ``volumes_before``) the anonymous volumes left dangling since then, as
        Podman itself lists them on its storage."""
        found = {
            "containers": self.podman("ps", "-aq", "--filter", f"label={label}").split(),
            "pods": self.podman("pod", "ps", "-q").split(),
            "networks": self.podman("network", "ls", "-q", "--filter", f"label={label}").split(),
            "volumes": self.podman("volume", "ls", "-q", "--filter", f"label={label}").split(),
        }
        if volumes_before is not None:
            found["anonymous volumes"] = sorted(self.dangling_volumes() - volumes_before)
        return {k: v for k, v in found.items() if v}

    def settle(
        self, label: str, volumes_before: set[str] | None = None, limit: float = 30.0
    ) -> tuple[float, dict[str, list[str]]]:
        """Poll until nothing carrying ``label`` is left (or ``limit``); seconds taken and the last count."""
        began = time.monotonic()
        while True:
            left = self.leftovers(label, volumes_before)
            if not left or time.monotonic() - began > limit:
                return time.monotonic() - began, left
            time.sleep(0.2)


def _load_images(root: Path, images: Iterable[str]) -> float:
    """``docker save IMAGES | podman load`` (one stream: the test images share their base layer)."""
    began = time.monotonic()
    save = subprocess.Popen(["docker", "save", *images], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    load = subprocess.run(
        ["podman", *global_flags(root), "load", "-q"],
        stdin=save.stdout,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=podman_env(root),
    )
    assert save.stdout is not None
    assert save.stderr is not None
    save.stdout.close()
    saved_err = save.stderr.read().decode(errors="replace")
    save.stderr.close()
    if save.wait() != 0 or load.returncode != 0:
        raise RuntimeError(f"docker save | podman load failed: {saved_err} {load.stderr}")
    return time.monotonic() - began


def _check_names(images: Iterable[str]) -> list[str]:
    """The ``images`` the engine does not find under the names the tests use (through its API)."""
    import docker

    client = docker.DockerClient(base_url=URL, version="auto", timeout=30)
    missing = []
    try:
        for image in images:
            try:
                client.images.get(image)
            except docker.errors.ImageNotFound:
                missing.append(image)
    finally:
        client.close()
    return missing


def _guard_alive(state: dict[str, Any]) -> bool:
    pid = int(state.get("guard", 0))
    return pid > 0 and alive(pid) and "podman_engine.py guard" in cmdline(pid) and str(state["root"]) in cmdline(pid)


def _start_engine() -> tuple[PodmanEngine, subprocess.Popen[str]]:
    root = Path(tempfile.mkdtemp(prefix=PREFIX, dir=ROOT_BASE))
    os.chmod(root, 0o700)
    for sub in ("storage", "run", "tmp", "networks"):
        (root / sub).mkdir()
    began = time.monotonic()
    guard_proc = subprocess.Popen(
        [sys.executable, __file__, "guard", str(root)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a Ctrl-C for pytest's process group must not end it
        close_fds=True,  # nor may it hold this process's lock on users.lock
    )
    assert guard_proc.stdout is not None
    line = guard_proc.stdout.readline()
    if not line.startswith("ready "):
        rest = guard_proc.stdout.read()
        guard_proc.wait(timeout=STOP_TIMEOUT_S + 120)
        raise RuntimeError(f"the podman engine did not start: {line}{rest}")
    engine = PodmanEngine(root, int(line.split()[1]))
    engine.timings["start_s"] = time.monotonic() - began
    STATE_FILE.write_text(json.dumps({"root": str(root), "guard": guard_proc.pid, "service": engine.service_pid}))
    engine.timings["load_s"] = _load_images(root, IMAGES)
    return engine, guard_proc


IN_USE = "still in use by another session"


def _finish(guard_proc: subprocess.Popen[str]) -> str:
    """The guard's verdict once every user has left: ``clean``, or what is left (or :data:`IN_USE`
    after ``GUARD_WAIT_S``: the guard tears down after the last user, whenever that is)."""
    assert guard_proc.stdout is not None
    try:
        guard_proc.wait(timeout=GUARD_WAIT_S)
    except subprocess.TimeoutExpired:
        return IN_USE
    lines = guard_proc.stdout.read().strip().splitlines()
    return lines[-1] if lines else f"the guard ended with {guard_proc.returncode} and said nothing"


def _missing_tools() -> list[str]:
    missing = [tool for tool in ("podman", "docker", "ip", "umount") if shutil.which(tool) is None]
    if os.geteuid() != 0:
        missing.append("root (this fixture runs Podman rootful)")
    return missing


@contextlib.contextmanager
def podman_engine_session() -> Iterator[PodmanEngine]:
    """Use the machine's test Podman engine (starting it if no one has), for as long as this lasts."""
    STATE_DIR.mkdir(mode=0o700, exist_ok=True)
    users: IO[str] = USERS_LOCK.open("a")
    guard_proc: subprocess.Popen[str] | None = None
    try:
        fcntl.flock(users, fcntl.LOCK_SH)  # while held, the guard leaves the engine alone
        with SETUP_LOCK.open("a") as setup:
            fcntl.flock(setup, fcntl.LOCK_EX)
            state: dict[str, Any] = {}
            with contextlib.suppress(FileNotFoundError, ValueError):
                state = json.loads(STATE_FILE.read_text())
            if state and _guard_alive(state) and _answers():
                engine = PodmanEngine(Path(state["root"]), int(state["service"]))
            else:
                if state and Path(state.get("root", "")).is_dir():  # its guard died (SIGKILL): sweep it now
                    teardown(Path(state["root"]), int(state.get("service", 0)) or None, None)
                with contextlib.suppress(FileNotFoundError):
                    STATE_FILE.unlink()
                engine, guard_proc = _start_engine()
            missing = _check_names(IMAGES)
            if missing:
                raise RuntimeError(f"the podman engine does not find {missing} under these names")
        yield engine
    finally:
        users.close()  # drops the shared lock: the last user's going lets the guard tear down
        if guard_proc is not None:
            verdict = _finish(guard_proc)
            assert verdict in ("clean", IN_USE), f"the podman engine's teardown: {verdict}"


@pytest.fixture(scope="session")
def podman_engine(docker_engine: None) -> Iterator[PodmanEngine]:
    """The Podman engine with the test images (else skipped locally, failed under CI=true)."""
    from .conftest import need

    missing = _missing_tools()
    if missing:
        need(f"the Podman engine needs {', '.join(missing)} (apt-get install podman)")
    with podman_engine_session() as engine:
        yield engine


if __name__ == "__main__" and sys.argv[1:2] == ["guard"]:
    sys.exit(guard(sys.argv[2]))
