"""Report figures, drawn with matplotlib's object API (Agg, no pyplot state, no display).

Every method keeps one colour and one marker across all figures of a report
(:class:`Styles`); dense methods and baselines are black stars. When several
runs are compared, each run gets its own row of panels with shared axes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pandas as pd

from spbench.report.metrics import DENSITY, Metric
from spbench.report.pareto import pareto_mask

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "p", "d", "8", "H")
RUN_LINESTYLES = ("-", "--", ":", "-.")
DPI = 100


@dataclass(frozen=True)
class Style:
    color: str
    marker: str


class Styles:
    """A fixed colour and marker per series (method), assigned in sorted order."""

    def __init__(self, series: list[str], dense: set[str]):
        from matplotlib import colormaps

        palette = [colormaps["tab10"](i) for i in range(10)] + [colormaps["tab20"](i) for i in range(1, 20, 2)]
        self._styles: dict[str, Style] = {}
        i = 0
        for name in sorted(set(series)):
            if name in dense:
                self._styles[name] = Style("#000000", "*")
                continue
            rgba = palette[i % len(palette)]
            color = "#{:02x}{:02x}{:02x}".format(*(int(round(c * 255)) for c in rgba[:3]))
            self._styles[name] = Style(color, MARKERS[i % len(MARKERS)])
            i += 1

    def __getitem__(self, name: str) -> Style:
        return self._styles.get(name, Style("#7f7f7f", "x"))


def _numeric(frame: pd.DataFrame, column: str) -> np.ndarray:
    if column not in frame.columns:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)


def _use_log(values: np.ndarray, metric: Metric) -> bool:
    finite = values[np.isfinite(values)]
    return bool(metric.log and finite.size and (finite > 0).all() and finite.max() / finite.min() > 5)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)  # constrained layout already fits the legend
    return buf.getvalue()


def _axis_label(metric: Metric) -> str:
    return f"{metric.label} ({metric.arrow} better)"


def pareto_figure(frame: pd.DataFrame, quality: Metric, efficiency: Metric, styles: Styles, runs: list[str], title: str) -> bytes | None:
    """Quality vs the efficiency metric and quality vs density, frontier drawn; one row per run."""
    from matplotlib.figure import Figure

    axes_metrics = [efficiency] + ([DENSITY] if efficiency.name != DENSITY.name and DENSITY.name in frame.columns else [])
    y_all = _numeric(frame, quality.name)
    if not np.isfinite(y_all).any():
        return None
    nrows, ncols = len(runs), len(axes_metrics)
    fig = Figure()
    grid = fig.subplots(nrows, ncols, squeeze=False, sharey=True, sharex="col")
    for col, xmetric in enumerate(axes_metrics):
        x_all = _numeric(frame, xmetric.name)
        xlog, ylog = _use_log(x_all, xmetric), _use_log(y_all, quality)
        for row, run in enumerate(runs):
            ax = grid[row][col]
            part = frame[frame["run_id"] == run]
            x, y = _numeric(part, xmetric.name), _numeric(part, quality.name)
            for series in sorted(set(part["series"])):
                sel = (part["series"] == series).to_numpy() & np.isfinite(x) & np.isfinite(y)
                if sel.any():
                    st = styles[series]
                    ax.scatter(x[sel], y[sel], c=st.color, marker=st.marker, s=70 if st.marker == "*" else 42, label=series, zorder=3, edgecolors="none")
            mask = pareto_mask(x, y, xmetric.higher_is_better, quality.higher_is_better)
            if mask.any():
                order = np.argsort(x[mask], kind="stable")
                ax.plot(x[mask][order], y[mask][order], "--", color="#444444", lw=1.2, zorder=2, label="Pareto frontier")
                ax.scatter(x[mask], y[mask], s=150, facecolors="none", edgecolors="#444444", lw=1.0, zorder=4)
            if xlog:
                _log_axis(ax.xaxis, ax.set_xscale)
            if ylog:
                ax.set_yscale("log")
            if xmetric.name.startswith("speedup"):
                ax.axvline(1.0, color="#bbbbbb", lw=0.8, zorder=1)
            ax.grid(True, which="major", alpha=0.3)
            if row == nrows - 1:
                ax.set_xlabel(_axis_label(xmetric))
            if col == 0:
                ax.set_ylabel(_axis_label(quality))
            if nrows > 1:
                ax.set_title(f"run {run}", fontsize=9)
    return _finish(fig, np.ravel(grid), nrows, ncols, 5.0, 3.8, title, wspace=0.08, hspace=0.22)


def curves_figure(frame: pd.DataFrame, quality: Metric, efficiency: Metric, styles: Styles, runs: list[str], title: str) -> bytes | None:
    """Per method, against the budget: quality, efficiency and measured density (budget = density dashed)."""
    from matplotlib.figure import Figure

    budget = _numeric(frame, "budget")
    if not np.isfinite(budget).any():
        return None
    panels = [quality, efficiency] + ([DENSITY] if efficiency.name != DENSITY.name and DENSITY.name in frame.columns else [])
    fig = Figure()
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    lo, hi = np.nanmin(budget), np.nanmax(budget)
    for ax, metric in zip(axes, panels):
        values_all = _numeric(frame, metric.name)
        for r, run in enumerate(runs):
            part = frame[frame["run_id"] == run]
            b, v = _numeric(part, "budget"), _numeric(part, metric.name)
            style = RUN_LINESTYLES[r % len(RUN_LINESTYLES)]
            suffix = f" [{run}]" if len(runs) > 1 else ""
            for series in sorted(set(part["series"])):
                sel = (part["series"] == series).to_numpy() & np.isfinite(v)
                if not sel.any():
                    continue
                st = styles[series]
                if not np.isfinite(b[sel]).any():  # a dense baseline: a reference line across the budgets
                    ax.axhline(float(np.nanmedian(v[sel])), color=st.color, ls=":", lw=1.0, label=series + suffix)
                    continue
                sel &= np.isfinite(b)
                order = np.argsort(b[sel], kind="stable")
                ax.plot(b[sel][order], v[sel][order], ls=style, marker=st.marker, color=st.color, label=series + suffix, ms=5)
        if metric.name == DENSITY.name:
            ax.plot([lo, hi], [lo, hi], color="#999999", lw=0.8, ls="--", label="density = budget")
        if _use_log(values_all, metric):
            if metric.name.startswith("speedup"):
                _log_axis(ax.yaxis, ax.set_yscale)
            else:
                ax.set_yscale("log")
        if lo > 0 and hi / lo > 5:
            _log_axis(ax.xaxis, ax.set_xscale)
        ax.set_xlabel("budget (target density)")
        ax.set_ylabel(_axis_label(metric))
        ax.grid(True, alpha=0.3)
    return _finish(fig, axes, 1, len(panels), 3.3, 2.9, title, wspace=0.34, hspace=0.0)


def scaling_figure(lines: pd.DataFrame, styles: Styles, dense: set[str], title: str) -> bytes | None:
    """Run ms against sequence length (log-log) and, for sparse methods, the speedup over the dense baseline;
    one line per run, method and budget (rows of :func:`spbench.report.scaling.lines`)."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    if lines.empty:
        return None
    runs = list(dict.fromkeys(lines["run_id"]))
    fig = Figure()
    ax_t, ax_x = fig.subplots(1, 2, squeeze=True)
    for i, ((run, series, _), line) in enumerate(lines.groupby(["run_id", "series", "budget_key"], sort=True)):
        st = styles[series]
        budget = line["budget"].iloc[0]
        label = series + (f" b={budget:g}" if np.isfinite(budget) else "") + (f" [{run}]" if len(runs) > 1 else "")
        is_dense = series in dense
        color = st.color if is_dense else colormaps["tab10"](i % 10)
        ls = ":" if is_dense else RUN_LINESTYLES[runs.index(run) % len(RUN_LINESTYLES)]
        ax_t.plot(line["L"], line["run_ms"], ls=ls, marker=st.marker, color=color, ms=5, label=label)
        if not is_dense and line["speedup"].notna().any():
            ax_x.plot(line["L"], line["speedup"], ls=ls, marker=st.marker, color=color, ms=5, label=label)
    for ax, ylabel in ((ax_t, "run ms (lower better)"), (ax_x, "speedup over dense (higher better)")):
        _log_axis(ax.xaxis, ax.set_xscale)
        ax.set_xlabel("sequence length")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="major", alpha=0.3)
    _log_axis(ax_t.yaxis, ax_t.set_yscale)
    ax_x.axhline(1.0, color="#bbbbbb", lw=0.8, zorder=1)
    return _finish(fig, [ax_t, ax_x], 1, 2, 3.6, 3.0, title, wspace=0.34, hspace=0.0)


def _finish(fig, axes, nrows: int, ncols: int, panel_w: float, panel_h: float, title: str, wspace: float, hspace: float) -> bytes:
    """Fixed margins in inches and a legend on the right sized to its labels.

    (Cheaper than constrained layout or a tight bounding box, which redraw
    every tick to measure it: report time is mostly figure time.)
    """
    handles: dict[str, object] = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    labels = list(handles)
    legend_w = 0.5 + 0.07 * max((len(lab) for lab in labels), default=0)
    left, right, top, bottom = 0.95, legend_w + 0.15, 0.55, 0.65
    width = left + ncols * panel_w + (ncols - 1) * panel_w * wspace + right
    height = top + nrows * panel_h + (nrows - 1) * panel_h * hspace + bottom
    fig.set_size_inches(width, height)
    fig.subplots_adjust(left=left / width, right=1 - right / width, top=1 - top / height, bottom=bottom / height, wspace=wspace, hspace=hspace)
    if labels:
        fig.legend([handles[lab] for lab in labels], labels, loc="center left", bbox_to_anchor=(1 - (right - 0.1) / width, 0.5), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10, y=1 - 0.12 / height)
    return _png(fig)


def _log_axis(axis, set_scale) -> None:
    """A log axis labelled with plain numbers (0.5, 1, 2, 5) rather than powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    set_scale("log")
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())

