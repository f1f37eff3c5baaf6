"""Where svcenv keeps things of its own for this user."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$SVCENV_CACHE_DIR``, else ``$XDG_CACHE_HOME/svcenv``, else ``~/.cache/svcenv`` (not created)."""
    explicit = os.environ.get("SVCENV_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "svcenv"
