"""Errors and log tails carry no secret the environment knows; impossible passwords are refused early.

Services here print their secrets on purpose (as a misconfigured server or an app's
debug output would), then fail; the error must say what happened without the secret,
in any form it may be printed in (raw, URL-quoted, escaped).
"""

from __future__ import annotations

import json
import textwrap
from urllib.parse import quote

import pytest

from svcenv import ConfigurationError, Environment, Postgres, Redis, Service, ServiceStartError
from svcenv.mysql import MySQL
from svcenv.probes import LogLine

from .conftest import LeakCheck

SECRET = 'tok-"s3cr3t"/ü@x'


def test_scrub_hides_raw_quoted_and_escaped_forms() -> None:
    from svcenv._util import scrub

    text = f"raw {SECRET} url {quote(SECRET, safe='')} repr {SECRET!r} bytes {SECRET.encode()!r}"
    out = scrub(text, [SECRET])
    assert "s3cr3t" not in out, out
    assert out.count("***") == 4
    assert scrub("ab and ab", ["ab"]) == "ab and ab", "too short to be worth hiding"


def test_a_service_log_tail_in_an_error_has_no_secret(base_image: str, leaks: LeakCheck) -> None:
    leaky = Service(
        "leaky",
        image=base_image,
        env={"API_TOKEN": SECRET},
        command=(
            "sh",
            "-c",
            'echo "starting with token $API_TOKEN"; python3 -c "import os,urllib.parse as u; '
            "print('quoted', u.quote(os.environ['API_TOKEN'], safe=''))\"; exit 3",
        ),
        probe=LogLine("never printed"),
        timeout=20,
    )
    with pytest.raises(ServiceStartError) as info:
        Environment(leaky, labels=leaks.labels).start()
    message = str(info.value)
    assert "starting with token ***" in message, message
    assert "quoted ***" in message, message
    assert "s3cr3t" not in message
    assert "s3cr3t" not in info.value.failures[0].log_tail


def test_a_password_handed_to_another_service_is_scrubbed_from_its_log(base_image: str, leaks: LeakCheck) -> None:
    postgres = Postgres(password="p@ss word/ü")
    app = Service(
        "app",
        image=base_image,
        env={"DATABASE_URL": postgres.internal_url},
        command=("sh", "-c", 'echo "connecting to $DATABASE_URL"; exit 1'),
        probe=LogLine("never printed"),
        timeout=20,
    )
    with pytest.raises(ServiceStartError) as info:
        Environment(postgres, app, labels=leaks.labels).start()
    message = str(info.value)
    assert "connecting to postgresql://postgres:***@" in message, message
    assert quote("p@ss word/ü", safe="") not in message


def test_environment_scrub_knows_generated_passwords(leaks: LeakCheck) -> None:
    with Environment(Postgres(), Redis(), labels=leaks.labels) as env:
        pg, rd = env["postgres"], env["redis"]
        text = f"{pg.url} {rd.url} {pg.password!r}"
        out = env.scrub(text)
        assert pg.password not in out
        assert rd.password not in out
        assert quote(pg.password, safe="") not in out
        assert out.count("***") == 3
        assert f"@{pg.host}:{pg.port}/" in out, "what is not secret stays"


def test_a_password_equal_to_the_user_name_does_not_blank_the_log(leaks: LeakCheck) -> None:
    # The compose habit POSTGRES_PASSWORD=postgres: the user name says it anyway, so it is not hidden.
    with Environment(Postgres(password="postgres"), labels=leaks.labels) as env:
        assert env.scrub("role postgres, database test") == "role postgres, database test"


def test_log_tails_in_pytest_reports_are_scrubbed(pytester: pytest.Pytester, base_image: str) -> None:
    pytester.makepyprojecttoml(
        textwrap.dedent(
            f"""
            [tool.svcenv.services.leaky]
            image = "{base_image}"
            env = {{ SECRET_TOKEN = {json.dumps(SECRET)} }}
            command = ["sh", "-c", "echo token=$SECRET_TOKEN; echo ready; exec sleep 600"]
            probe = {{ log = "ready" }}
            """
        )
    )
    pytester.makepyfile(test_app="def test_fails(svcenv):\n    assert False\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--svcenv-logs", "failed", timeout=240)
    result.assert_outcomes(failed=1)
    text = result.stdout.str()
    assert "token=***" in text, text
    assert "s3cr3t" not in text


@pytest.mark.parametrize(
    "make",
    [
        lambda: Postgres(password="a\0b"),
        lambda: Postgres(user="u\0"),
        lambda: Postgres(dbname="d\0"),
        lambda: Redis(password="x\0y"),
        lambda: MySQL(root_password="r\0"),
        lambda: Service("s", image="x", env={"A": "b\0"}),
        lambda: Service("s", image="x", command=("a\0",)),
    ],
    ids=["pg-password", "pg-user", "pg-dbname", "redis-password", "mysql-root", "env", "command"],
)
def test_a_nul_character_is_refused_when_the_descriptor_is_made(make: object) -> None:
    with pytest.raises(ConfigurationError, match="contains a NUL character") as info:
        make()  # type: ignore[operator]
    assert "\0" not in str(info.value)
