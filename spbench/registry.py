"""The method registry.

Methods come through the entry-point group ``spbench.methods`` (spbench's own
are declared in its pyproject.toml, third-party packages declare theirs the
same way). ``BUILTIN`` mirrors spbench's own entries so a source checkout
without installed metadata still works; a test keeps the two in sync.

A name ``outer+inner`` (e.g. ``token-sparse+psa``) composes two methods: the
outer class's ``compose(inner_name, **knobs)`` builds it.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from spbench.errors import SpbenchError
from spbench.method import Method

GROUP = "spbench.methods"

BUILTIN: dict[str, str] = {
    "dense": "spbench.methods.dense:DenseSDPA",
    "cudnn": "spbench.methods.dense:CudnnSDPA",
    "flash": "spbench.methods.dense:FlashSDPA",
    "efficient": "spbench.methods.dense:EfficientSDPA",
    "reference": "spbench.methods.dense:Reference",
    "rectified": "spbench.methods.rectified:Rectified",
    "token-sparse": "spbench.methods.token_sparse:TokenSparse",
    "levels": "spbench.methods.levels:Levels",
    "block": "spbench.methods.block:BlockSparse",
    "xattention": "spbench.methods.xattention:XAttention",
    "psa": "spbench.methods.psa:PSA",
}


@dataclass
class Entry:
    name: str
    target: str
    source: str  # "spbench" or the distribution that provides it
    cls: type[Method] | None = None
    error: str | None = None


_cache: dict[str, Entry] | None = None


def _load_class(target: str) -> type[Method]:
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, Method)):
        raise TypeError(f"{target} is not a spbench Method subclass")
    return obj


def entries(refresh: bool = False) -> dict[str, Entry]:
    """All registered methods by canonical name (loaded; failures recorded, not raised)."""
    global _cache
    if _cache is not None and not refresh:
        return _cache
    found: dict[str, Entry] = {name: Entry(name, target, "spbench") for name, target in BUILTIN.items()}
    for ep in entry_points(group=GROUP):
        dist = getattr(getattr(ep, "dist", None), "name", None) or "unknown"
        if ep.name in found and found[ep.name].target == ep.value:
            continue
        if ep.name in found:
            found[ep.name].error = f"name clash: {ep.value} ({dist}) and {found[ep.name].target}"
            continue
        found[ep.name] = Entry(ep.name, ep.value, dist)
    for entry in found.values():
        if entry.error:
            continue
        try:
            entry.cls = _load_class(entry.target)
        except Exception as exc:  # a broken plugin must not break the registry
            entry.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
    _cache = found
    return found


def _aliases() -> dict[str, str]:
    table: dict[str, str] = {}
    for entry in entries().values():
        table[entry.name] = entry.name
        if entry.cls is not None:
            for alias in entry.cls.aliases:
                table.setdefault(alias, entry.name)
    return table


def canonical_name(name: str) -> str:
    """Resolve an alias to its canonical name, or fail with suggestions."""
    key = name.strip().lower()
    table = _aliases()
    if key in table:
        return table[key]
    close = difflib.get_close_matches(key, list(table), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known methods: {', '.join(sorted(entries()))}"
    raise SpbenchError(f"unknown method {name!r}{hint}")


def get_class(name: str) -> type[Method]:
    entry = entries()[canonical_name(name)]
    if entry.cls is None:
        raise SpbenchError(f"method {entry.name!r} failed to load: {entry.error}")
    return entry.cls


def get_method(name: str, **knobs: Any) -> Method:
    """Build a method by name or alias (``outer+inner`` composes two methods)."""
    head, plus, tail = name.partition("+")
    cls = get_class(head)
    if plus:
        compose = getattr(cls, "compose", None)
        if compose is None:
            raise SpbenchError(f"method {cls.name!r} does not take an inner method (in {name!r})")
        get_class(tail.partition("+")[0])  # fail early on an unknown inner name
        return compose(tail, **knobs)
    return cls(**knobs)


def method_names(sparse_only: bool = False, sweepable: bool = False) -> list[str]:
    """Canonical names of loadable methods.

    ``sparse_only``: only sparse methods. ``sweepable``: only those that
    ``--methods all`` selects (sparse, and not a synthetic probe).
    """
    names = []
    for entry in entries().values():
        if entry.cls is None:
            continue
        if (sparse_only or sweepable) and not entry.cls.sparse:
            continue
        if sweepable and not entry.cls.in_all:
            continue
        names.append(entry.name)
    return sorted(names)
