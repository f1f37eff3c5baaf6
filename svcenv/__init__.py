"""svcenv: real services for integration tests.

Describe services, start them together, use them, and have them removed::

    from svcenv import Environment, Postgres, Redis

    postgres, redis = Postgres(), Redis()
    with Environment(postgres, redis) as env:
        with env[postgres].connect() as conn:
            conn.execute("SELECT 1")
        env[redis].client().set("k", "v")

Client libraries (psycopg, redis, elasticsearch, docker, testcontainers) are
imported only when first used.
"""

from ._follow import LogFollower
from ._version import __version__
from .container import BuildSpec
from .descriptors import Elasticsearch, Postgres, Redis, Service
from .environment import Environment, ServiceTiming, TeardownWarning
from .errors import (
    BackendUnavailable,
    BuildFailed,
    ConfigurationError,
    CredentialsRejected,
    ImageUnavailable,
    ProbeFailed,
    ServiceExited,
    ServiceFailure,
    ServiceNotFound,
    ServiceStartError,
    ServiceUnhealthy,
    SvcenvError,
)
from .handles import ElasticsearchHandle, PostgresHandle, RedisHandle, ServiceHandle
from .mysql import MySQL, MySQLHandle

__all__ = [
    "BackendUnavailable",
    "BuildFailed",
    "BuildSpec",
    "ConfigurationError",
    "CredentialsRejected",
    "Elasticsearch",
    "ElasticsearchHandle",
    "Environment",
    "ImageUnavailable",
    "LogFollower",
    "MySQL",
    "MySQLHandle",
    "Postgres",
    "PostgresHandle",
    "ProbeFailed",
    "Redis",
    "RedisHandle",
    "Service",
    "ServiceExited",
    "ServiceFailure",
    "ServiceHandle",
    "ServiceNotFound",
    "ServiceStartError",
    "ServiceTiming",
    "ServiceUnhealthy",
    "SvcenvError",
    "TeardownWarning",
    "__version__",
]
