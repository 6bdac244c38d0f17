"""`spbench report` on hand-made records of every suite: metrics, frontiers, escaping, self-containment."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from spbench.errors import SpbenchError
from spbench.report import metrics as M
from spbench.report.build import build_report, default_name, write_report
from spbench.report.html import render_html
from spbench.report.markdown import render_markdown
from spbench.results import RunStore

ENV = {"gpu": "NVIDIA H100 80GB HBM3", "driver": "550.54", "torch": "2.6.0", "triton": "3.2.0", "git_sha": "abc123def", "git_dirty": False, "time": "2026-01-01T00:00:00+00:00"}
EVIL = "<script>alert(1)</script>"
SHAPE = dict(workload="video", seq=32000, kv_seq=32000, batch=1, heads=40, kv_heads=40, head_dim=128, dtype="bf16", causal=False, device="cuda")


def kernel(method, budget, speedup, rel_l2, density, status="ok", error=None, **extra):
    rec = dict(suite="kernel", method=method, budget=budget, status=status, error=error, role="method", **SHAPE)
    if status == "ok":
        rec.update(speedup_total=speedup, speedup_run=speedup * 1.1, rel_l2=rel_l2, cosine=1 - rel_l2**2 / 2, max_abs=rel_l2 * 3, density=density, run_ms=10 / speedup, plan_ms=0.5, dense_ms=10.0)
    rec.update(extra)
    return rec


@pytest.fixture
def runs(tmp_path) -> dict[str, Path]:
    k = RunStore(tmp_path, "kern", config={"command": "suite kernel", "sweep": {"methods": ["all"], "budgets": [0.1, 0.3]}}, environment=ENV)
    for rec in [
        kernel("cudnn", None, 1.0, 0.004, 1.0, role="baseline"),
        kernel("psa", 0.1, 6.0, 0.08, 0.1),
        kernel("psa", 0.3, 2.8, 0.02, 0.3),
        kernel("block", 0.1, 5.5, 0.30, 0.1),  # dominated by psa 0.1 on both axes
        kernel("block", 0.3, 3.0, 0.05, 0.3),
        kernel("xattention", 0.1, 0.0, 0.0, 0.0, status="failed", error=f"out of memory: {EVIL}", error_kind="runtime"),
        kernel("rectified", 0.1, 0.0, 0.0, 0.0, status="invalid", error="output contains NaN or Inf"),
        kernel(f"{EVIL}|x", 0.3, 2.0, 0.5, 0.3),
        kernel("psa", 0.2, 4.0, 0.04, 0.2, seq=110000, kv_seq=110000),  # a second shape
    ]:
        k.append(rec)
    v = RunStore(tmp_path, "vbench-run", config={"command": "suite vbench"}, environment={**ENV, "gpu": "NVIDIA H200"})
    for method, budget, speedup, psnr, lpips, total in [("dense", None, 1.0, 99.0, 0.0, 0.84), ("psa", 0.2, 1.8, 27.0, 0.08, 0.835), ("psa", 0.1, 2.4, 22.0, 0.2, 0.80), ("block", 0.1, 2.3, 19.0, 0.3, 0.79)]:
        v.append(dict(suite="vbench", model="wan2.1-1.3b", num_frames=81, method=method, budget=budget, status="ok", speedup=speedup, psnr=psnr, ssim=psnr / 100, lpips=lpips, vbench_total=total,
                      vbench={"motion_smoothness": total + 0.1, "subject_consistency": total + 0.05}, density=budget or 1.0, notes=["a", "b"], extra={"deep": {"x": 1}}, record_type="summary"))  # fmt: skip
    # Per-video and per-dimension records beside the summaries must not become points.
    v.append(dict(suite="vbench", model="wan2.1-1.3b", num_frames=81, method="block", budget=0.1, status="ok", record_type="video", speedup=9.0, psnr=60.0, vbench_total=0.99, density=0.1))
    v.append(dict(suite="vbench", model="wan2.1-1.3b", num_frames=81, method="psa", budget=0.1, status="ok", record_type="dimension", **{"vbench.motion_smoothness": 0.99}))
    v.append(dict(suite="vbench", model="wan2.1-1.3b", num_frames=81, method="psa", budget=0.2, status="failed", record_type="video", error="CUDA out of memory in the VAE"))
    m = RunStore(tmp_path, "vmme", config={"command": "suite videomme"}, environment=ENV)
    for method, budget, acc, sp in [("dense", None, 0.62, 1.0), ("psa", 0.2, 0.61, 1.5), ("psa", 0.1, 0.55, 2.0), ("block", 0.2, 0.60, 1.4)]:
        m.append({"suite": "videomme", "model": "qwen2.5-vl-7b", "method": method, "budget": budget, "status": "ok", "accuracy": acc, "accuracy.short": acc + 0.1, "speedup_prefill": sp, "density": budget or 1.0})
    odd = RunStore(tmp_path, "odd", config={}, environment={})
    odd.append({"method": "mystery", "rel_l2": "not a number", "speedup_total": [1, 2], "status": "ok"})  # no suite, junk values
    odd.append({"suite": "other", "method": "m2", "score": 3.0})
    return {"kern": k.path, "vbench": v.path, "vmme": m.path, "odd": odd.path}


def _group(report, suite, contains=""):
    return next(g for g in report.groups if g.suite == suite and contains in g.label)


def test_each_suite_gets_its_own_metrics_and_frontier(runs):
    report = build_report(list(runs.values()), plots=False)
    assert {g.suite for g in report.groups} == {"kernel", "vbench", "videomme", "unknown", "other"}
    kg = _group(report, "kernel", "L=32000")
    assert (kg.quality.name, kg.quality.higher_is_better, kg.efficiency.name) == ("rel_l2", False, "speedup_total")
    front = {(row[0], row[1]) for row in kg.frontier.rows}  # multi-run: run, method, budget
    methods = {(r[1], r[2]) for r in kg.frontier.rows}
    assert {"kern"} == {r for r, _ in front}
    assert methods == {("cudnn (dense)", "-"), ("psa", "0.1"), ("psa", "0.3"), ("block", "0.3")}
    assert kg.frontier.rows[0][1] == "psa" and kg.frontier.rows[0][2] == "0.1"  # best speedup first
    assert _group(report, "kernel", "L=110000").frontier.rows[0][1] == "psa"
    vg = _group(report, "vbench")
    assert (vg.quality.name, vg.efficiency.name) == ("vbench_total", "speedup")
    assert {(r[1], r[2]) for r in vg.frontier.rows} == {("dense", "-"), ("psa", "0.2"), ("psa", "0.1")}  # block 0.1 dominated
    assert any("summary records analysed" in n for n in vg.notes) and len(vg.cells.rows) == 4
    mg = _group(report, "videomme")
    assert (mg.quality.name, mg.efficiency.name) == ("accuracy", "speedup_prefill")
    assert {(r[1], r[2]) for r in mg.frontier.rows} == {("dense", "-"), ("psa", "0.2"), ("psa", "0.1")}
    # Records with no usable metrics are listed, not analysed.
    assert _group(report, "other").frontier is None and _group(report, "other").notes
    # Failures with their reasons.
    failures = {(r[2], r[4]): r[5] for r in report.failures.rows}
    assert "out of memory" in failures[("xattention", "failed")] and "NaN" in failures[("rectified", "invalid")]
    assert "VAE" in failures[("psa", "failed")]
    assert ("cells", "9 ok, 1 failed, 1 invalid") in report.swept or any(k == "cells" for k, _ in report.swept)


def test_requested_metrics_apply_where_they_have_data(runs):
    report = build_report([runs["kern"], runs["vbench"]], quality="lpips", plots=False)
    vg, kg = _group(report, "vbench"), _group(report, "kernel")
    assert vg.quality.name == "lpips" and not vg.quality.higher_is_better
    assert kg.quality.name == "rel_l2" and any("lpips" in n for n in kg.notes)
    dim = build_report([runs["vbench"]], quality="vbench.motion_smoothness", efficiency="density", plots=False)
    g = dim.groups[0]
    assert g.quality.name == "vbench.motion_smoothness" and g.quality.higher_is_better and not g.efficiency.higher_is_better
    acc = build_report([runs["vmme"]], quality="accuracy.short", plots=False).groups[0]
    assert acc.quality.name == "accuracy.short" and acc.quality.higher_is_better
    with pytest.raises(SpbenchError, match="--quality nosuch: no cell has data"):
        build_report([runs["kern"]], quality="nosuch", plots=False)
    with pytest.raises(SpbenchError, match="score:higher or score:lower"):
        build_report([runs["odd"]], quality="score", efficiency="score:lower", plots=False)
    with pytest.raises(SpbenchError, match="must be higher or lower"):
        M.parse_metric_spec("x:sideways")
    assert M.lookup("vbench.aesthetic_quality", "vbench").higher_is_better
    assert not M.lookup("lpips", "vbench").higher_is_better and not M.lookup("density", "videomme").higher_is_better


def test_user_strings_are_escaped_and_the_page_is_self_contained(runs):
    report = build_report([runs["kern"]])
    html = render_html(report)
    assert "<script" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    for external in ("src=\"http", "href=\"http", "<link", "url(", "@import", "<iframe"):
        assert external not in html
    images = re.findall(r'<img src="([^"]+)"', html)
    assert images and all(src.startswith("data:image/png;base64,") for src in images)
    md = render_markdown(report)
    assert "<script" not in md and "&lt;script&gt;" in md
    assert "\\|x" in md  # a pipe in a value does not break the table
    for line in md.splitlines():
        if line.startswith("|"):
            assert line.endswith("|")


def test_write_report_files_formats_and_no_silent_overwrite(runs, tmp_path):
    out = tmp_path / "reports"
    written = write_report([runs["kern"]], out=out)
    folder = out / "kern"
    assert written == {"md": folder / "report.md", "html": folder / "index.html"}
    md = written["md"].read_text()
    pngs = sorted(p.name for p in folder.glob("*.png"))
    assert len(pngs) == 4  # Pareto + curves for each of the two shapes
    assert all(f"]({p})" in md for p in pngs)
    assert "NVIDIA H100 80GB HBM3" in md and "abc123def" in md and "2.6.0" in md
    with pytest.raises(SpbenchError, match="already exists"):
        write_report([runs["kern"]], out=out)
    only_html = write_report([runs["kern"]], out=out, formats="html", force=True)
    assert set(only_html) == {"html"} and not (folder / "report.md").exists() and not list(folder.glob("*.png"))
    with pytest.raises(SpbenchError, match="unknown report format"):
        write_report([runs["kern"]], out=out, formats="pdf", force=True)
    with pytest.raises(SpbenchError, match="may only contain"):
        write_report([runs["kern"]], out=out, name="../escape")
    with pytest.raises(SpbenchError, match="not a run folder"):
        write_report([tmp_path / "reports"], out=out, name="x")


def test_several_runs_side_by_side(runs, tmp_path):
    from spbench.report.runs import load_runs

    infos, _ = load_runs([runs["kern"], runs["vbench"]])
    assert default_name(infos) == "compare-kern-vs-vbench-run"
    report = build_report([runs["kern"], runs["vbench"]], plots=False)
    assert report.runs_table.columns == ["run", "kern", "vbench-run"]
    gpus = next(r for r in report.runs_table.rows if r[0] == "GPU")
    assert gpus == ["GPU", "NVIDIA H100 80GB HBM3", "NVIDIA H200"]


def test_cli_report(runs, tmp_path):
    from typer.testing import CliRunner

    from spbench import cli

    cli._register_commands()
    result = CliRunner().invoke(cli.app, ["report", str(runs["kern"]), str(runs["vmme"]), "--out", str(tmp_path / "r"), "--format", "md", "--efficiency", "density"])
    assert result.exit_code == 0, result.output
    md = (tmp_path / "r" / "compare-kern-vs-vmme" / "report.md").read_text()
    assert "efficiency: `density` (lower is better)" in md
    bad = CliRunner().invoke(cli.app, ["report", str(tmp_path / "nope")])
    assert bad.exit_code == 2 and "does not exist" in bad.output


def test_time_against_sequence_length(tmp_path):
    """Kernel cells of one shape at several lengths get a scaling table and figure: medians over repeated cells,
    x the dense baseline, the exponent between the two longest lengths; cross-attention cells, lines measured at
    one length and shapes with one length stay out."""
    import math

    store = RunStore(tmp_path, "scan", config={"command": "suite kernel"}, environment=ENV)
    for L, dense_ms, psa_ms in ((8000, 1.0, 0.5), (16000, 4.0, 1.0), (32000, 16.0, 2.0)):
        shape = dict(seq=L, kv_seq=L)
        store.append(kernel("cudnn", None, 1.0, 0.004, 1.0, role="baseline", run_ms=dense_ms, speedup_run=1.0, **shape))
        store.append(kernel("psa", 0.1, 1.0, 0.05, 0.1, run_ms=psa_ms, speedup_run=dense_ms / psa_ms, **shape))
    store.append(kernel("psa", 0.1, 1.0, 0.05, 0.1, run_ms=3.0, speedup_run=4 / 3, seq=16000, kv_seq=16000))  # a repeat: median 2.0 at 16000
    store.append(kernel("psa", 0.1, 1.0, 0.05, 0.1, run_ms=0.001, seq=64000, kv_seq=32000))  # cross-attention: not a length point
    store.append(kernel("block", 0.1, 1.0, 0.05, 0.1, run_ms=0.3, seq=8000, kv_seq=8000))  # one length only
    store.append(kernel("psa", 0.1, 1.0, 0.05, 0.1, run_ms=0.3, heads=12, kv_heads=12))  # another shape, one length
    store.append(kernel("psa", 0.1, 1.0, 0.05, 0.1, run_ms=0.6, heads=12, kv_heads=12))
    report = build_report([store.path], plots=True)
    assert len(report.scaling) == 1
    entry = report.scaling[0]
    assert "L=8000..32000" in entry.label and "Hq=40" in entry.label
    assert entry.table.columns == ["method", "budget", "L=8000", "L=16000", "L=32000", "exponent"]
    rows = {r[0]: r for r in entry.table.rows}
    assert set(rows) == {"cudnn (dense)", "psa"}
    assert rows["cudnn (dense)"][2:] == ["1", "4", "16", "2"]
    # psa: 0.5, median(1.0, 3.0) = 2.0, 2.0 ms; x dense 2, 2.667 (median of 4 and 4/3), 8; exponent log(2/2)/log 2 = 0
    assert rows["psa"][2:5] == ["0.5 (2x)", "2 (2.667x)", "2 (8x)"] and float(rows["psa"][5]) == 0.0
    assert entry.plots and entry.plots[0].png.startswith(b"\x89PNG")
    written = write_report([store.path], tmp_path / "rep", formats="md,html")
    md = written["md"].read_text()
    assert "## Time against sequence length" in md and entry.plots[0].file in md
    assert (written["md"].parent / entry.plots[0].file).is_file()
    html = written["html"].read_text()
    assert 'id="scaling-section"' in html and f'id="{entry.id}"' in html
    assert math.isclose(float(next(r for r in entry.table.rows if r[0] == "cudnn (dense)")[-1]), 2.0)
