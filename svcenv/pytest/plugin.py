"""The plugin's hooks and options: configuration, collection, the marker, the summary."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest

from ..descriptors import Service
from ..errors import ConfigurationError
from . import _share
from ._session import Manager, run_id, xdist_controller
from .fixtures import MANAGER, fixtures, manager


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("svcenv", "real services for tests (svcenv)")
    group.addoption("--svcenv-backend", default=None, help="auto, docker, local or external (default: auto)")
    group.addoption("--svcenv-timeout", type=float, default=None, help="seconds each service gets to become ready")
    group.addoption(
        "--svcenv-keep",
        action="store_true",
        default=False,
        help="leave the services running after the session and print how to reach and remove them",
    )
    group.addoption(
        "--svcenv-reuse",
        action="store_true",
        default=False,
        help="attach to services kept from earlier runs (same configuration), keep new ones for later runs",
    )
    parser.addini("svcenv_reuse", "reuse services across runs, as --svcenv-reuse", type="bool", default=False)
    parser.addini(
        "svcenv_services",
        "services `svcenv`/`svcenv_env_vars` alone start (default: what other tests need, else all kinds)",
        type="linelist",
        default=[],
    )
    parser.addini("svcenv_backend", "backend for the session's services (default: $SVCENV_BACKEND or auto)", default="")
    parser.addini("svcenv_timeout", "readiness deadline in seconds (default: per kind)", default="")
    parser.addini(
        "svcenv_postgres_setup",
        "prepares the template database, once per run: .sql files and package.module:function(conn), in order",
        type="linelist",
        default=[],
    )
    parser.addini("svcenv_postgres_prefetch", "fresh databases cloned ahead of use by a background worker", default="2")
    parser.addini("svcenv_missing", "when no backend can run a needed service: auto|skip|fail", default="auto")
    parser.addini("svcenv_xdist", "under xdist: shared (one environment) or per-worker", default="shared")
    parser.addini("svcenv_compose", "a compose file whose services the session runs (instead of [tool.svcenv])")
    parser.addini("svcenv_compose_profiles", "compose profiles to enable with svcenv_compose", type="linelist")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "svcenv(*services): the test needs these services; skipped (locally) or failed (CI) if none can run",
    )
    run = config.stash[MANAGER] = Manager(config)
    if xdist_controller(config) and config.getoption("testrunuid", None) is None:
        # Fix the run id the workers get (xdist's own option), so that all of them find one share.
        config.option.testrunuid = secrets.token_hex(16)
    run.xdist = bool(run_id(config))
    declared = _declared(run)
    if declared:
        # Services declared in [tool.svcenv] get their fixtures (db_service, db_connection, ...).
        config.pluginmanager.register(_Fixtures(fixtures(*declared)), "svcenv-declared-fixtures")


def _declared(run: Manager) -> list[Service]:
    builtin = {"postgres", "redis", "elasticsearch"}
    try:
        project = run.project
        return [s for s in project.descriptors() if s.name not in builtin] if project.declared else []
    except ConfigurationError:
        return []  # reported when the environment starts, with the file and key


class _Fixtures:
    """A plugin object holding factory-made fixtures (pytest collects fixtures from plugins)."""

    def __init__(self, made: dict[str, Any]) -> None:
        for name, fixture in made.items():
            setattr(self, name.replace("-", "_").replace(".", "_"), fixture)


def pytest_unconfigure(config: pytest.Config) -> None:
    factory = getattr(config, "_tmp_path_factory", None)
    if xdist_controller(config) and factory is not None:
        # The controller outlives the workers: remove what a killed owner could not (secrets inside).
        _share.remove(Path(factory.getbasetemp()))


def pytest_collection_finish(session: pytest.Session) -> None:
    # After every plugin's modifyitems: -k/-m deselection is done, only selected tests count.
    run = session.config.stash[MANAGER]
    run.collect(session.items)
    run.check_keep()


@pytest.fixture(autouse=True)
def _svcenv_marker(request: pytest.FixtureRequest) -> None:
    """A test marked ``@pytest.mark.svcenv(...)`` gets its services before it runs (or a skip/failure)."""
    if request.node.get_closest_marker("svcenv") is None:
        return
    env = request.getfixturevalue("svcenv")
    used, _ = manager(request).uses(request.node)
    missing = [name for name in used if name not in env]
    if missing:
        raise ConfigurationError(f"@pytest.mark.svcenv needs {missing}, but the environment has {list(env.services)}")


def pytest_sessionfinish(session: pytest.Session) -> None:
    run = session.config.stash.get(MANAGER, None)
    if run is None:
        return
    run.close()
    if run.teardown_problems:
        said = "; ".join(run.teardown_problems)
        run.summary.append(f"teardown incomplete: {said}; `python -m svcenv prune` removes what is left")
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED  # something may still run: not a clean pass


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    run = config.stash.get(MANAGER, None)
    if run is not None and run.summary:
        terminalreporter.write_sep("-", "svcenv")
        for line in run.summary:
            terminalreporter.write_line(line)
