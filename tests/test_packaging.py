"""The wheel holds the whole package: every module under svcenv/ and py.typed (a missing subpackage breaks installs)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_contains_every_module(tmp_path: Path) -> None:
    source = tmp_path / "src"  # a clean copy: a build/ dir left by an earlier build must not fill the gaps
    source.mkdir()
    shutil.copytree(ROOT / "svcenv", source / "svcenv", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("svcenv-*.whl")
    packed = set(zipfile.ZipFile(wheel).namelist())
    expected = {str(p.relative_to(ROOT)) for p in (ROOT / "svcenv").rglob("*.py")} | {"svcenv/py.typed"}
    assert expected - packed == set()
