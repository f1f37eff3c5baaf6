"""A stand-in for Elasticsearch 8 that serves only what svcenv's tests need.

This is *not* Elasticsearch: it keeps indices and documents in memory and knows
nothing of search. It exists because no Elasticsearch distribution can be
obtained where this project is built. It follows the official image's contract
where svcenv depends on it:

* port 9200, plain HTTP when ``xpack.security.enabled=false``; with security
  left on (the image's default) every request gets 401, as a real node would
  without credentials;
* the HTTP port opens only after ``STANDIN_STARTUP_DELAY`` seconds (a real node
  needs many seconds to boot);
* ``discovery.type=single-node`` makes the cluster yellow at once; without it
  the cluster stays red (a lone node that waits for peers);
* every response carries ``X-Elastic-Product: Elasticsearch`` and echoes the
  client's ``compatible-with`` media type, which the official client checks.

Endpoints: ``GET /``, ``GET /_cluster/health`` (``wait_for_status``,
``timeout``), ``PUT|HEAD|GET|DELETE /<index>`` (``DELETE`` takes comma lists
and ``*`` wildcards), ``GET /_cat/indices``, ``PUT|POST /<index>/_doc/<id>``,
``GET|DELETE /<index>/_doc/<id>``, ``POST /<index>/_refresh``,
``GET /<index>/_count``.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

VERSION = "8.15.0"
CLUSTER_NAME = os.environ.get("cluster.name", "docker-cluster")
SINGLE_NODE = os.environ.get("discovery.type") == "single-node"
SECURITY = os.environ.get("xpack.security.enabled", "true").lower() != "false"
INDEX_NAME = re.compile(r"^[a-z0-9][a-z0-9_.+-]*$")

_lock = threading.Lock()
_indices: dict[str, dict[str, dict[str, object]]] = {}


def _error(kind: str, reason: str, status: int, **extra: object) -> tuple[int, dict[str, object]]:
    cause = {"type": kind, "reason": reason, **extra}
    return status, {"error": {"root_cause": [cause], **cause}, "status": status}


def _health(wait_for: str | None, timeout_s: float) -> tuple[int, dict[str, object]]:
    status = "green" if SINGLE_NODE and not _indices else ("yellow" if SINGLE_NODE else "red")
    order = {"green": 0, "yellow": 1, "red": 2}
    timed_out = False
    if wait_for and order[status] > order.get(wait_for, 2):
        time.sleep(min(timeout_s, 30.0))
        timed_out = True
    body: dict[str, object] = {
        "cluster_name": CLUSTER_NAME,
        "status": status,
        "timed_out": timed_out,
        "number_of_nodes": 1,
        "number_of_data_nodes": 1,
        "active_primary_shards": len(_indices),
        "active_shards": len(_indices),
        "relocating_shards": 0,
        "initializing_shards": 0,
        "unassigned_shards": len(_indices) if SINGLE_NODE else 0,
        "delayed_unassigned_shards": 0,
        "number_of_pending_tasks": 0,
        "number_of_in_flight_fetch": 0,
        "task_max_waiting_in_queue_millis": 0,
        "active_shards_percent_as_number": 100.0 if status == "green" else 50.0,
    }
    return (408 if timed_out else 200), body


def _parse_timeout(value: str | None) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m)?", value or "30s")
    if not match:
        return 30.0
    number, unit = int(match.group(1)), match.group(2) or "ms"
    return number / 1000 if unit == "ms" else number * (60 if unit == "m" else 1)


def _matching(pattern: str) -> list[str]:
    names: list[str] = []
    for part in pattern.split(","):
        names.extend(n for n in _indices if fnmatch.fnmatchcase(n, part))
    return sorted(set(names))


class Handler(BaseHTTPRequestHandler):
    server_version = "standin"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    # Headers and body go out as separate writes; with Nagle on, each response
    # would wait for the client's delayed ACK (~40 ms). A real node sends at once.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        sys.stdout.write("[standin] %s %s\n" % (self.address_string(), format % args))

    def _send(self, status: int, body: object | None, head: bool = False) -> None:
        accept = self.headers.get("Accept", "")
        ctype = "application/json"
        match = re.search(r"application/vnd\.elasticsearch\+json;\s*compatible-with=(\d+)", accept)
        if match:
            ctype = f"application/vnd.elasticsearch+json;compatible-with={match.group(1)}"
        payload = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("X-Elastic-Product", "Elasticsearch")
        self.send_header("content-type", f"{ctype};charset=UTF-8" if "vnd" not in ctype else ctype)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        if not head:
            self.wfile.write(payload)

    def _body(self) -> object:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw.strip() else {}

    def _dispatch(self, method: str) -> None:
        if SECURITY:
            self._send(*_error("security_exception", "missing authentication credentials for REST request", 401))
            return
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        parts = [p for p in url.path.split("/") if p]
        body = self._body() if method in ("PUT", "POST") else None
        with_body = method != "HEAD"
        status, payload = self._route(method, parts, query, body)
        self._send(status, payload, head=not with_body)

    def _route(
        self, method: str, parts: list[str], query: dict[str, str], body: object
    ) -> tuple[int, dict[str, object] | list[object]]:
        if not parts:
            if method in ("GET", "HEAD"):
                return 200, {
                    "name": os.uname().nodename,
                    "cluster_name": CLUSTER_NAME,
                    "cluster_uuid": CLUSTER_UUID,
                    "version": {
                        "number": VERSION,
                        "build_flavor": "default",
                        "build_type": "docker",
                        "lucene_version": "9.11.1",
                        "minimum_wire_compatibility_version": "7.17.0",
                        "minimum_index_compatibility_version": "7.0.0",
                    },
                    "tagline": "You Know, for Search",
                }
        elif parts == ["_cluster", "health"] and method == "GET":
            return _health(query.get("wait_for_status"), _parse_timeout(query.get("timeout")))
        elif parts == ["_cat", "indices"] and method == "GET":
            with _lock:
                rows = [
                    {"health": "yellow", "status": "open", "index": n, "docs.count": str(len(d))}
                    for n, d in sorted(_indices.items())
                ]
            return 200, rows
        elif len(parts) == 1 and not parts[0].startswith("_"):
            return self._index(method, parts[0])
        elif len(parts) >= 2 and parts[1] in ("_doc", "_refresh", "_count"):
            return self._docs(method, parts, body)
        return _error("invalid_request", f"no handler for [{method} /{'/'.join(parts)}] in the stand-in", 400)

    def _index(self, method: str, name: str) -> tuple[int, dict[str, object]]:
        with _lock:
            if method == "PUT":
                if not INDEX_NAME.match(name):
                    return _error("invalid_index_name_exception", f"Invalid index name [{name}]", 400, index=name)
                if name in _indices:
                    return _error(
                        "resource_already_exists_exception", f"index [{name}/x] already exists", 400, index=name
                    )
                _indices[name] = {}
                return 200, {"acknowledged": True, "shards_acknowledged": True, "index": name}
            names = _matching(name)
            if not names and "*" not in name:
                return _error("index_not_found_exception", f"no such index [{name}]", 404, index=name)
            if method in ("GET", "HEAD"):
                return 200, {n: {"aliases": {}, "mappings": {}, "settings": {}} for n in names}
            if method == "DELETE":
                for n in names:
                    del _indices[n]
                return 200, {"acknowledged": True}
        return _error("invalid_request", f"unsupported method {method}", 405)

    def _docs(self, method: str, parts: list[str], body: object) -> tuple[int, dict[str, object]]:
        index, action = parts[0], parts[1]
        with _lock:
            if action == "_doc" and method in ("PUT", "POST"):
                docs = _indices.setdefault(index, {})
                doc_id = parts[2] if len(parts) > 2 else uuid.uuid4().hex[:20]
                result = "updated" if doc_id in docs else "created"
                docs[doc_id] = body if isinstance(body, dict) else {}
                return (200 if result == "updated" else 201), {
                    "_index": index,
                    "_id": doc_id,
                    "_version": 1,
                    "result": result,
                    "_shards": {"total": 1, "successful": 1, "failed": 0},
                }
            if index not in _indices:
                return _error("index_not_found_exception", f"no such index [{index}]", 404, index=index)
            docs = _indices[index]
            if action == "_refresh":
                return 200, {"_shards": {"total": 1, "successful": 1, "failed": 0}}
            if action == "_count":
                return 200, {"count": len(docs), "_shards": {"total": 1, "successful": 1, "failed": 0}}
            doc_id = parts[2] if len(parts) > 2 else ""
            if doc_id not in docs:
                return 404, {"_index": index, "_id": doc_id, "found": False}
            if method == "DELETE":
                del docs[doc_id]
                return 200, {"_index": index, "_id": doc_id, "result": "deleted"}
            return 200, {"_index": index, "_id": doc_id, "_version": 1, "found": True, "_source": docs[doc_id]}

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")


CLUSTER_UUID = uuid.uuid4().hex[:22]


def main() -> None:
    delay = float(os.environ.get("STANDIN_STARTUP_DELAY", "2.0"))
    print(f"[standin] NOT Elasticsearch: stand-in {VERSION} booting, port opens in {delay}s", flush=True)
    time.sleep(delay)
    server = ThreadingHTTPServer(("0.0.0.0", 9200), Handler)
    print("[standin] started; publish_address {0.0.0.0:9200}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
