"""Elasticsearch isolation: the indices under a per-test prefix, deleted by name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigurationError

if TYPE_CHECKING:
    import elasticsearch

__all__ = ["delete_indices"]


def delete_indices(client: elasticsearch.Elasticsearch, prefix: str) -> list[str]:
    """Delete every index whose name starts with ``prefix``; return their names."""
    if not prefix or "*" in prefix:
        raise ConfigurationError(f"index prefix {prefix!r} must be non-empty and without '*'")
    found = client.indices.get(index=f"{prefix}*", expand_wildcards="all", allow_no_indices=True)
    names = sorted(found.body if hasattr(found, "body") else found)
    if names:
        client.indices.delete(index=",".join(names))
    return names
