"""Download the wheels the api and worker images install, into ``<context>/wheels/`` (run on the host).

The images install their requirements offline, from these wheels, so a build needs no
package index. Run it once before building (again after changing a requirements.txt)::

    python examples/jobs/fetch_wheels.py            # python 3.11, manylinux wheels for this machine's arch

It is idempotent: a context whose ``wheels/.requirements`` stamp matches its
requirements and target is skipped without touching the network; otherwise its
wheels are downloaded anew into a temporary directory that replaces ``wheels/``
(so no stale version stays behind). Exits non-zero with pip's message if the
download fails.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONTEXTS = (HERE / "api", HERE / "worker")
STAMP = ".requirements"


def _arch() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def pip_args(python: str, arch: str) -> list[str]:
    """What selects the wheels: binary only, for CPython ``python`` on glibc Linux (Debian 12 has glibc 2.36)."""
    abi = "cp" + python.replace(".", "")
    platforms = [f"manylinux2014_{arch}", f"manylinux_2_28_{arch}"]
    args = ["--only-binary=:all:", "--python-version", python, "--implementation", "cp", "--abi", abi]
    for name in platforms:
        args += ["--platform", name]
    return args


def fetch(context: Path, python: str, arch: str) -> bool:
    """Fill ``context/wheels``; True if it downloaded, False if the stamp says the wheels are current."""
    requirements = context / "requirements.txt"
    wheels = context / "wheels"
    stamp = f"{' '.join(pip_args(python, arch))}\n{requirements.read_text(encoding='utf-8')}"
    if (wheels / STAMP).is_file() and (wheels / STAMP).read_text(encoding="utf-8") == stamp:
        return False
    with tempfile.TemporaryDirectory(prefix="wheels-", dir=context) as tmp:
        fresh = Path(tmp) / "wheels"
        command = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--quiet"]
        command += [*pip_args(python, arch), "-d", str(fresh), "-r", str(requirements)]
        subprocess.run(command, check=True)
        (fresh / STAMP).write_text(stamp, encoding="utf-8")
        shutil.rmtree(wheels, ignore_errors=True)
        fresh.rename(wheels)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--python-version", default="3.11", help="the images' Python (default 3.11)")
    parser.add_argument("--arch", default=_arch(), help="the images' architecture (default: this machine's)")
    args = parser.parse_args(argv)
    for context in CONTEXTS:
        try:
            downloaded = fetch(context, args.python_version, args.arch)
        except subprocess.CalledProcessError as exc:
            print(f"fetch_wheels: pip download for {context.name} failed (exit {exc.returncode})", file=sys.stderr)
            return 1
        count = len(list((context / "wheels").glob("*.whl")))
        print(f"{context.name}: {count} wheels {'downloaded' if downloaded else 'up to date'} in {context / 'wheels'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
