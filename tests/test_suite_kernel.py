"""`spbench suite kernel`: method selection, config, resilience (failures, kill, Ctrl-C, time cap), resume, report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import suite_toy_methods as toy
from spbench.errors import SpbenchError
from spbench.results import RunStore, read_cells
from spbench.suites import kernel as suite

TESTS = Path(__file__).resolve().parent
# Tiny CPU shape: every cell takes milliseconds outside the Triton interpreter.
SHAPE = ["--seq", "256", "--heads", "2", "--head-dim", "64", "--device", "cpu", "--repeats", "1", "--warmup", "0", "--error-rows", "64"]
# The CLI in a subprocess, with the toy methods registered.
CLI = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); import spbench.registry as r, suite_toy_methods as t; "
    "r.BUILTIN.update(t.ENTRIES); from spbench.cli import main; main(sys.argv[1:])"
)


@pytest.fixture
def toys(monkeypatch):
    toy.register(monkeypatch)


@pytest.fixture
def cli():
    from spbench import cli as cli_module

    cli_module._register_commands()
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(cli_module.app, [str(a) for a in args], catch_exceptions=False)

    return invoke


def _records(run: Path) -> list[dict]:
    return list(read_cells(run / "cells.jsonl"))


def _spawn(tmp_path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "TRITON_INTERPRET": "1", "COLUMNS": "200"}
    # SIGINT back to its default in the child: a shell that runs the tests in the background hands it down
    # ignored, and Python then never raises KeyboardInterrupt (the Ctrl-C test would see the sweep finish)
    return subprocess.Popen([sys.executable, "-c", CLI, str(TESTS), *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_lines(path: Path, n: int, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().count("\n") >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"sweep exited early ({proc.returncode}): {proc.communicate()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"{path} never reached {n} lines")


# -- method selection and configuration -------------------------------------------


def test_expand_methods(toys):
    names = dict(suite.expand_methods(["toy-*"]))
    assert set(names) == {"toy-sparse", "toy-attention", "toy-wrap", "toy-d32"} and not any(names.values())
    assert suite.expand_methods(["toy-sparse,toy-attention".split(",")[0], "toy-attention"]) == [("toy-sparse", True), ("toy-attention", True)]
    assert [m for m, _ in suite.expand_methods(["*attention*"])] == sorted(m for m in suite._glob("*attention*", False))
    assert "toy-attention" in dict(suite.expand_methods(["*attention*"]))
    composed = dict(suite.expand_methods(["toy-wrap+toy-*"]))
    assert "toy-wrap+toy-sparse" in composed and "toy-wrap+toy-wrap" not in composed
    from spbench.registry import method_names

    selected = [m for m, _ in suite.expand_methods(["all"])]
    assert selected == method_names(sweepable=True)
    assert "levels" not in selected and "levels" in dict(suite.expand_methods(["levels"]))  # probes only by name
    with pytest.raises(SpbenchError, match="unknown method 'nosuch'"):
        suite.expand_methods(["toy-sparse", "nosuch"])
    with pytest.raises(SpbenchError, match="matches no registered method"):
        suite.expand_methods(["zzz*"])


def test_unknown_method_is_one_line_error_before_any_work(cli, toys, tmp_path):
    result = cli("suite", "kernel", "--methods", "toy-sparse,psa-typo-xyz", *SHAPE, "--out", tmp_path)
    assert result.exit_code == 2
    assert "unknown method 'psa-typo-xyz'" in result.output and "Traceback" not in result.output
    assert not any(tmp_path.iterdir())  # no run folder was created


def test_params_route_to_the_methods_that_have_them(toys):
    per = suite.method_params({"noise": 0.5, "toy-attention": {"sleep": 0.0}}, ["toy-sparse", "toy-attention", "dense"])
    assert per == {"toy-sparse": {"noise": 0.5}, "toy-attention": {"noise": 0.5, "sleep": 0.0}, "dense": {}}
    with pytest.raises(SpbenchError, match="no selected method has a knob 'tau'"):
        suite.method_params({"tau": 1}, ["toy-sparse"])
    with pytest.raises(SpbenchError, match="not in this sweep"):
        suite.method_params({"toy-attention": {"noise": 1}}, ["toy-sparse"])
    assert suite.parse_params_items(["noise=0.2", "toy-sparse.sleep=1"]) == {"noise": 0.2, "toy-sparse": {"sleep": 1}}


def test_config_file_round_trips_and_cli_overrides(toys, tmp_path):
    sweep = suite.resolve_sweep(cli_values=dict(methods="toy-sparse,dense", budgets="0.5,0.1", seq="1k,256", head_dim="64", device="cpu", params={"noise": 0.3, "toy-sparse": {"sleep": 0.0}}, grid=None))
    assert sweep.budgets == [0.1, 0.5] and sweep.seq == [1000, 256] and sweep.dtype == "fp32" and sweep.heads == 4
    path = tmp_path / "sweep.toml"
    path.write_text(suite.dump_toml(sweep))
    again = suite.resolve_sweep(suite.load_config(path))
    assert again == sweep
    # CLI options given replace the file's values; --param merges key by key.
    over = suite.resolve_sweep(suite.load_config(path), dict(budgets="0.2", params={"toy-sparse": {"fail_below": 0.1}}))
    assert over.budgets == [0.2] and over.methods == sweep.methods
    assert over.params == {"noise": 0.3, "toy-sparse": {"sleep": 0.0, "fail_below": 0.1}}
    assert suite.sweep_differences(sweep, over) == ["budgets", "params"]
    path.write_text('budgets = [0.1]\nbogus = 1\n')
    with pytest.raises(SpbenchError, match="unknown key 'bogus'"):
        suite.load_config(path)
    path.write_text("budgets = [1.5]\n")
    with pytest.raises(SpbenchError, match=r"budget must be in \(0, 1\]"):
        suite.load_config(path)
    with pytest.raises(SpbenchError, match="does not exist"):
        suite.load_config(tmp_path / "missing.toml")


def test_plan_is_shape_major_with_one_baseline_per_shape(toys):
    sweep = suite.resolve_sweep(cli_values=dict(methods="toy-*", budgets="0.1,0.5", seq="256,512", head_dim="32,64", device="cpu"))
    notes: list[str] = []
    cells = suite.plan_cells(sweep, notes)
    shapes = [str(pc.cell.shape_key()) for pc in cells]
    assert shapes == sorted(shapes, key=shapes.index)  # contiguous per shape
    assert len(set(shapes)) == 4
    assert sum(pc.role == "baseline" for pc in cells) == 4
    for shape in set(shapes):
        group = [pc for pc in cells if str(pc.cell.shape_key()) == shape]
        assert group[0].role == "baseline"
    # toy-d32 runs on head dim 32 only, with a note for the others (it came from a glob).
    d32 = [pc.cell.head_dim for pc in cells if pc.cell.method == "toy-d32"]
    assert set(d32) == {32} and any("toy-d32" in n for n in notes)
    assert len({pc.key for pc in cells}) == len(cells)
    with pytest.raises(SpbenchError, match="supports head dims 32"):
        suite.plan_cells(suite.resolve_sweep(cli_values=dict(methods="toy-d32", seq="256", head_dim="64", device="cpu")))


# -- end to end through the CLI -----------------------------------------------------


def test_sweep_records_failures_resumes_and_reports(cli, toys, tmp_path):
    args = ["suite", "kernel", "--methods", "toy-sparse", "--budgets", "0.05,0.1,0.3,0.6", *SHAPE,
            "--param", "toy-sparse.fail_below=0.07", "--param", "nan_below=0.2", "--out", tmp_path / "results", "--run-id", "r1"]  # fmt: skip
    result = cli(*args)
    assert result.exit_code == 0, result.output
    run = tmp_path / "results" / "r1"
    recs = _records(run)
    assert len(recs) == 5
    base = recs[0]
    assert base["role"] == "baseline" and base["method"] == "dense" and base["budget"] is None and base["status"] == "ok"
    by_budget = {r["budget"]: r for r in recs[1:]}
    assert by_budget[0.05]["status"] == "failed" and "out of memory" in by_budget[0.05]["error"]
    assert by_budget[0.1]["status"] == "invalid" and "NaN" in by_budget[0.1]["error"]
    assert by_budget[0.3]["status"] == "ok" and by_budget[0.6]["status"] == "ok"
    assert by_budget[0.3]["density"] == pytest.approx(0.3) and by_budget[0.3]["rel_l2"] > by_budget[0.6]["rel_l2"]
    assert all(r["dense_ms"] == base["dense_ms"] for r in recs if r["status"] == "ok")  # one dense timing per shape
    assert "failed" in result.output and "out of memory" in result.output
    meta = json.loads((run / "run.json").read_text())
    assert meta["config"]["sweep"]["budgets"] == [0.05, 0.1, 0.3, 0.6]
    saved = suite.load_config(run / "sweep.toml")
    assert saved["params"] == {"toy-sparse": {"fail_below": 0.07}, "nan_below": 0.2}

    # Same run id: nothing is measured again; a bare --run-id resumes from sweep.toml.
    again = cli("suite", "kernel", "--out", tmp_path / "results", "--run-id", "r1")
    assert again.exit_code == 0, again.output
    assert "0 cells measured" in again.output and "5 were already recorded" in again.output
    assert len(_records(run)) == 5
    # Changing the sweep of an existing run is refused, naming what differs.
    changed = cli("suite", "kernel", "--out", tmp_path / "results", "--run-id", "r1", "--budgets", "0.2")
    assert changed.exit_code == 2 and "differs in: budgets" in changed.output
    # A wider sweep in a new run, from the saved config plus an override.
    wider = cli("suite", "kernel", "--config", run / "sweep.toml", "--budgets", "0.3,0.6,0.9", "--out", tmp_path / "results", "--run-id", "r2")
    assert wider.exit_code == 0, wider.output
    assert len(_records(tmp_path / "results" / "r2")) == 4

    rep = cli("report", run, tmp_path / "results" / "r2", "--out", tmp_path / "reports", "--name", "both")
    assert rep.exit_code == 0, rep.output
    md = (tmp_path / "reports" / "both" / "report.md").read_text()
    assert "## kernel: video L=256 B=1 Hq=2 d=64 fp32" in md
    assert "### Pareto frontier" in md and "### Runs side by side" in md
    assert "out of memory" in md and "invalid" in md and "NaN" in md
    assert "| r1 | dense | - |" in md  # the baseline is on r1's frontier (exact, as fast as itself)
    pngs = sorted(p.name for p in (tmp_path / "reports" / "both").glob("*.png"))
    assert pngs and all(f"]({name})" in md for name in pngs)
    html = (tmp_path / "reports" / "both" / "index.html").read_text()
    assert "data:image/png;base64," in html and 'id="frontier-g01' in html
    # Never overwritten silently.
    again = cli("report", run, "--out", tmp_path / "reports", "--name", "both")
    assert again.exit_code == 2 and "--force" in again.output
    assert cli("report", run, "--out", tmp_path / "reports", "--name", "both", "--force").exit_code == 0
    assert "r2" not in (tmp_path / "reports" / "both" / "report.md").read_text()


def test_every_registered_sparse_method_runs_in_a_sweep(cli, tmp_path):
    """`--methods all` on a tiny shape: each method that supports it gets a recorded cell, then a report."""
    from spbench.registry import get_class, method_names

    names = [m for m in method_names(sweepable=True) if get_class(m).head_dims in (None,) or 64 in get_class(m).head_dims]
    shape = ["--seq", "256", "--heads", "1", "--head-dim", "64", "--device", "cpu", "--repeats", "1", "--warmup", "0", "--error-rows", "32"]
    result = cli("suite", "kernel", "--methods", "all", "--budgets", "0.25", *shape, "--out", tmp_path, "--run-id", "all")
    assert result.exit_code == 0, result.output
    recs = _records(tmp_path / "all")
    assert sorted(r["method"] for r in recs if r["role"] == "method") == sorted(names)
    assert all(r["status"] in ("ok", "failed", "invalid") for r in recs)
    # The same command again resumes (nothing left to do): `all` was saved as the names it selected.
    again = cli("suite", "kernel", "--methods", "all", "--budgets", "0.25", *shape, "--out", tmp_path, "--run-id", "all")
    assert again.exit_code == 0 and "0 cells measured" in again.output, again.output
    assert suite.load_config(tmp_path / "all" / "sweep.toml")["methods"] == sorted(names)
    assert cli("report", tmp_path / "all", "--out", tmp_path / "reports").exit_code == 0
    assert (tmp_path / "reports" / "all" / "index.html").exists()


def test_kill_mid_run_loses_at_most_the_cell_in_flight(tmp_path):
    args = ["suite", "kernel", "--methods", "toy-sparse", "--budgets", "0.1,0.2,0.3,0.4,0.5", *SHAPE, "--param", "sleep=0.4", "--out", "results", "--run-id", "k"]
    cells = tmp_path / "results" / "k" / "cells.jsonl"
    proc = _spawn(tmp_path, *args)
    _wait_for_lines(cells, 2, proc)  # the baseline and one toy cell
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = _records(tmp_path / "results" / "k")
    assert 2 <= len(before) < 6
    # Simulate the worst kill: in the middle of writing a line.
    with open(cells, "a") as f:
        f.write('{"cell_key": "half-writ')
    proc = _spawn(tmp_path, "suite", "kernel", "--out", "results", "--run-id", "k")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert f"{len(before)} were already recorded" in out
    lines = cells.read_text().splitlines()
    recs = [json.loads(line) for line in lines]  # every line is whole JSON
    assert len(recs) == 6 and len({r["cell_key"] for r in recs}) == 6
    assert [r["cell_key"] for r in recs[: len(before)]] == [r["cell_key"] for r in before]


def test_ctrl_c_stops_with_exit_130_and_says_how_to_resume(tmp_path):
    args = ["suite", "kernel", "--methods", "toy-sparse", "--budgets", "0.1,0.2,0.3,0.4,0.5", *SHAPE, "--param", "sleep=0.5", "--out", "results", "--run-id", "c"]
    cells = tmp_path / "results" / "c" / "cells.jsonl"
    proc = _spawn(tmp_path, *args)
    _wait_for_lines(cells, 2, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert "interrupted" in err and "spbench suite kernel --out results --run-id c" in err
    recs = _records(tmp_path / "results" / "c")
    assert 2 <= len(recs) < 6 and cells.read_text().endswith("\n")


def test_time_cap_stops_between_cells_and_resumes(toys, tmp_path):
    sweep = suite.resolve_sweep(cli_values=dict(methods="toy-sparse", budgets="0.1,0.2,0.3,0.4", seq="128", heads=1, head_dim="32", device="cpu", repeats=1, warmup=0))
    cells = suite.plan_cells(sweep)
    ticks = iter(range(0, 10_000, 10))  # every clock reading is 10 s after the previous one

    store = RunStore(tmp_path, "cap", config={"sweep": sweep.to_dict()}, environment={})
    outcome = suite.run_sweep(cells, store, max_seconds=45, clock=lambda: next(ticks))
    assert outcome.stopped == "time cap" and 0 < outcome.ran < len(cells)
    assert len(store.records()) == outcome.ran
    rest = suite.run_sweep(cells, RunStore(tmp_path, "cap", environment={}))
    assert rest.stopped is None and rest.already_done == outcome.ran and rest.ran == len(cells) - outcome.ran
    assert len({r["cell_key"] for r in store.records()}) == len(cells)


def test_max_minutes_option_and_dry_run(cli, toys, tmp_path):
    dry = cli("suite", "kernel", "--methods", "toy-s*,toy-d32", "--budgets", "0.1,0.2", *SHAPE, "--head-dim", "32,64", "--out", tmp_path, "--dry-run")
    assert dry.exit_code == 0 and "toy-sparse b=0.1" in dry.output and "budgets = [0.1, 0.2]" in dry.output
    # The saved sweep lists what the patterns selected; a named method skips the shapes it does not support.
    assert 'methods = ["toy-sparse", "toy-d32"]' in dry.output and "skipped toy-d32 on 1 shape(s)" in dry.output
    assert not any(tmp_path.iterdir())
    bad = cli("suite", "kernel", "--methods", "toy-sparse", *SHAPE, "--out", tmp_path, "--max-minutes", "0")
    assert bad.exit_code == 2
    capped = cli("suite", "kernel", "--methods", "toy-sparse", "--budgets", "0.1,0.2", *SHAPE, "--out", tmp_path, "--run-id", "m", "--max-minutes", "0.0001")
    assert capped.exit_code == 0 and "--max-minutes cap" in capped.output and "--run-id m" in capped.output


def test_retry_failed_and_reports_keep_the_newest_record(toys, tmp_path, monkeypatch):
    from spbench.report.build import build_report

    sweep = suite.resolve_sweep(cli_values=dict(methods="toy-sparse", budgets="0.2,0.6", seq="128", heads=1, head_dim="32", device="cpu", repeats=1, warmup=0))
    cells = suite.plan_cells(sweep)
    monkeypatch.setenv("SPBENCH_TOY_FAIL", "1")
    first = suite.run_sweep(cells, RunStore(tmp_path, "retry", environment={}))
    assert first.counts == {"ok": 1, "failed": 2}  # the baseline runs, the toy cells fail
    monkeypatch.delenv("SPBENCH_TOY_FAIL")
    assert suite.run_sweep(cells, RunStore(tmp_path, "retry", environment={})).ran == 0  # failures count as done
    again = suite.run_sweep(cells, RunStore(tmp_path, "retry", environment={}), retry_failed=True)
    assert again.ran == 2 and again.counts == {"ok": 2}
    report = build_report([tmp_path / "retry"], plots=False)
    assert not report.failures.rows and len(report.groups[0].cells.rows) == 3


def test_a_broken_gpu_context_stops_the_sweep(toys, tmp_path, monkeypatch):
    sweep = suite.resolve_sweep(cli_values=dict(methods="toy-sparse", budgets="0.1,0.2,0.3", seq="128", heads=1, head_dim="32", device="cpu", repeats=1, warmup=0, params={"fail_below": 0.15}))
    cells = suite.plan_cells(sweep)
    monkeypatch.setattr(suite, "device_error", lambda device: "CUDA error: an illegal memory access was encountered")
    outcome = suite.run_sweep(cells, RunStore(tmp_path, "sticky", environment={}))
    assert outcome.stopped == "device error" and "illegal memory access" in outcome.detail
    assert outcome.ran == 2 and outcome.counts == {"ok": 1, "failed": 1}  # stopped right after the failing cell
    monkeypatch.undo()
    assert suite.device_error(__import__("torch").device("cpu")) is None
