"""``--svcenv-logs``: the tail of each service's log in the report of a failed test (also under xdist)."""

from __future__ import annotations

import pytest

SUITE = """
def test_passes(redis_client):
    assert redis_client.ping()

def test_fails(redis_client):
    redis_client.set("k", "v")
    assert redis_client.get("k") == b"other"
"""

SECTION = "svcenv: last 40 lines of redis's log"


@pytest.mark.parametrize("xdist", [(), ("-n", "2")], ids=["serial", "xdist"])
def test_a_failed_test_shows_the_service_log(
    pytester: pytest.Pytester, docker_engine: None, xdist: tuple[str, ...]
) -> None:
    pytester.makepyfile(test_app=SUITE)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--svcenv-backend", "docker", "--svcenv-logs", "failed", *xdist, timeout=240
    )
    result.assert_outcomes(passed=1, failed=1)
    text = result.stdout.str()
    assert text.count(SECTION) == 1, text  # the failed test only
    assert "Ready to accept connections" in text.split(SECTION, 1)[1]


def test_no_logs_unless_asked(pytester: pytest.Pytester, docker_engine: None) -> None:
    pytester.makepyfile(test_app=SUITE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--svcenv-backend", "docker", timeout=240)
    result.assert_outcomes(passed=1, failed=1)
    assert SECTION not in result.stdout.str()
