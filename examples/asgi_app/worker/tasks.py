"""The jobs the RQ worker runs; the app enqueues them by name (``tasks.analyse``), so it never imports this.

``analyse(job_id, text)`` counts the words of ``text`` and writes the result into the
``jobs`` row the app inserted (``status = 'done'``). When it raises, RQ calls
``record_failure`` (the job's ``on_failure`` callback, also in the worker), which marks
the row ``failed`` with the error. Both connect to ``DATABASE_URL``; RQ itself reads its
Redis from ``RQ_REDIS_URL``. The worker's environment gives both (see ``stack.py``).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from types import TracebackType
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")
"""A word: letters, with inner apostrophes ("don't")."""
TOP = 3
"""How many of the most frequent words a result lists."""


def analyse(job_id: str, text: str) -> dict[str, Any]:
    """Count the words of ``text``; store ``{"words", "unique", "top"}`` in the job's row and return it.

    Raises ``ValueError`` when ``text`` has no word (the job then fails).
    """
    words = [word.lower() for word in WORD.findall(text)]
    if not words:
        raise ValueError(f"no words in {text!r}")
    counts = Counter(words)
    top = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:TOP]
    result = {"words": len(words), "unique": len(counts), "top": [word for word, _ in top]}
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:  # commits on leaving the block
        conn.execute(
            "UPDATE jobs SET status = 'done', result = %s, finished_at = now() WHERE id = %s",
            (Jsonb(result), job_id),
        )
    return result


def record_failure(
    job: Any, connection: Any, exc_type: type[BaseException], exc: BaseException, traceback: TracebackType | None
) -> None:
    """RQ's failure callback: mark the job's row ``failed`` with ``"<ExceptionType>: <message>"``."""
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        conn.execute(
            "UPDATE jobs SET status = 'failed', error = %s, finished_at = now() WHERE id = %s",
            (f"{exc_type.__name__}: {exc}", job.args[0]),
        )
