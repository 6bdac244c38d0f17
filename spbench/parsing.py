"""Parsing of the human-friendly values the CLI accepts.

Sequence lengths: ``k`` / ``M`` are decimal (1k = 1,000; 110k = 110,000;
1.5M = 1,500,000) as in the papers' "110k tokens"; ``Ki`` / ``Mi`` are binary
(128Ki = 131,072).
"""

from __future__ import annotations

import re
from typing import Any

from spbench.errors import SpbenchError

_SUFFIX = {"": 1, "k": 1000, "m": 1000**2, "ki": 1024, "mi": 1024**2}
_SEQ_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_seq(text: str | int) -> int:
    """Parse a sequence length: ``32768``, ``110k``, ``1.5M``, ``128Ki``."""
    if isinstance(text, int):
        value = text
    else:
        match = _SEQ_RE.match(str(text))
        if not match or match.group(2).lower() not in _SUFFIX:
            raise SpbenchError(
                f"malformed sequence length {text!r}: use an integer or a suffix k/M (x1000) or Ki/Mi (x1024), e.g. 32768, 110k, 1.5M, 128Ki"
            )
        number, suffix = match.groups()
        scaled = float(number) * _SUFFIX[suffix.lower()]
        if scaled != int(scaled):
            raise SpbenchError(f"sequence length {text!r} is not a whole number of tokens")
        value = int(scaled)
    if value <= 0:
        raise SpbenchError(f"sequence length must be positive, got {text!r}")
    return value


def parse_list(text: str) -> list[str]:
    """Split a comma-separated CLI value, dropping blanks."""
    return [item.strip() for item in str(text).split(",") if item.strip()]


def parse_budget(text: str | float) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise SpbenchError(f"budget must be a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise SpbenchError(f"budget must be in (0, 1], got {text!r}")
    return value


def parse_grid(text: str) -> tuple[int, int, int]:
    """Parse a latent grid ``TxHxW`` such as ``21x45x80``."""
    parts = re.split(r"[x,*]", str(text).strip().lower())
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) <= 0:
        raise SpbenchError(f"malformed grid {text!r}: expected TxHxW with positive integers, e.g. 21x45x80")
    return dims  # type: ignore[return-value]


def parse_value(text: str) -> Any:
    """Turn a ``--param`` value into bool / int / float / str."""
    low = text.strip().lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip()


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """Parse repeated ``--param name=value`` options."""
    params: dict[str, Any] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise SpbenchError(f"malformed --param {item!r}: expected name=value")
        params[name.strip().replace("-", "_")] = parse_value(value)
    return params
