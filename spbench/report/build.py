"""Build a report from run folders: summary, Pareto plots and tables, curves, failures.

``write_report`` writes ``<out>/<name>/report.md`` (with its PNGs next to
it) and ``<out>/<name>/index.html`` (the same content, PNGs embedded as
base64 data URIs, inline CSS, no script, nothing fetched from anywhere).

Choices, documented:

* Groups: records are grouped by suite and shape (kernel: workload, lengths,
  heads, head dim, batch, dtype, causal; vbench/videomme: the model and
  sampling columns they carry). Plots, frontiers and tables are per group.
* Frontiers are computed per run inside a group (runs may come from
  different GPUs); with several runs each run gets a row of panels and the
  group gets a side-by-side table keyed by (method, budget).
* Only cells with status ``ok`` are points; ``failed`` and ``invalid``
  cells are listed with their reasons.
* Metrics: ``--quality`` / ``--efficiency`` apply to every suite that has
  data for them; other suites use their default (noted in the report).
* An existing report folder is never overwritten silently: the CLI refuses
  unless ``--force``, which replaces only the files a report writes
  (report.md, index.html, the PNGs).
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spbench.errors import SpbenchError
from spbench.report import metrics as M
from spbench.report import scaling as S
from spbench.report.pareto import frontier
from spbench.report.runs import RunInfo, load_runs

FORMATS = ("md", "html")
#: Columns that define a group (a shape) per suite; those missing from the records are ignored.
GROUP_COLUMNS = {
    "kernel": ("workload", "seq", "kv_seq", "batch", "heads", "kv_heads", "head_dim", "dtype", "causal"),
    "vbench": ("model", "height", "width", "frames", "num_frames", "steps", "guidance"),
    "videomme": ("model", "subset", "max_frames", "frames", "duration"),
}
GENERATED_FILES = ("report.md", "index.html")


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    id: str = ""
    caption: str = ""

    def __bool__(self) -> bool:
        return bool(self.rows)


@dataclass
class Plot:
    title: str
    file: str
    png: bytes

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


@dataclass
class Group:
    id: str
    suite: str
    label: str
    quality: M.Metric | None
    efficiency: M.Metric | None
    counts: dict[str, int]
    plots: list[Plot] = field(default_factory=list)
    frontier: Table | None = None
    cells: Table | None = None
    comparison: Table | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Scaling:
    """Time against sequence length for one kernel shape family (:mod:`spbench.report.scaling`)."""

    id: str
    label: str
    table: Table
    plots: list[Plot] = field(default_factory=list)


@dataclass
class Report:
    name: str
    title: str
    generated: str
    runs: list[RunInfo]
    run_counts: dict[str, dict[str, int]]
    swept: list[tuple[str, str]]
    runs_table: Table
    groups: list[Group]
    failures: Table
    notes: list[str]
    scaling: list[Scaling] = field(default_factory=list)


# -- formatting ------------------------------------------------------------------


def fmt(value: Any) -> str:
    """A table cell: numbers to 4 significant digits, missing as '-'."""
    if value is None:
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            return "-"
        if float(value).is_integer() and abs(value) < 1e9:
            return str(int(value))
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "x".join(map(str, value))
    text = str(value)
    return "-" if text in ("nan", "None", "") else text


def slug(text: str, limit: int = 60) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return s[:limit].rstrip("-.") or "group"


def default_name(runs: list[RunInfo]) -> str:
    ids = [r.run_id for r in runs]
    name = ids[0] if len(ids) == 1 else "compare-" + "-vs-".join(ids)
    name = slug(name, 200)
    if len(name) > 80:
        name = name[:70].rstrip("-.") + "-" + hashlib.sha1("|".join(ids).encode()).hexdigest()[:8]
    return name


# -- grouping --------------------------------------------------------------------


def _group_label(suite: str, values: dict[str, Any]) -> str:
    if suite == "kernel":
        v = {k: fmt(values.get(k)) for k in GROUP_COLUMNS["kernel"]}
        kv = f" Lk={v['kv_seq']}" if v["kv_seq"] not in (v["seq"], "-") else ""
        hkv = f" Hkv={v['kv_heads']}" if v["kv_heads"] not in (v["heads"], "-") else ""
        causal = " causal" if values.get("causal") in (True, "True", "true") else ""
        return f"kernel: {v['workload']} L={v['seq']}{kv} B={v['batch']} Hq={v['heads']}{hkv} d={v['head_dim']} {v['dtype']}{causal}"
    parts = [f"{k}={fmt(val)}" for k, val in values.items()]
    return f"{suite}" + (": " + " ".join(parts) if parts else "")


def _groups(frame: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(suite, label, rows) per suite and shape, in a stable order."""
    out = []
    for suite in sorted(frame["suite"].unique(), key=lambda s: (s not in M.SUITE_METRICS, s)):
        part = frame[frame["suite"] == suite]
        cols = [c for c in GROUP_COLUMNS.get(suite, ()) if c in part.columns]
        if not cols:
            out.append((suite, _group_label(suite, {}), part))
            continue
        keys = part[cols].astype(str).agg("|".join, axis=1)
        firsts = part.loc[~keys.duplicated()]

        def sort_key(index):  # numbers in numeric order (4000 before 32000), then text
            out_key = []
            for c in cols:
                value = pd.to_numeric(pd.Series([firsts.at[index, c]]), errors="coerce").iloc[0]
                out_key.append((0, float(value), "") if pd.notna(value) else (1, 0.0, str(firsts.at[index, c])))
            return tuple(out_key)

        for index in sorted(firsts.index, key=sort_key):
            rows = part[keys == keys.loc[index]]
            out.append((suite, _group_label(suite, {c: firsts.at[index, c] for c in cols}), rows))
    return out


def _dense_methods(frame: pd.DataFrame) -> set[str]:
    """Methods that are dense baselines: a baseline role, or a non-sparse registered method."""
    from spbench.registry import get_class

    dense = set(frame.loc[frame["role"] == "baseline", "method"])
    for name in set(frame["method"]):
        try:
            if not get_class(name.partition("+")[0]).sparse:
                dense.add(name)
        except Exception:  # noqa: BLE001 - a method from another installation: assume sparse
            continue
    return dense


def _series(frame: pd.DataFrame, dense: set[str]) -> pd.Series:
    """The label of each record's method; dense ones say so ("cudnn (dense)", "dense")."""
    return frame["method"].map(lambda m: f"{m} (dense)" if m in dense and "dense" not in m else m)


# -- tables ----------------------------------------------------------------------


def _metric_columns(frame: pd.DataFrame, suite: str, quality: M.Metric | None, efficiency: M.Metric | None) -> list[tuple[str, str]]:
    """(column, header) for the metric columns of a table: chosen first, then the suite's others."""
    cols: list[tuple[str, str]] = []
    seen: set[str] = set()

    def add(metric: M.Metric | None, mark: str = "") -> None:
        if metric is not None and metric.name not in seen and metric.name in frame.columns:
            seen.add(metric.name)
            cols.append((metric.name, f"{metric.name} {metric.arrow}{mark}"))

    add(efficiency, " *")
    add(quality, " *")
    for kind in ("efficiency", "quality"):
        for metric in M.candidates(frame, suite, kind):
            add(metric)
    for column, header in (("run_ms", "run ms"), ("plan_ms", "plan ms"), ("dense_ms", "dense ms")):
        if M.has_data(frame, column):
            cols.append((column, header))
    return cols


def _table(rows: pd.DataFrame, metric_cols: list[tuple[str, str]], multi_run: bool, id: str, caption: str) -> Table:
    head = (["run"] if multi_run else []) + ["method", "budget"]
    columns = head + [h for _, h in metric_cols]
    body = []
    for _, rec in rows.iterrows():
        line = ([fmt(rec.get("run_id"))] if multi_run else []) + [fmt(rec.get("series")), fmt(rec.get("budget"))]
        line += [fmt(rec.get(c)) for c, _ in metric_cols]
        body.append(line)
    return Table(columns, body, id, caption)


def _comparison(ok: pd.DataFrame, runs: list[str], quality: M.Metric | None, efficiency: M.Metric | None, id: str) -> Table | None:
    """Side by side: one row per (method, budget), the chosen metrics of each run."""
    metrics = [m for m in (quality, efficiency) if m is not None]
    if len(runs) < 2 or not metrics:
        return None
    budgets = pd.to_numeric(ok["budget"], errors="coerce") if "budget" in ok.columns else pd.Series(np.nan, index=ok.index)
    # NaN != NaN, so budget-less rows (dense baselines) are keyed by None.
    pairs = sorted({(s, None if pd.isna(b) else float(b)) for s, b in zip(ok["series"], budgets)}, key=lambda t: (t[0], -1.0 if t[1] is None else t[1]))
    columns = ["method", "budget"] + [f"{m.name} {m.arrow} [{r}]" for r in runs for m in metrics]
    body = []
    for series, budget in pairs:
        sel_b = budgets.isna() if budget is None else np.isclose(budgets.fillna(-1.0), budget)
        line = [series, fmt(budget)]
        for r in runs:
            rows = ok[(ok["series"] == series) & sel_b & (ok["run_id"] == r)]
            for m in metrics:
                vals = pd.to_numeric(rows[m.name], errors="coerce").dropna() if m.name in rows.columns else pd.Series(dtype=float)
                line.append(fmt(float(vals.median())) if len(vals) else "-")
        body.append(line)
    return Table(columns, body, id, "runs side by side (median over repeated cells)")


def _failures(frame: pd.DataFrame, labels: dict[int, str], multi_run: bool) -> Table:
    bad = frame[frame["status"] != "ok"]
    columns = (["run"] if multi_run else []) + ["suite / shape", "method", "budget", "status", "reason"]
    rows = []
    for idx, rec in bad.iterrows():
        reason = fmt(rec.get("error"))
        if rec.get("error_kind") not in (None, "") and fmt(rec.get("error_kind")) != "-":
            reason = f"[{rec.get('error_kind')}] {reason}"
        line = ([fmt(rec.get("run_id"))] if multi_run else []) + [labels.get(idx, fmt(rec.get("suite"))), fmt(rec.get("series")), fmt(rec.get("budget")), fmt(rec.get("status")), reason[:400]]
        rows.append(line)
    return Table(columns, rows, "failures", "cells that failed or gave invalid output, with their reasons")


def _runs_table(runs: list[RunInfo], run_counts: dict[str, dict[str, int]]) -> Table:
    """Runs side by side: folder, cells, environment, configuration (one column per run)."""
    rows: dict[str, dict[str, str]] = {}
    for run in runs:
        counts = ", ".join(f"{n} {s}" for s, n in run_counts.get(run.run_id, {}).items()) or "none"
        items = [("folder", str(run.path)), ("cells", counts)] + run.environment_rows()
        items += [(f"config: {k}", v) for k, v in run.config_rows()]
        for key, value in items:
            rows.setdefault(key, {})[run.run_id] = value
    columns = ["run"] + [r.run_id for r in runs]
    return Table(columns, [[key] + [values.get(r.run_id, "-") for r in runs] for key, values in rows.items()], "runs", "environment and configuration of each run")


def _scaling(frame: pd.DataFrame, dense_series: set[str], styles, plots: bool, multi_run: bool) -> list[Scaling]:
    """A table (and figure) per kernel shape measured at several lengths: run ms per length, x the dense baseline."""
    from spbench.report.plots import scaling_figure

    out = []
    for shape, rows in S.families(frame[(frame["suite"] == "kernel") & (frame["status"] == "ok")]):
        data = S.lines(rows)
        if data.empty:
            continue
        lengths = sorted(data["L"].unique())
        label = _group_label("kernel", {**shape, "seq": f"{fmt(lengths[0])}..{fmt(lengths[-1])}"})
        sid = f"s{len(out) + 1:02d}-{slug(label, 50)}"
        columns = (["run"] if multi_run else []) + ["method", "budget"] + [f"L={fmt(length)}" for length in lengths] + ["exponent"]
        body = []
        for (run, series, _), line in data.groupby(["run_id", "series", "budget_key"], sort=True):
            by_length = line.set_index("L")
            cells = []
            for length in lengths:
                if length not in by_length.index:
                    cells.append("-")
                    continue
                ms, x = by_length.at[length, "run_ms"], by_length.at[length, "speedup"]
                cells.append(fmt(ms) + (f" ({fmt(x)}x)" if series not in dense_series and np.isfinite(x) else ""))
            row = ([fmt(run)] if multi_run else []) + [fmt(series), fmt(line["budget"].iloc[0])] + cells
            body.append(row + [fmt(S.exponent(list(line["L"]), list(line["run_ms"])))])
        caption = ("run ms per query length (median over repeated cells), in brackets x the dense baseline; exponent: "
                   "log(time ratio) / log(length ratio) between the two longest lengths (2 = quadratic)")
        entry = Scaling(sid, label, Table(columns, body, f"scaling-{sid}", caption))
        if plots:
            png = scaling_figure(data, styles, dense_series, label)
            if png:
                entry.plots.append(Plot("Run time and speedup against sequence length", f"{sid}-scaling.png", png))
        out.append(entry)
    return out


def _swept(frame: pd.DataFrame, groups: list[tuple[str, str, pd.DataFrame]]) -> list[tuple[str, str]]:
    rows = [("suites", ", ".join(sorted(frame["suite"].unique())))]
    rows.append(("methods", ", ".join(sorted(frame["series"].unique()))))
    if "budget" in frame.columns:
        budgets = sorted(pd.to_numeric(frame["budget"], errors="coerce").dropna().unique())
        if budgets:
            rows.append(("budgets", ", ".join(fmt(float(b)) for b in budgets)))
    rows.append(("shapes", "; ".join(label for _, label, _ in groups)))
    counts = frame["status"].value_counts()
    rows.append(("cells", ", ".join(f"{int(n)} {s}" for s, n in counts.items()) or "none"))
    return rows


# -- the report ------------------------------------------------------------------


def build_report(paths: list[str | Path], name: str | None = None, quality: str | None = None, efficiency: str | None = None, plots: bool = True) -> Report:
    runs, frame = load_runs(paths)
    if frame.empty:
        raise SpbenchError("no cells recorded in " + ", ".join(str(r.path) for r in runs) + ": nothing to report")
    run_ids = [r.run_id for r in runs]
    multi = len(run_ids) > 1
    dense = _dense_methods(frame)
    frame["series"] = _series(frame, dense)
    groups_raw = _groups(frame)
    notes: list[str] = []
    _check_requested(frame, quality, efficiency)

    from spbench.report.plots import Styles, curves_figure, pareto_figure

    dense_series = set(frame.loc[frame["method"].isin(dense), "series"])
    styles = Styles(sorted(frame["series"].unique()), dense_series)
    labels: dict[int, str] = {}
    groups: list[Group] = []
    for i, (suite, label, rows) in enumerate(groups_raw, 1):
        for idx in rows.index:
            labels[idx] = label
        gid = f"g{i:02d}-{slug(label, 50)}"
        group_notes: list[str] = []
        ok = _analysed(rows[rows["status"] == "ok"], group_notes)
        q, q_note = M.choose(ok, suite, "quality", quality)
        e, e_note = M.choose(ok, suite, "efficiency", efficiency)
        counts = {str(k): int(v) for k, v in rows["status"].value_counts().items()}
        group = Group(gid, suite, label, q, e, counts, notes=group_notes + [n for n in (q_note, e_note) if n])
        present_runs = [r for r in run_ids if (rows["run_id"] == r).any()]
        if q is None or e is None:
            missing = "quality" if q is None else "efficiency"
            group.notes.append(f"no {missing} metric with data in these records: no Pareto analysis")
        metric_cols = _metric_columns(ok, suite, q, e)
        if q is not None and e is not None:
            fronts = [frontier(ok[ok["run_id"] == r], q, e) for r in present_runs]
            front = pd.concat(fronts) if fronts else ok.iloc[0:0]
            group.frontier = _table(front, metric_cols, multi, f"frontier-{gid}", f"Pareto frontier: {q.name} ({q.direction}) vs {e.name} ({e.direction})")
            if plots:
                png = pareto_figure(ok, q, e, styles, [r for r in present_runs if (ok["run_id"] == r).any()], label)
                if png:
                    group.plots.append(Plot(f"Pareto: {q.name} vs {e.name}" + (" and density" if e.name != "density" and "density" in ok.columns else ""), f"{gid}-pareto.png", png))
                png = curves_figure(ok, q, e, styles, [r for r in present_runs if (ok["run_id"] == r).any()], label)
                if png:
                    group.plots.append(Plot("Per-method curves against the budget", f"{gid}-curves.png", png))
        sort_cols = [c for c in ("run_id", "series", "budget") if c in ok.columns]
        ordered = ok.assign(budget=pd.to_numeric(ok["budget"], errors="coerce")) if "budget" in ok.columns else ok
        ordered = ordered.sort_values(sort_cols, kind="mergesort", na_position="first")
        group.cells = _table(ordered, metric_cols, multi, f"cells-{gid}", "every cell with status ok")
        group.comparison = _comparison(ok, present_runs, q, e, f"compare-{gid}")
        groups.append(group)
    run_counts = {r: {str(k): int(v) for k, v in frame.loc[frame["run_id"] == r, "status"].value_counts().items()} for r in run_ids}
    scaling = _scaling(frame, dense_series, styles, plots, multi)
    return Report(
        name=name or default_name(runs),
        title="spbench report: " + ", ".join(run_ids),
        generated=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        runs=runs,
        run_counts=run_counts,
        swept=_swept(frame, groups_raw),
        runs_table=_runs_table(runs, run_counts),
        groups=groups,
        failures=_failures(frame, labels, multi),
        notes=notes,
        scaling=scaling,
    )


def _analysed(ok: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """The rows to plot: a suite's summary records when it writes per-item records beside them.

    (vbench records each video and each VBench dimension, then one
    ``record_type="summary"`` per method x budget that aggregates them.)
    """
    if "record_type" in ok.columns and (ok["record_type"] == "summary").any():
        summary = ok[ok["record_type"] == "summary"]
        if len(summary) < len(ok):
            notes.append(f"{len(summary)} summary records analysed; the {len(ok) - len(summary)} per-video/per-dimension records they aggregate are left out")
        return summary
    return ok


def _check_requested(frame: pd.DataFrame, quality: str | None, efficiency: str | None) -> None:
    """A requested metric must have data in at least one suite (else a one-line error)."""
    for kind, spec in (("quality", quality), ("efficiency", efficiency)):
        if not spec:
            continue
        name, _ = M.parse_metric_spec(spec)
        if not M.has_data(frame[frame["status"] == "ok"], name):
            available = sorted({m.name for s in frame["suite"].unique() for m in M.candidates(frame[frame["suite"] == s], s, kind)})
            raise SpbenchError(f"--{kind} {name}: no cell has data for it; available: {', '.join(available) or 'none'}")


def parse_formats(text: str) -> list[str]:
    formats = [f.strip().lower() for f in text.split(",") if f.strip()]
    formats = ["md" if f == "markdown" else f for f in formats]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise SpbenchError(f"unknown report format {bad[0] if bad else text!r}: use md, html or md,html")
    return list(dict.fromkeys(formats))


def write_report(paths: list[str | Path], out: str | Path = "reports", name: str | None = None, formats: str | list[str] = "md,html", quality: str | None = None, efficiency: str | None = None, force: bool = False) -> dict[str, Path]:
    """Build and write the report; returns the written files by format."""
    from spbench.report.html import render_html
    from spbench.report.markdown import render_markdown

    formats = parse_formats(formats) if isinstance(formats, str) else formats
    if name is not None and (not name or slug(name, 200) != name):
        raise SpbenchError(f"report name {name!r} may only contain letters, digits, '.', '_' and '-'")
    report = build_report(paths, name, quality, efficiency)
    folder = Path(out) / report.name
    if folder.exists() and any(folder.iterdir()):
        if not force:
            raise SpbenchError(f"report folder {folder} already exists: pass --force to replace it, or choose another --name")
        for old in list(folder.glob("*.png")) + [folder / f for f in GENERATED_FILES]:
            if old.is_file():
                old.unlink()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpbenchError(f"cannot create report folder {folder}: {exc.strerror}") from None
    written: dict[str, Path] = {}
    if "md" in formats:
        for part in report.groups + report.scaling:
            for plot in part.plots:
                (folder / plot.file).write_bytes(plot.png)
        written["md"] = folder / "report.md"
        written["md"].write_text(render_markdown(report), encoding="utf-8")
    if "html" in formats:
        written["html"] = folder / "index.html"
        written["html"].write_text(render_html(report), encoding="utf-8")
    return written
