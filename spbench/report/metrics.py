"""Which columns are quality and efficiency metrics, per suite, and which way is better.

Records carry a ``suite`` field (``kernel``, ``vbench``, ``videomme``);
nested dicts are flattened with dots by :func:`spbench.results.load`, so a
VBench record's ``{"vbench": {"motion_smoothness": ...}}`` is the column
``vbench.motion_smoothness``, matched here by the pattern ``vbench.*``.

The first metric of each list that has data is the default for the report.
Records of a suite not listed here get the union of all tables (the first
suite that defines a name decides its direction). A metric that is in no
table can still be asked for as ``name:higher`` or ``name:lower``.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from spbench.errors import SpbenchError


@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    higher_is_better: bool
    #: plot on a log axis when every value is positive (errors spanning decades)
    log: bool = False

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"

    @property
    def arrow(self) -> str:
        return "\u2191" if self.higher_is_better else "\u2193"

    def renamed(self, name: str) -> "Metric":
        """The metric a pattern entry (``vbench.*``) stands for, for one concrete column."""
        if name == self.name:
            return self
        return Metric(name, name, self.higher_is_better, self.log)


def _m(name: str, label: str, higher: bool, log: bool = False) -> Metric:
    return Metric(name, label, higher, log)


SUITE_METRICS: dict[str, dict[str, list[Metric]]] = {
    "kernel": {
        "quality": [
            _m("rel_l2", "relative L2 error", False, log=True),
            _m("cosine", "cosine similarity", True),
            _m("max_abs", "max abs error", False, log=True),
        ],
        "efficiency": [
            _m("speedup_total", "speedup, plan + run (x dense)", True, log=True),
            _m("speedup_run", "speedup, run only (x dense)", True, log=True),
            _m("density", "density (planned / dense FLOPs)", False),
        ],
    },
    "vbench": {
        "quality": [
            _m("vbench_total", "VBench total", True),
            _m("psnr", "PSNR vs dense (dB)", True),
            _m("ssim", "SSIM vs dense", True),
            _m("lpips", "LPIPS vs dense", False),
            _m("vbench.*", "VBench dimension", True),
        ],
        "efficiency": [
            _m("speedup", "end-to-end speedup (x dense)", True, log=True),
            _m("density", "density (planned / dense FLOPs)", False),
        ],
    },
    "videomme": {
        "quality": [
            _m("accuracy", "Video-MME accuracy", True),
            _m("accuracy.short", "accuracy, short videos", True),
            _m("accuracy.medium", "accuracy, medium videos", True),
            _m("accuracy.long", "accuracy, long videos", True),
        ],
        "efficiency": [
            _m("speedup_prefill", "prefill speedup (x dense)", True, log=True),
            _m("density", "density (planned / dense FLOPs)", False),
        ],
    },
}

DENSITY = SUITE_METRICS["kernel"]["efficiency"][2]


def table_for(suite: str | None) -> dict[str, list[Metric]]:
    """The suite's metric table, or the union of all tables for an unknown suite."""
    if suite in SUITE_METRICS:
        return SUITE_METRICS[suite]
    union: dict[str, list[Metric]] = {"quality": [], "efficiency": []}
    for table in SUITE_METRICS.values():
        for kind in union:
            for metric in table[kind]:
                if metric.name not in {m.name for m in union[kind]}:
                    union[kind].append(metric)
    return union


def parse_metric_spec(spec: str) -> tuple[str, bool | None]:
    """``name`` or ``name:higher`` / ``name:lower`` -> (name, direction or None)."""
    name, sep, direction = spec.strip().partition(":")
    if not name:
        raise SpbenchError(f"empty metric name in {spec!r}")
    if not sep:
        return name, None
    words = {"higher": True, "high": True, "max": True, "lower": False, "low": False, "min": False}
    if direction.strip().lower() not in words:
        raise SpbenchError(f"metric {spec!r}: the direction after ':' must be higher or lower")
    return name, words[direction.strip().lower()]


def lookup(name: str, suite: str | None, kind: str | None = None) -> Metric | None:
    """The metric called ``name`` in the suite's table (patterns included), or None."""
    kinds = [kind] if kind else ["quality", "efficiency"]
    for k in kinds:
        for metric in table_for(suite)[k]:
            if metric.name == name or (any(c in metric.name for c in "*?[") and fnmatch.fnmatchcase(name, metric.name)):
                return metric.renamed(name)
    return None


def has_data(frame, column: str) -> bool:
    """True when ``column`` exists and holds at least one finite number."""
    import numpy as np
    import pandas as pd

    if frame is None or column not in frame.columns:
        return False
    values = pd.to_numeric(frame[column], errors="coerce")
    return bool(np.isfinite(values.to_numpy(dtype=float)).any())


def candidates(frame, suite: str | None, kind: str) -> list[Metric]:
    """The suite's metrics of one kind that have data in ``frame``, patterns expanded, in table order."""
    out: list[Metric] = []
    for metric in table_for(suite)[kind]:
        if any(c in metric.name for c in "*?["):
            for column in sorted(frame.columns):
                if fnmatch.fnmatchcase(column, metric.name) and has_data(frame, column):
                    out.append(metric.renamed(column))
        elif has_data(frame, metric.name):
            out.append(metric)
    return out


def choose(frame, suite: str | None, kind: str, requested: str | None) -> tuple[Metric | None, str | None]:
    """The metric of ``kind`` to use for one suite's records, and a note when the request is not met.

    A requested metric is used where it has data; elsewhere the suite's
    default applies and the note says so.
    """
    options = candidates(frame, suite, kind)
    if requested:
        name, direction = parse_metric_spec(requested)
        known = lookup(name, suite, kind) or lookup(name, suite)
        if has_data(frame, name):
            if direction is not None:
                base = known or Metric(name, name, direction)
                return Metric(name, base.label, direction, base.log), None
            if known is not None:
                return known, None
            raise SpbenchError(f"metric {name!r} is not in the {suite or 'unknown'} suite's table: write {name}:higher or {name}:lower to say which way is better")
        fallback = options[0] if options else None
        note = f"{kind} metric {name!r} has no data in suite {suite!r}" + (f"; using {fallback.name}" if fallback else "")
        return fallback, note
    return (options[0] if options else None), None
