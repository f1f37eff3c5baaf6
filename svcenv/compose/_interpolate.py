"""Variable interpolation as Compose does it, and ``.env``/``env_file`` files.

``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``,
``${VAR?error}``, ``${VAR:+replacement}``, ``${VAR+replacement}``; defaults and
replacements may hold further interpolations; ``$$`` is a literal ``$``. An unset
variable without a default becomes an empty string, with a notice.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ComposeError

__all__ = ["Interpolator", "read_env_file"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_OPERATORS = (":-", ":?", ":+", "-", "?", "+")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$$"}

Fail = Callable[[str], ComposeError]
"""Makes the error for one message, with the file and where in it."""


@dataclass
class Interpolator:
    """Substitutes variables from ``lookup``; remembers the unset ones it met (``unset``)."""

    lookup: Mapping[str, str]
    unset: list[str] = field(default_factory=list)

    def text(self, text: str, fail: Fail) -> str:
        """``text`` with every variable substituted and ``$$`` made ``$``."""
        out: list[str] = []
        i = 0
        while i < len(text):
            dollar = text.find("$", i)
            if dollar < 0:
                out.append(text[i:])
                break
            out.append(text[i:dollar])
            after = text[dollar + 1 : dollar + 2]
            if after == "$":
                out.append("$")
                i = dollar + 2
            elif after == "{":
                end = _closing(text, dollar + 2)
                if end < 0:
                    raise fail(f"unclosed '${{' in {text!r}")
                out.append(self._braced(text[dollar + 2 : end], fail))
                i = end + 1
            else:
                match = _NAME.match(text, dollar + 1)
                if not match:
                    raise fail(f"invalid interpolation in {text!r}: a lone '$' (write '$$' for a literal '$')")
                out.append(self._value(match.group(), fail))
                i = match.end()
        return "".join(out)

    def tree(self, value: object, key: str, fail: Callable[[str, str], ComposeError]) -> object:
        """``value`` (YAML data) with every string interpolated; ``key`` is its path, for errors."""
        if isinstance(value, str):
            return self.text(value, lambda message: fail(key, message))
        if isinstance(value, dict):
            return {k: self.tree(v, f"{key}.{k}" if key else str(k), fail) for k, v in value.items()}
        if isinstance(value, list):
            return [self.tree(v, f"{key}[{i}]", fail) for i, v in enumerate(value)]
        return value

    def _value(self, name: str, fail: Fail) -> str:
        if name in self.lookup:
            return self.lookup[name]
        if name not in self.unset:
            self.unset.append(name)
        return ""

    def _braced(self, body: str, fail: Fail) -> str:
        match = _NAME.match(body)
        if not match:
            raise fail(f"invalid interpolation '${{{body}}}': expected a variable name")
        name, rest = match.group(), body[match.end() :]
        if not rest:
            return self._value(name, fail)
        operator = next((op for op in _OPERATORS if rest.startswith(op)), None)
        if operator is None:
            raise fail(f"invalid interpolation '${{{body}}}': use :- - :? ? :+ or + after the name")
        arg = rest[len(operator) :]
        value = self.lookup.get(name)
        present = value is not None and (bool(value) or not operator.startswith(":"))
        if operator.endswith("-"):
            return value if present and value is not None else self.text(arg, fail)
        if operator.endswith("+"):
            return self.text(arg, fail) if present else ""
        if not present or value is None:
            message = self.text(arg, fail)
            raise fail(f"required variable {name} is missing a value" + (f": {message}" if message else ""))
        return value


def _closing(text: str, start: int) -> int:
    """The index of the ``}`` that closes a ``${`` opened before ``start`` (-1: none)."""
    depth, i = 1, start
    while i < len(text):
        if text.startswith("$$", i):
            i += 2
            continue
        if text.startswith("${", i):
            depth += 1
            i += 2
            continue
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def read_env_file(path: Path, lookup: Mapping[str, str]) -> dict[str, str]:
    """The variables of a dotenv file: ``KEY=VALUE`` lines, ``#`` comments, optional ``export``.

    Unquoted and double-quoted values are interpolated (from ``lookup`` and the lines
    before); single-quoted ones are literal. Quoted values may span lines. A ``KEY``
    without ``=`` takes its value from ``lookup`` (left out when unset there).
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ComposeError(f"{path}: cannot read: {exc.strerror or exc}") from None
    values: dict[str, str] = {}
    i = 0
    while i < len(lines):
        number, line = i + 1, lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue

        def fail(message: str, number: int = number) -> ComposeError:
            return ComposeError(f"{path}: line {number}: {message}")

        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, eq, raw = line.partition("=")
        key = key.strip()
        if not _ENV_KEY.fullmatch(key):
            raise fail(f"{key!r} is not a variable name (lines are KEY=VALUE)")
        if not eq:
            if key in lookup:
                values[key] = lookup[key]
            continue
        raw = raw.strip()
        interpolate = Interpolator({**values, **lookup})
        if raw[:1] in ("'", '"'):
            quote, body = raw[0], raw[1:]
            end = _end_quote(body, quote)
            while end < 0:
                if i >= len(lines):
                    raise fail(f"unterminated {quote} quote")
                body += "\n" + lines[i]
                i += 1
                end = _end_quote(body, quote)
            value, tail = body[:end], body[end + 1 :].strip()
            if tail and not tail.startswith("#"):
                raise fail(f"unexpected {tail!r} after the closing quote")
            if quote == '"':
                value = interpolate.text(re.sub(r"\\(.)", lambda m: _ESCAPES.get(m[1], m[0]), value), fail)
        else:
            value = interpolate.text(re.split(r"\s+#", raw, maxsplit=1)[0].rstrip(), fail)
        values[key] = value
    return values


def _end_quote(body: str, quote: str) -> int:
    """Where the closing ``quote`` is in ``body`` (-1: not yet); ``\\"`` does not close a double quote."""
    i = 0
    while i < len(body):
        if quote == '"' and body[i] == "\\":
            i += 2
            continue
        if body[i] == quote:
            return i
        i += 1
    return -1
