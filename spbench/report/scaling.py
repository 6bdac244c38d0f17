"""Time against sequence length: kernel cells of one shape measured at several lengths.

The report's groups are per shape, so a sweep over ``--seq`` lands in one
group per length and nothing shows how the time grows. This view joins the
kernel cells whose shape differs only in the length (self-attention: key
length = query length) and, per method and budget, lists the run time at each
length (median over repeated cells), the speedup over the dense baseline
where recorded, and the growth exponent between the two longest lengths
(2 for attention whose cost is quadratic in L).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

#: the kernel group columns except the lengths: cells that agree on these form one family
FAMILY_COLUMNS = ("workload", "batch", "heads", "kv_heads", "head_dim", "dtype", "causal")


def families(ok: pd.DataFrame) -> list[tuple[dict, pd.DataFrame]]:
    """(shape values, rows) of every family of ok kernel cells measured at two or more query lengths."""
    if ok.empty or "seq" not in ok.columns or "run_ms" not in ok.columns:
        return []
    cells = ok.assign(L=pd.to_numeric(ok["seq"], errors="coerce"), run_ms=pd.to_numeric(ok["run_ms"], errors="coerce"))
    if "kv_seq" in cells.columns:  # cross-attention cells (Lk != Lq) do not scale with one length
        kv = pd.to_numeric(cells["kv_seq"], errors="coerce")
        cells = cells[kv.isna() | (kv == cells["L"])]
    cells = cells[cells["L"].notna() & cells["run_ms"].notna()]
    cols = [c for c in FAMILY_COLUMNS if c in cells.columns]
    if cells.empty:
        return []
    keys = cells[cols].astype(str).agg("|".join, axis=1) if cols else pd.Series("", index=cells.index)
    out = []
    for key in dict.fromkeys(keys):
        rows = cells[keys == key]
        if rows["L"].nunique() >= 2:
            out.append(({c: rows[c].iloc[0] for c in cols}, rows))
    return out


def lines(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, series, budget, L): median run ms and speedup over the repeated cells; a (run, series,
    budget) measured at one length only is left out (it has nothing to show here)."""
    data = rows.assign(budget=pd.to_numeric(rows["budget"], errors="coerce") if "budget" in rows.columns else np.nan,
                       speedup=pd.to_numeric(rows["speedup_run"], errors="coerce") if "speedup_run" in rows.columns else np.nan)
    data = data.assign(budget_key=data["budget"].fillna(-1.0))  # NaN keys would drop dense baselines from groupby
    grouped = data.groupby(["run_id", "series", "budget_key", "L"], sort=True)
    out = grouped.agg(run_ms=("run_ms", "median"), speedup=("speedup", "median"), budget=("budget", "first")).reset_index()
    spans = out.groupby(["run_id", "series", "budget_key"])["L"].transform("nunique")
    return out[spans >= 2].reset_index(drop=True)


def exponent(lengths: list[float], times: list[float]) -> float:
    """log(t2 / t1) / log(L2 / L1) between the two longest lengths (nan when not computable)."""
    if len(lengths) < 2 or not all(t > 0 for t in times[-2:]):
        return float("nan")
    (l1, l2), (t1, t2) = lengths[-2:], times[-2:]
    return math.log(t2 / t1) / math.log(l2 / l1)
