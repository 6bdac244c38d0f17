"""The HTML report in a real headless Chromium: it renders (non-blank screenshot) and the frontier table is in the DOM.

Skipped where no Chromium is installed, except in CI (CI=true), where
.ci/run installs Debian's `chromium` and a missing browser is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from spbench.report.build import write_report
from spbench.results import RunStore

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("Chromium is not installed: .ci/run should have installed Debian's chromium package")
    pytest.skip("Chromium is not installed (apt-get install chromium)")


def _run(browser: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [browser, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_html_report_renders_in_headless_chromium(tmp_path):
    browser = _chromium()
    store = RunStore(tmp_path / "results", "browser-run", config={"command": "suite kernel"}, environment={"gpu": "NVIDIA H100", "torch": "2.6.0"})
    shape = dict(suite="kernel", workload="video", seq=32000, kv_seq=32000, batch=1, heads=40, kv_heads=40, head_dim=128, dtype="bf16", causal=False, status="ok")
    points = [("cudnn", None, 1.0, 0.004, 1.0), ("psa", 0.1, 6.0, 0.08, 0.1), ("psa", 0.3, 2.8, 0.02, 0.3), ("block", 0.1, 5.5, 0.3, 0.1), ("block", 0.3, 3.0, 0.05, 0.3)]
    for method, budget, speedup, rel_l2, density in points:
        store.append({**shape, "method": method, "budget": budget, "role": "baseline" if budget is None else "method", "speedup_total": speedup, "speedup_run": speedup, "rel_l2": rel_l2, "cosine": 1 - rel_l2, "max_abs": rel_l2, "density": density})
    store.append({**shape, "method": "xattention", "budget": 0.1, "status": "failed", "error": "out of memory: tried to allocate 80 GiB"})
    html = write_report([store.path], out=tmp_path / "reports", formats="html")["html"]
    url = html.resolve().as_uri()

    shot = tmp_path / "shot.png"
    result = _run(browser, tmp_path, f"--screenshot={shot}", "--window-size=1200,2000", url)
    assert shot.exists(), result.stderr[-2000:]
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 2000)
    colours = image.getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 50  # text, tables and plots, not one flat colour
    non_white = sum(n for n, rgb in colours if sum(rgb) < 3 * 245)
    assert non_white > 0.02 * 1200 * 2000

    dom = _run(browser, tmp_path, "--dump-dom", url).stdout
    assert '<table id="frontier-g01' in dom and "Pareto frontier" in dom
    frontier = dom[dom.index('<table id="frontier-g01') :]
    frontier = frontier[: frontier.index("</table>")]
    for expected in ("psa", "cudnn (dense)", "block"):
        assert f"<td>{expected}</td>" in frontier
    assert "out of memory: tried to allocate 80 GiB" in dom
    assert dom.count("data:image/png;base64,") == 2  # both figures inlined
