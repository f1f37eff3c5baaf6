"""Pre-initialised Postgres images: pay ``initdb`` once per configuration, not per container.

The first time a Postgres configuration starts on an engine, svcenv runs a seed
container with its data directory outside the image's ``VOLUME`` (so that
``docker commit`` keeps it), waits until it is ready, stops it cleanly and
commits it as ``svcenv-cache/postgres:<key>``. Every later *fresh* instance of
that configuration starts from the committed image: the entrypoint finds an
initialised data directory and skips ``initdb`` and its restart. This is a cache,
not reuse: each instance is a new container and holds no test data.

The key hashes what ``initdb`` depends on: the base image's id (so a new base
image invalidates it), the user, the database, ``POSTGRES_INITDB_ARGS`` and the
other environment of the descriptor, its ``files`` (copied into the seed as well:
init scripts run at its ``initdb``), and svcenv's cache format. Server settings
(``-c``) are not in the key: they are passed on each start and need no initdb.
The seed's password is not kept: each instance sets its own through the
container's local socket, sending a SCRAM verifier, never the password itself.

Opt out with ``Postgres(cache=False)`` or ``SVCENV_POSTGRES_CACHE=0``; a descriptor
with ``volumes`` or the ``user`` or ``platform`` option never uses the cache.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

from .._paths import cache_dir
from .._util import NotYet, file_lock, flag, poll, scrub
from ..errors import ServiceExited
from .base import LABEL_ENVIRONMENT, LABEL_OWNER_HOST, LABEL_OWNER_PID, LABEL_OWNER_START, LABEL_VERSION

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.images import Image

    from ..descriptors import Resolved

CACHE_REPOSITORY = "svcenv-cache/postgres"
CACHE_LABEL = "svcenv.cache"
KEY_LABEL = "svcenv.cache-key"
FORMAT = "4"
"""Bumped when what a cache image holds changes (4: no seed password in its metadata)."""
DATA_DIR = "/svcenv-pgdata"
"""Where cached data lives in the image: outside the image's VOLUME, which commit skips."""

SEED_PASSWORD_FILE = "/run/svcenv/seed-password"  # noqa: S105 (a path)
"""The seed's password, for the image's ``POSTGRES_PASSWORD_FILE``; removed before the commit."""


def seed_password() -> str:
    """A fresh password for a cache seed (a function: tests wrap it to learn the value)."""
    return secrets.token_urlsafe(24)


READY_LINE = b"database system is ready to accept connections"
"""What the server logs once it takes connections (the official image logs to stderr)."""
COPY_THEN_RUN = 'set -e; cp -a "$SVCENV_PGCACHE/." "$PGDATA/"; exec "$@"'
"""Wraps the image's entrypoint: copy the cached data into the instance's tmpfs, then start as usual."""


def enabled(resolved: Resolved) -> bool:
    """Whether this service should start from a pre-initialised image."""
    from ..descriptors import Postgres

    service = resolved.service
    if not isinstance(service, Postgres) or not service.cache or service.command is not None:
        return False
    if service.volumes or service.entrypoint is not None or {"user", "platform"} & set(service.options):
        return False  # where the data lives, or who initialises it, is the descriptor's to say
    return flag("SVCENV_POSTGRES_CACHE", default=True)


def _saslprep(password: str) -> str:
    """``password`` normalised by SASLprep (RFC 4013), as libpq and the server do; unchanged if it
    has characters SASLprep prohibits (Postgres then uses the raw bytes too)."""
    from scramp.utils import saslprep

    try:
        return str(saslprep(password))
    except Exception:
        return password


def _iterations(resolved: Resolved) -> int:
    from ..descriptors import Postgres

    return resolved.service.scram_iterations() if isinstance(resolved.service, Postgres) else 4096


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """The ``SCRAM-SHA-256$…`` verifier Postgres stores for ``password`` (RFC 5802/7677, SASLprep'd)."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", _saslprep(password).encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = base64.b64encode
    return f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}${b64(stored_key).decode()}:{b64(server_key).decode()}"


def cache_key(client: DockerClient, resolved: Resolved) -> str:
    """Hash of everything the initialised data directory depends on."""
    base_id = client.images.get(resolved.image).id
    env = {k: v for k, v in resolved.env.items() if k not in ("POSTGRES_PASSWORD", "PGDATA")}
    # The seed gets the descriptor's files too: init scripts (/docker-entrypoint-initdb.d) run at its initdb.
    files = {path: [hashlib.sha256(content).hexdigest(), mode] for path, (content, mode) in resolved.files.items()}
    material = json.dumps(
        {"base": base_id, "env": env, "format": FORMAT, **({"files": files} if files else {})}, sort_keys=True
    )
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def _cached(client: DockerClient, key: str | None = None) -> list[Image]:
    """The cache images (those for ``key``). One label per filter: Podman 4.3 matches no image when
    an image filter names two labels; the other is checked here."""
    images = client.images.list(filters={"label": f"{KEY_LABEL}={key}" if key else f"{CACHE_LABEL}=true"})
    return [image for image in images if (image.labels or {}).get(CACHE_LABEL) == "true"]


def _find(client: DockerClient, key: str) -> str | None:
    return f"{CACHE_REPOSITORY}:{key}" if _cached(client, key) else None


def _build(client: DockerClient, resolved: Resolved, key: str, labels: Mapping[str, str], timeout: float) -> str:
    """Run a seed container, wait until it is ready, stop it cleanly and commit it.

    The seed publishes no port: it is probed from inside (``pg_isready``), so it works the same on a
    remote engine, and no one outside the seed can reach it.
    """
    import docker.errors

    from .docker_container import put_files

    password = seed_password()
    # The password goes in a file (the image's POSTGRES_PASSWORD_FILE), removed before the commit:
    # `docker commit` keeps the seed's config (its env among it) in the image's metadata.
    env = {k: v for k, v in resolved.env.items() if k != "POSTGRES_PASSWORD"}
    seed_env = {**env, "PGDATA": DATA_DIR, "POSTGRES_PASSWORD_FILE": SEED_PASSWORD_FILE}
    # `docker commit` merges the seed's labels into the image, and every container of the image
    # inherits them: only the labels that let a crashed owner's reaper find the seed go on it,
    # never svcenv.keep, a state dir or the builder's own SVCENV_LABELS.
    owner = (LABEL_ENVIRONMENT, LABEL_OWNER_PID, LABEL_OWNER_HOST, LABEL_OWNER_START, LABEL_VERSION)
    seed_labels = {k: labels[k] for k in owner if k in labels}
    seed = client.containers.create(
        resolved.image,
        environment=seed_env,
        labels={**seed_labels, "svcenv.service": f"{resolved.name}-cache-seed"},
        detach=True,
    )
    try:
        # The password is read by the entrypoint as root; the descriptor's files (init scripts) at initdb.
        put_files(seed, {**resolved.files, SEED_PASSWORD_FILE: (password.encode(), 0o600)})
        seed.start()
        user, dbname = resolved.env["POSTGRES_USER"], resolved.env["POSTGRES_DB"]

        def seed_ready() -> None:
            seed.reload()
            if seed.attrs["State"]["Status"] == "exited":
                said = seed.logs(tail=20).decode(errors="replace")
                raise ServiceExited(scrub(f"the cache seed exited: {said}", [password]))
            # Ready on TCP means the entrypoint finished initdb and its restart (its temporary server
            # listens on the unix socket only). Asked inside the seed: 127.0.0.1 there is the seed's own.
            argv = ["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432", "-U", user, "-d", dbname]
            try:
                code, _ = seed.exec_run(argv)
            except docker.errors.APIError as exc:  # exited meanwhile (409): the next reload says so
                raise NotYet(" ".join(str(exc.explanation or exc).split())) from None
            if code != 0:
                raise NotYet(f"pg_isready in the cache seed answered {code}")

        # Until the deadline, "not yet" is retried; then it propagates.
        try:
            poll(seed_ready, timeout, first=0.05, cap=0.05)
        except NotYet as last:
            raise ServiceExited(f"the cache seed was not ready within {timeout:g}s: {last}") from None
        code, output = seed.exec_run(["rm", "-f", SEED_PASSWORD_FILE])  # read at initdb: no longer needed
        if code != 0:
            raise ServiceExited(
                f"could not remove the cache seed's password file: {cast(bytes, output or b'').decode()}"
            )
        seed.stop(timeout=30)  # SIGINT (the image's STOPSIGNAL): a clean shutdown, no recovery later
        base_env = client.images.get(resolved.image).attrs["Config"].get("Env") or []
        image_env = {"PGDATA": DATA_DIR, "POSTGRES_PASSWORD_FILE": ""}
        image_labels = {CACHE_LABEL: "true", KEY_LABEL: key, "svcenv.cache-base": resolved.image}
        seed.commit(
            repository=CACHE_REPOSITORY,
            tag=key,
            conf={
                # The engine adds each seed variable this list lacks: an empty one overrides the file's path.
                "Env": [*base_env, *(f"{k}={v}" for k, v in image_env.items())],
                "Labels": image_labels,
            },
            # The same as Dockerfile instructions: Podman's compat API (4.3) ignores ``conf``.
            changes=[f'ENV {k}="{v}"' for k, v in image_env.items()]
            + [f'LABEL {k}="{v}"' for k, v in image_labels.items()],
        )
    finally:
        seed.remove(force=True, v=True)
    return f"{CACHE_REPOSITORY}:{key}"


def prepare(client: DockerClient, resolved: Resolved, labels: Mapping[str, str]) -> tuple[Resolved, bool]:
    """``resolved`` rewritten to start from the cached image (built now on a miss); and whether it hit."""
    key = cache_key(client, resolved)
    image = _find(client, key)
    hit = image is not None
    if image is None:
        # Two processes that miss the same key build it once: the second finds the image.
        # The lock lives with svcenv's other cached things (private to the user), not in /tmp.
        with file_lock(cache_dir() / "locks" / f"pgcache-{key}.lock"):
            image = _find(client, key) or _build(client, resolved, key, labels, resolved.service.effective_timeout)
    env = {k: v for k, v in resolved.env.items() if k != "POSTGRES_PASSWORD"}
    if resolved.tmpfs.get(env.get("PGDATA", "")):
        # Data in RAM: copy the cached directory into the tmpfs, then run the image's own entrypoint.
        # (Served from the image's overlay layer instead, CREATE DATABASE is several times slower.)
        base = client.images.get(resolved.image).attrs["Config"]
        command = (*(base.get("Entrypoint") or ()), *(resolved.command or base.get("Cmd") or ()))
        cached = replace(
            resolved,
            image=image,
            env={**env, "SVCENV_PGCACHE": DATA_DIR},
            entrypoint=("/bin/sh", "-c", COPY_THEN_RUN, "svcenv"),
            command=command,
        )
        return cached, hit
    return replace(resolved, image=image, env={**env, "PGDATA": DATA_DIR}), hit


def set_password(container: Any, resolved: Resolved, timeout: float) -> None:
    """Give the instance its own password, through the container's local socket, once it accepts.

    Only a SCRAM verifier crosses into the container; the password itself does not.
    """
    user = resolved.env["POSTGRES_USER"]
    verifier = scram_verifier(resolved.secrets["password"], _iterations(resolved))
    role = '"' + user.replace('"', '""') + '"'
    statement = f"ALTER ROLE {role} PASSWORD '{verifier}'"
    argv = ["psql", "-v", "ON_ERROR_STOP=1", "-qAt", "-U", user, "-d", resolved.env["POSTGRES_DB"], "-c", statement]

    import docker.errors

    def exited() -> None:
        container.reload()
        state = container.attrs["State"]
        if state["Status"] in ("exited", "dead"):
            raise ServiceExited(f"exited with status {state['ExitCode']} before it was ready")

    seen_ready = False
    last_exec = time.monotonic()

    def altered() -> None:
        nonlocal seen_ready, last_exec
        # An exec costs ~80 ms, a look at the log a few: exec once the server says it takes connections
        # (or every 0.25 s, should its log go elsewhere, e.g. logging_collector).
        if not seen_ready and time.monotonic() - last_exec < 0.25:
            if READY_LINE not in bytes(container.logs(stdout=True, stderr=True, tail=50) or b""):
                exited()
                raise NotYet("the server does not take connections yet")
            seen_ready = True
        last_exec = time.monotonic()
        try:
            code, output = container.exec_run(argv, user="postgres")
        except docker.errors.APIError as exc:
            # The server exited between start and this exec (e.g. it rejected a setting): the engine
            # answers "409 Conflict: container is not running". Say that it exited (its log says why).
            exited()
            raise NotYet(" ".join(str(exc.explanation or exc).split())) from None
        if code == 0:
            return
        exited()
        raise NotYet(bytes(output or b"").decode(errors="replace").strip())

    try:
        poll(altered, timeout, first=0.005, cap=0.02)
    except NotYet as last:
        raise ServiceExited(f"could not set the instance's password within {timeout:g}s: {last}") from None


def entries(client: DockerClient) -> list[dict[str, str]]:
    """The cached images on the engine: tag, base image, size and age."""
    rows = []
    for image in client.images.list(filters={"label": f"{CACHE_LABEL}=true"}):
        labels = image.labels or {}
        rows.append(
            {
                "image": f"{CACHE_REPOSITORY}:{labels.get(KEY_LABEL, '?')}",
                "base": labels.get("svcenv.cache-base", "?"),
                "size_mb": f"{image.attrs.get('Size', 0) / 1e6:.0f}",
                "created": str(image.attrs.get("Created", "")),
            }
        )
    return rows


def clear(client: DockerClient, key: str | None = None) -> int:
    """Remove every cached image (or the one for ``key``); return how many."""
    images = _cached(client, key)
    for image in images:
        client.images.remove(str(image.id), force=True)
    return len(images)
