"""The Elasticsearch descriptor (re-exported by :mod:`svcenv.descriptors`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ._resolved import Resolved
from .descriptors import Service
from .probes import ElasticsearchHealth, Probe

if TYPE_CHECKING:
    from .handles import ServiceHandle

__all__ = ["Elasticsearch"]


@dataclass(frozen=True, kw_only=True)
class Elasticsearch(Service):
    """Elasticsearch 8, following the official image's documented contract.

    Runs as a single node (``discovery.type=single-node``) with security off
    (``xpack.security.enabled=false``, plain HTTP, no password) and a bounded
    heap (``heap``, as ``ES_JAVA_OPTS=-Xms… -Xmx…``). Ready when
    ``GET /_cluster/health?wait_for_status=yellow`` says so.
    """

    name: str = "elasticsearch"
    ports: tuple[int, ...] = (9200,)
    scheme: str = "http"
    heap: str = "512m"

    kind: ClassVar[str] = "elasticsearch"
    default_image: ClassVar[str | None] = "docker.elastic.co/elasticsearch/elasticsearch:8.15.0"
    default_timeout: ClassVar[float] = 120.0
    url_schemes: ClassVar[tuple[str, ...]] = ("http", "https")
    example_url: ClassVar[str | None] = "http://host:9200"

    @classmethod
    def external_default_port(cls, scheme: str) -> int | None:
        # As Elasticsearch's own client does; plain http needs an explicit port.
        return 443 if scheme == "https" else None

    @property
    def readiness_probe(self) -> Probe:
        return self.probe or ElasticsearchHealth()

    def resolve(self) -> Resolved:
        env = {
            "discovery.type": "single-node",
            "xpack.security.enabled": "false",
            "cluster.routing.allocation.disk.threshold_enabled": "false",
            "ES_JAVA_OPTS": f"-Xms{self.heap} -Xmx{self.heap}",
            **self.env,
        }
        return self._resolved(env, self.command)

    def handle_class(self) -> type[ServiceHandle]:
        from .handles import ElasticsearchHandle

        return ElasticsearchHandle
