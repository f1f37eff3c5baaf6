"""The session's environment: which services it holds, starting it once, sharing it, ending it.

Which services a run starts (the rule the README documents):

1. every service a selected test names in ``@pytest.mark.svcenv(...)``;
2. every service whose fixture a selected test uses (each fixture made by
   :func:`svcenv.pytest.fixtures` knows its service);
3. for a test that uses only ``svcenv`` / ``svcenv_env_vars`` (or a bare
   ``@pytest.mark.svcenv``): the services configured explicitly (the
   ``svcenv_services`` ini key, or ``[tool.svcenv]`` services), else those the
   other selected tests need, else all the default ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .._util import in_ci
from ..config import DEFAULT_SERVICES
from ..descriptors import KINDS, Service
from ..environment import Environment
from ..errors import BackendUnavailable, ConfigurationError, ServiceStartError
from ._share import XdistShare

if TYPE_CHECKING:
    from ..config import ProjectConfig

SERVICE_ATTR = "_svcenv_service"
"""Set on every fixture function the factory makes: the descriptor it belongs to."""


def service_of_fixture(func: object) -> Service | None:
    """The descriptor a fixture function belongs to (None for other fixtures)."""
    found = getattr(func, SERVICE_ATTR, None)
    return found if isinstance(found, Service) else None


def services_of_item(item: pytest.Item) -> tuple[dict[str, Service], set[str], bool]:
    """(services the test uses by its fixtures and markers, other names its markers give, whether it
    also asks for "everything")."""
    used: dict[str, Service] = {}
    names: set[str] = set()
    bare = False
    info = getattr(item, "_fixtureinfo", None)
    for defs in getattr(info, "name2fixturedefs", {}).values():
        for fixturedef in defs:
            service = service_of_fixture(fixturedef.func)
            if service is not None:
                used.setdefault(service.name, service)
    for marker in item.iter_markers("svcenv"):
        for name in marker.args:
            if isinstance(name, Service):
                used.setdefault(name.name, name)
            elif str(name) in KINDS and KINDS[str(name)] is not Service:
                used.setdefault(str(name), _descriptor(str(name)))
            else:
                names.add(str(name))  # a configured service, looked up by name
        bare = bare or not marker.args
    direct = set(getattr(info, "argnames", ()))
    for marker in item.iter_markers("usefixtures"):
        direct.update(marker.args)
    everything = bare or (not used and not names and bool(direct & {"svcenv", "svcenv_env_vars"}))
    return used, names, everything


def _descriptor(name: str) -> Service:
    """The default descriptor of kind ``name``; a name that is no kind stays a generic service by that name."""
    kind = KINDS.get(name)
    if kind is None or kind is Service:
        return Service(name=name)
    made: Service = kind()  # type: ignore[call-arg]  # every kind but the generic one has a default name
    return made


class Manager:
    """Owns (or attaches to) the session's environment."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.needed: set[str] = set()
        """Service names the selected tests need (see the module docstring)."""
        self.known: dict[str, Service] = {}
        """Descriptors seen in fixtures and markers, by name."""
        self.custom: tuple[Service, ...] | None = None
        self.env: Environment | None = None
        self.error: BaseException | None = None
        self.summary: list[str] = []
        self.share: XdistShare | None = None
        self.xdist = False
        """True in an xdist worker: the environment is shared through the run's basetemp."""
        self.before_stop: list[Callable[[], None]] = []
        self.reused = False
        """True once the session's services are reused ones (``--svcenv-reuse``): they stay up."""
        self._project: ProjectConfig | None = None
        self._closed: Environment | None = None

    # -- configuration ----------------------------------------------------------------------------

    def option(self, name: str) -> Any:
        value = self.config.getoption(f"--svcenv-{name}")
        return value if value not in (None, "") else (self.config.getini(f"svcenv_{name}") or None)

    @property
    def project(self) -> ProjectConfig:
        if self._project is None:
            from ..config import compose_config, load_config

            compose = self.config.getini("svcenv_compose")
            if compose:  # relative to the ini file's directory, as pytest's own paths are
                base = self.config.inipath.parent if self.config.inipath else self.config.rootpath
                profiles = self.config.getini("svcenv_compose_profiles")
                self._project = compose_config(base / compose, profiles)
                self.summary.extend(f"compose: {notice}" for notice in self._project.notices)
            else:
                self._project = load_config(start=self.config.rootpath)  # [tool.svcenv] / svcenv.toml, as the CLI
        return self._project

    def configured(self) -> list[Service] | None:
        """The services configured explicitly (``[tool.svcenv]``, else the ``svcenv_services`` ini key)."""
        if self.custom is not None:
            return list(self.custom)
        if self.project.declared:
            return self.project.descriptors()
        names = [n for line in self.config.getini("svcenv_services") for n in line.replace(",", " ").split()]
        if not names:
            return None
        unknown = [name for name in names if name not in KINDS or KINDS[name] is Service]
        if unknown:
            raise ConfigurationError(
                f"svcenv_services: unknown {unknown}; known kinds: {sorted(set(KINDS) - {'service'})}"
            )
        return [_descriptor(name) for name in names]

    def collect(self, items: Iterable[pytest.Item]) -> None:
        """Work out which services the selected tests need (rule in the module docstring)."""
        bare = False
        for item in items:
            used, everything = self.uses(item)
            self.needed.update(used)
            bare = bare or everything
        if bare:
            configured = self.configured()
            if configured is not None:
                self.needed.update(s.name for s in configured)
            elif not self.needed:
                self.needed.update(DEFAULT_SERVICES)

    def uses(self, item: pytest.Item) -> tuple[set[str], bool]:
        """(names of the services ``item`` uses, whether it also asks for everything)."""
        used, names, everything = services_of_item(item)
        for name, service in used.items():
            self.known.setdefault(name, service)
        return set(used) | names, everything

    def descriptors(self) -> tuple[Service, ...]:
        """The descriptors of the needed services: configured ones win over the fixtures' defaults."""
        from .._scheduler import needs

        configured = {s.name: s for s in self.configured() or ()}
        order = [*configured, *self.known, *DEFAULT_SERVICES]
        # What the needed services wait for or refer to comes along (a compose app's migration job).
        wanted, pending = set(self.needed), list(self.needed)
        while pending:
            name = pending.pop()
            service = configured.get(name) or self.known.get(name)
            for dep in needs(service) if service is not None else ():
                if dep not in wanted:
                    wanted.add(dep)
                    pending.append(dep)
        chosen: dict[str, Service] = {}
        for name in order:
            if name in wanted and name not in chosen:
                service = configured.get(name) or self.known.get(name)
                if service is None and name in KINDS and KINDS[name] is not Service:
                    service = _descriptor(name)
                if service is None:
                    raise ConfigurationError(
                        f"@pytest.mark.svcenv names {name!r}, which is neither configured nor a kind "
                        f"({', '.join(sorted(KINDS))}); declare it in [tool.svcenv] or svcenv.pytest.fixtures(...)"
                    )
                chosen[name] = service
        return tuple(chosen.values())

    def run_dir(self) -> Path:
        """The run's pytest basetemp (a worker's own is ``<run's basetemp>/popen-gwN``): per user, 0700."""
        factory = self.config._tmp_path_factory  # type: ignore[attr-defined]  # the tmp_path_factory fixture's
        return Path(factory.getbasetemp()).parent

    def environment_kwargs(self) -> dict[str, Any]:
        timeout = self.option("timeout")
        return {
            "backend": self.option("backend") or self.project.backend,
            "timeout": float(timeout) if timeout else self.project.timeout,
            "labels": {"svcenv.runner": "pytest"},
        }

    def check_keep(self) -> None:
        """``--svcenv-keep`` on a backend whose services end with pytest: a usage error, nothing started."""
        if not self.config.getoption("--svcenv-keep"):
            return
        services = self.descriptors()
        if not services:
            return
        plan = Environment(*services, **self.environment_kwargs()).plan()
        mortal = {name: backend for name, (backend, outlives) in plan.items() if not outlives}
        if mortal:
            which = ", ".join(f"{name} on the {backend} backend" for name, backend in mortal.items())
            raise pytest.UsageError(
                f"--svcenv-keep: {which} cannot outlive pytest (its servers end with the process that "
                "started them); run without --svcenv-keep, or with --svcenv-backend docker"
            )

    # -- the environment ----------------------------------------------------------------------------

    def environment(self, custom: Sequence[Service] | None = None) -> Environment:
        if custom is not None and self.custom is None:
            self.custom = tuple(custom)
            self.needed.update(s.name for s in custom)
        if self.env is not None:
            return self.env
        if self.error is not None:
            if isinstance(self.error, BackendUnavailable):
                self.missing(self.error)
            raise self.error
        try:
            self.env = self._start()
        except BackendUnavailable as exc:
            self.error = exc
            self.missing(exc)
        except (ServiceStartError, ConfigurationError) as exc:
            self.error = exc
            raise
        assert self.env is not None
        return self.env

    def _start(self) -> Environment:
        services = self.descriptors()
        kwargs = self.environment_kwargs()
        from ..reuse import reuse_wanted

        asked = bool(self.config.getoption("--svcenv-reuse") or self.config.getini("svcenv_reuse"))
        if reuse_wanted(asked=asked, configured=self.project.reuse, notice=self.summary.append):
            if self.share is not None:  # enlisted: but with reuse each worker attaches on its own
                self.share.leave(None)
                self.share = None
            self.reused = True
            return self._reuse(services, kwargs)
        if self._shared():
            self.share = self.share or XdistShare(self.run_dir())
            env = self.share.join(services, kwargs)
        else:
            env = Environment(*services, **kwargs).start()
        if not env.attached:
            timings = ", ".join(f"{n} {t.total_s:.2f}s ({t.backend})" for n, t in env.timings.items())
            self.summary.append(f"environment {env.id}: {timings or 'no services'}")
        return env

    def removes_with_session(self, backend: str) -> bool:
        """Whether a service of ``backend`` is removed, server and all, when this process closes the
        session: it started it alone (no xdist share), does not keep or reuse it, and it is not external."""
        keep = bool(self.config.getoption("--svcenv-keep"))
        return backend in ("docker", "local") and self.share is None and not keep and not self.reused

    def _shared(self) -> bool:
        return self.xdist and self.config.getini("svcenv_xdist") != "per-worker"

    def enlist(self) -> None:
        """In an xdist worker whose selected tests need services, join the run's share as a member now.

        xdist collects on every worker before any test runs, so by the time any worker owns the
        environment every worker that may still attach is counted, and the owner waits for it (a
        worker that only attached when its first test came could find the environment stopping).
        """
        if self.needed and self._shared() and self.share is None:
            self.share = XdistShare(self.run_dir())
            self.share.enlist()

    def _reuse(self, services: Sequence[Service], kwargs: Mapping[str, Any]) -> Environment:
        """Attach to kept services of this configuration, or start and keep them (each worker on its own)."""
        from ..reuse import Reuse
        from ..state import StateDir

        env = Environment(*services, **kwargs, reuse=Reuse(StateDir(), self.project.project_dir)).start()
        how = ", ".join(f"{name} {outcome}" for name, outcome in env.outcomes.items())
        self.summary.append(f"reuse: {how}; they stay up for the next run (`python -m svcenv down` removes them)")
        return env

    def missing(self, error: BaseException) -> None:
        """No backend can run a needed service: skip locally, fail under CI (``svcenv_missing``)."""
        mode = self.config.getini("svcenv_missing")
        if mode == "fail" or (mode == "auto" and in_ci()):
            pytest.fail(f"svcenv: needed services are unavailable: {error}", pytrace=False)
        pytest.skip(f"svcenv: needed services are unavailable: {error}")

    def _run_before_stop(self) -> None:
        for hook in reversed(self.before_stop):
            hook()

    @property
    def teardown_problems(self) -> tuple[str, ...]:
        """What the session environment's teardown could not remove (after :meth:`close`)."""
        return self._closed.teardown_problems if self._closed is not None else ()

    def close(self) -> None:
        env, self.env = self.env, None
        if env is None:
            if self.share is not None:
                self.share.leave(None)  # enlisted, never attached
            return
        self._closed = env
        if self.config.getoption("--svcenv-keep"):
            env.keep()
            self.summary.append(
                f"--svcenv-keep: environment {env.id} is still running; remove it (containers, network, "
                f"volumes) with `python -m svcenv prune --label svcenv.environment={env.id}`"
            )
            return
        if self.share is not None:
            self.share.leave(env, self._run_before_stop)
        else:
            try:
                self._run_before_stop()
            finally:
                env.stop()


def worker(config: pytest.Config) -> str:
    """This process's xdist worker id (``gw0``...) or ``main``, from pytest itself, not the environment
    (a pytest subprocess inherits ``PYTEST_XDIST_WORKER`` from an xdist parent)."""
    workerinput = getattr(config, "workerinput", None)
    return str(workerinput["workerid"]) if workerinput else "main"


def xdist_controller(config: pytest.Config) -> bool:
    """True in the process that runs xdist workers (and so outlives them all)."""
    return (
        not hasattr(config, "workerinput")
        and config.pluginmanager.hasplugin("xdist")
        and bool(getattr(config.option, "numprocesses", None) or getattr(config.option, "tx", None))
    )


def run_id(config: pytest.Config) -> str:
    workerinput = getattr(config, "workerinput", None)
    return str(workerinput["testrunuid"]) if workerinput else ""
