"""The plugin's hooks and options: configuration, collection, the marker, the summary."""

from __future__ import annotations

import secrets
import types
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
    group.addoption(
        "--svcenv-logs",
        choices=("no", "failed", "all"),
        default=None,
        help="add the tail of each service's log to the report of failed tests (or of all); default: no",
    )
    parser.addini("svcenv_logs", "no, failed or all: service log tails in test reports, as --svcenv-logs", default="no")
    parser.addini("svcenv_log_lines", "how many lines of each service's log a report shows", default="40")
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
    parser.addini(
        "svcenv_postgres_reset",
        "hand a database a test left provably clean (or only its rows changed) out again, reset, instead of "
        "cloning anew (default: $SVCENV_POSTGRES_RESET, on); false: a fresh clone for every test",
        default="",
    )
    parser.addini("svcenv_missing", "when no backend can run a needed service: auto|skip|fail", default="auto")
    parser.addini("svcenv_xdist", "under xdist: shared (one environment) or per-worker", default="shared")
    parser.addini("svcenv_compose", "a compose file whose services the session runs (instead of [tool.svcenv])")
    parser.addini("svcenv_compose_profiles", "compose profiles to enable with svcenv_compose", type="linelist")
    parser.addini(
        "svcenv_django",
        "with pytest-django: point the served DATABASES/CACHES at the session's services, migrate once per run",
        type="bool",
        default=True,
    )


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
        config.pluginmanager.register(_fixtures_plugin(fixtures(*declared)), "svcenv-declared-fixtures")
    if config.pluginmanager.hasplugin("django") and config.getini("svcenv_django"):
        from . import _django  # imports no Django: only pytest-django's settings check, when a hook runs

        config.pluginmanager.register(_django, "svcenv-django")


def _declared(run: Manager) -> list[Service]:
    builtin = {"postgres", "redis", "elasticsearch"}
    try:
        project = run.project
        return [s for s in project.descriptors() if s.name not in builtin] if project.declared else []
    except ConfigurationError:
        return []  # reported when the environment starts, with the file and key


def _fixtures_plugin(made: dict[str, Any]) -> types.ModuleType:
    """A plugin module holding factory-made fixtures: pytest collects a plugin's fixtures from its
    module (or class) attributes, not from an instance's (pytest 9 looks them up on the type)."""
    module = types.ModuleType("svcenv.pytest.declared_fixtures")
    for name, fixture in made.items():
        setattr(module, name.replace("-", "_").replace(".", "_"), fixture)
    return module


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
    run.enlist()


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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """With ``--svcenv-logs``, the tail of each of the session's services' logs goes into the report."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    mode = item.config.getoption("--svcenv-logs") or item.config.getini("svcenv_logs")
    if mode == "no" or report.when != "call" or (mode == "failed" and not report.failed):
        return
    run = item.config.stash.get(MANAGER, None)
    env = run.env if run is not None else None
    if env is None:
        return
    lines = int(item.config.getini("svcenv_log_lines") or 40)
    for handle in env:
        try:
            tail = handle.logs(tail=lines)
        except Exception as exc:  # the service may be gone: say so instead of hiding the test's own failure
            tail = f"(its log could not be read: {exc})"
        report.sections.append((f"svcenv: last {lines} lines of {handle.name}'s log", env.scrub(tail)))


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
