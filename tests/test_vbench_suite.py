"""`spbench suite vbench` end to end on a tiny random-weight Wan pipeline, VBench in its own env."""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from video_tiny import in_ci, one_thread

from spbench import vbench_env
from spbench.errors import SpbenchError
from spbench.registry import method_names
from spbench.results import read_cells

SPARSE = method_names(sparse_only=True)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from spbench.integrations.tiny import save_tiny_wan_pipeline

    with one_thread():
        return save_tiny_wan_pipeline(tmp_path_factory.mktemp("models") / "tiny-wan")


@pytest.fixture
def cli():
    from spbench import cli as cli_module

    cli_module._register_commands()
    runner = CliRunner()

    def invoke(*args):
        with one_thread():
            return runner.invoke(cli_module.app, [str(a) for a in args], catch_exceptions=False)

    return invoke


def _need_vbench_env():
    if vbench_env.find() is None:
        if in_ci():
            pytest.fail("the VBench environment must exist in CI (.ci/run installs it): " + vbench_env.install_hint())
        pytest.skip("no VBench environment here; " + vbench_env.install_hint())


GEN = ["--height", 64, "--width", 64, "--frames", 9, "--steps", 3, "--max-prompts", 2, "--warmup-steps", 1]


def test_suite_end_to_end_with_vbench(tiny_model, cli, tmp_path, monkeypatch):
    _need_vbench_env()
    # An empty VBench weight cache: motion_smoothness (needs AMT weights) must be skipped, with the path.
    monkeypatch.setenv("VBENCH_CACHE_DIR", str(tmp_path / "vbench-cache"))
    method = "block" if "block" in SPARSE else SPARSE[0]
    args = ["suite", "vbench", "--model", tiny_model, "--methods", method, "--budgets", "0.3", *GEN, "--dense-steps", 1, "--dimensions", "temporal_flickering,motion_smoothness", "--out", tmp_path, "--run-id", "r1"]
    result = cli(*args)
    assert result.exit_code == 0, result.output
    run = tmp_path / "r1"
    recs = list(read_cells(run / "cells.jsonl"))
    videos = [r for r in recs if r["record_type"] == "video"]
    assert {r["method"] for r in videos} == {"dense", method}
    sparse = [r for r in videos if r["method"] == method]
    assert len(sparse) == 2 and all(r["status"] == "ok" for r in sparse), sparse
    for r in sparse:
        assert r["suite"] == "vbench" and r["budget"] == 0.3 and r["cell_key"]
        assert Path(r["video_path"]).name == f"{r['prompt']}-0.mp4"  # VBench's naming
        assert r["latency_s"] > 0 and r["dense_latency_s"] > 0
        assert r["speedup"] == pytest.approx(r["dense_latency_s"] / r["latency_s"])
        assert 0 < r["attention_share"] < 1 and r["attention_s"] > 0
        assert 0 < r["density"] <= 1
        assert r["ssim"] is not None and -1 <= r["ssim"] <= 1
        assert r["psnr"] is None or r["psnr"] > 0
        if r["lpips"] is None:
            assert r["lpips_status"].startswith("unavailable: ")
        assert r["dense_steps"] == 1 and r["dense_layers"] == 1 and r["reorder"] == "hilbert"
    dims = [r for r in recs if r["record_type"] == "dimension"]
    scored = [r for r in dims if r["dimension"] == "temporal_flickering"]
    assert {(r["method"], r["status"]) for r in scored} == {("dense", "ok"), (method, "ok")}
    for r in scored:
        assert 0 < r["vbench.temporal_flickering"] <= 1
        assert len(r["per_video"]) == 2
    skipped = [r for r in dims if r["dimension"] == "motion_smoothness"]
    assert len(skipped) == 2 and all(r["status"] == "invalid" and r["skipped"] for r in skipped)
    assert all("amt-s.pth" in r["error"] and "weights not in the local VBench cache" in r["error"] for r in skipped)
    summaries = {r["method"]: r for r in recs if r["record_type"] == "summary"}
    s = summaries[method]
    tf = s["vbench.temporal_flickering"]
    assert s["vbench_total"] == pytest.approx((tf - 0.6293) / (1 - 0.6293))  # VBench's normalisation
    assert s["videos_ok"] == 2 and s["speedup"] > 0
    assert "amt-s.pth" in s["vbench_skipped"]["motion_smoothness"]
    assert set(s["vbench_skipped"]) == {"motion_smoothness"} and "vbench.motion_smoothness" not in s

    # Resume: nothing is generated or scored again; the dense references come from the cache.
    again = cli(*args)
    assert again.exit_code == 0, again.output
    assert "0 video(s) generated, 2 resumed" in again.output
    assert len(list(read_cells(run / "cells.jsonl"))) == len(recs)
    assert len(list((tmp_path / "_dense_cache").iterdir())) == 2


def test_failing_method_is_recorded_and_sweep_goes_on(tiny_model, cli, tmp_path):
    ok = SPARSE[0]
    result = cli("suite", "vbench", "--model", tiny_model, "--methods", f"{ok},dense", "--budgets", "0.5", *GEN, "--max-prompts", 1, "--param", f"{ok}.budget=7", "--no-vbench", "--no-lpips", "--out", tmp_path, "--run-id", "r2")
    assert result.exit_code == 0, result.output
    recs = list(read_cells(tmp_path / "r2" / "cells.jsonl"))
    failed = [r for r in recs if r["record_type"] == "video" and r["status"] == "failed"]
    assert failed and all("budget" in r["error"] for r in failed)
    assert any(r["record_type"] == "video" and r["method"] == "dense" and r["status"] == "ok" for r in recs)


def test_missing_model_gives_one_line_error(cli, tmp_path):
    result = cli("suite", "vbench", "--model", tmp_path / "nope", "--methods", "dense", "--no-vbench", "--out", tmp_path)
    assert result.exit_code == 2
    assert "does not exist" in result.output
    result = cli("suite", "vbench", "--model", "someone/not-cached-model", "--methods", "dense", "--no-vbench", "--out", tmp_path)
    assert result.exit_code == 2
    assert "not in the local Hugging Face cache" in result.output and "never downloads" in result.output


def test_missing_vbench_env_says_how_to_create_it(tiny_model, cli, tmp_path, monkeypatch):
    monkeypatch.setenv("SPBENCH_VBENCH_VENV", str(tmp_path / "no-env"))
    result = cli("suite", "vbench", "--model", tiny_model, "--methods", "dense", "--out", tmp_path)
    assert result.exit_code == 2
    assert "spbench vbench-env install" in result.output and "no VBench environment" in result.output
    with pytest.raises(SpbenchError, match="vbench-env install"):
        vbench_env.score([], path=tmp_path / "no-env")


def test_vbench_total_follows_vbench_weights():
    # Quality only: weighted mean of normalised scores (dynamic degree weighs 0.5).
    scores = {"temporal_flickering": 0.9, "dynamic_degree": 0.4}
    q = ((0.9 - 0.6293) / (1 - 0.6293) * 1 + 0.4 * 0.5) / 1.5
    out = vbench_env.vbench_total(scores)
    assert out["vbench_quality"] == pytest.approx(q) and out["vbench_semantic"] is None
    assert out["vbench_total"] == pytest.approx(q)
    # Both groups: (4 * quality + semantic) / 5, with the semantic bounds of scene (max 0.8222).
    scores["scene"] = 0.5
    s = 0.5 / 0.8222
    assert vbench_env.vbench_total(scores)["vbench_total"] == pytest.approx((4 * q + s) / 5)


def test_prompt_lists_are_vbench_standard():
    from spbench.suites.vbench import available_dimensions, load_prompts, standard_prompts, video_name

    assert set(available_dimensions()) == set(vbench_env.DIMENSIONS)
    assert len(standard_prompts("temporal_flickering")) == 75
    assert len(standard_prompts("human_action")) == 100
    prompts, mode = load_prompts("standard", ["subject_consistency", "dynamic_degree"])
    assert mode == "vbench_standard" and len(prompts) == 72  # the two share VBench's prompt list
    assert video_name("a/b", 3) == "a_b-3.mp4"
    with pytest.raises(SpbenchError, match="unknown VBench dimension"):
        standard_prompts("smell")
