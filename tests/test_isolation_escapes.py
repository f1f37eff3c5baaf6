"""Isolation that holds against code under test: raw COMMIT, session state, SELECT on Redis clients.

Run the way users run them: pytest in a subprocess with the plugin, on real services.
"""

from __future__ import annotations

import pytest

ROLLBACK_ESCAPES = """
import pytest

def test_1_raw_commit(postgres_transaction):
    postgres_transaction.execute("CREATE TABLE IF NOT EXISTS escaped (n int)")
    postgres_transaction.execute("INSERT INTO escaped VALUES (1)")
    postgres_transaction.execute("COMMIT")  # SQL, not .commit(): ends the fixture's transaction

def test_2_sees_the_template_again(postgres_transaction):
    found = postgres_transaction.execute("SELECT to_regclass('escaped')").fetchone()
    assert found == (None,)

def test_3_session_state(postgres_transaction):
    postgres_transaction.execute("PREPARE leftover AS SELECT 1")
    postgres_transaction.execute("SELECT pg_advisory_lock(42)")
    postgres_transaction.execute("SET application_name = 'changed'")

def test_4_no_session_state_carries_over(postgres_transaction):
    assert postgres_transaction.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)
    locks = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
    assert postgres_transaction.execute(locks).fetchone() == (0,)
    assert postgres_transaction.execute("SHOW application_name").fetchone() != ("changed",)

def test_5_raw_rollback_is_harmless(postgres_transaction):
    postgres_transaction.execute("CREATE TABLE gone (n int)")
    postgres_transaction.execute("ROLLBACK")

def test_6_still_the_template(postgres_transaction):
    assert postgres_transaction.execute("SELECT to_regclass('gone')").fetchone() == (None,)
"""


def test_rollback_fixture_survives_raw_commit_and_session_state(pytester: pytest.Pytester, docker_engine: None) -> None:
    pytester.makepyfile(test_escapes=ROLLBACK_ESCAPES)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-W", "always::svcenv.pytest.fixtures.IsolationWarning", timeout=300
    )
    result.assert_outcomes(passed=6)
    result.stdout.fnmatch_lines(["*test_1_raw_commit ended postgres_transaction's transaction itself*"])


REDIS_SELECT = """
import os
import redis

def test_1_code_under_test_selects_db_0(redis_client):
    redis_client.execute_command("SELECT", 0)  # the pooled connection now talks to db 0
    redis_client.set("mine", "x")

def test_2_db_0_was_not_flushed(redis_service):
    outside = redis_service.client(db=0)
    assert outside.get("precious") == b"keep me"
    outside.close()
"""


def test_redis_teardown_flushes_its_own_db_even_after_select(pytester: pytest.Pytester, docker_engine: None) -> None:
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture(autouse=True, scope="session")
        def _data_that_is_not_ours(redis_service):
            client = redis_service.client(db=0)
            client.set("precious", "keep me")  # e.g. an application's data on an external server
            client.close()
        """
    )
    pytester.makepyfile(test_select=REDIS_SELECT)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=300)
    result.assert_outcomes(passed=2)


PUBSUB_LONG = """
import time

def test_listens_long(redis_client):
    listener = redis_client.pubsub()
    listener.subscribe("news")  # stays subscribed for 8 s, while the other worker's test runs and ends
    heard = []
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        message = listener.get_message(timeout=0.2)
        if message and message["type"] == "message":
            heard.append(message["data"])
    listener.close()
"""

PUBSUB_SHORT = """
import time

KEEP = []

def test_listens_and_publishes(redis_client):
    listener = redis_client.pubsub()
    listener.subscribe("news")
    KEEP.append(listener)  # still subscribed when the fixture's teardown looks
    time.sleep(1)
    redis_client.publish("news", "from the other worker")
"""


def test_pubsub_across_xdist_workers_is_detected_and_said(pytester: pytest.Pytester, docker_engine: None) -> None:
    # Logical databases do not separate channels: the second worker's message reaches the first's
    # subscriber. svcenv cannot rename the channels code under test uses; it detects and says so.
    pytester.makepyfile(test_a_long=PUBSUB_LONG, test_b_short=PUBSUB_SHORT)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-n", "2", "--dist", "loadfile", "--svcenv-backend", "docker", timeout=300
    )
    result.assert_outcomes(passed=2)
    text = result.stdout.str()
    assert "pub/sub channels are server-wide" in text, text
    assert "db 1: 1, db 2: 1" in text, text
