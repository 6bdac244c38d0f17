"""Video-MME through lmms-eval for real: a tiny random Qwen2.5-VL on a tiny generated dataset (CPU).

One sweep (dense baseline + one sparse method) runs end to end through the
CLI and lmms-eval worker processes; the wrapper is also driven in-process
for its error paths and response-cache identity.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

pytest.importorskip("lmms_eval")
pytest.importorskip("decord")

import spbench  # noqa: E402
from spbench import cli  # noqa: E402
from spbench.errors import SpbenchError  # noqa: E402
from spbench.integrations.lmms.synthetic import make_videomme  # noqa: E402
from spbench.integrations.tiny_qwen_vl import save_tiny_qwen2_5_vl  # noqa: E402
from spbench.results import load  # noqa: E402
from spbench.suites import videomme as suite  # noqa: E402

cli._register_commands()
runner = CliRunner()
FRAMES, PIXELS = 4, 28 * 28 * 4


def _sparse_method() -> tuple[str, list[str]]:
    """A registered sparse method (the cheapest available) and the --param options it needs."""
    from spbench.registry import get_class

    names = spbench.method_names(sparse_only=True)
    if not names:
        pytest.skip("no sparse method registered")
    name = "levels" if "levels" in names else names[0]
    return name, (["--param", "executor=torch"] if "executor" in get_class(name).knobs else [])


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("vmme")
    model = save_tiny_qwen2_5_vl(root / "model")
    data = make_videomme(root / "data", videos=4, questions_per_video=1, frames=FRAMES, size=56, broken=("synthetic004",))
    return model, data


def test_sweep_end_to_end(assets, tmp_path):
    model, data = assets
    method, extra = _sparse_method()
    args = ["suite", "videomme", "--model", str(model), "--data-dir", str(data), "--methods", method, "--budgets", "0.3", *extra,
            "--frames", str(FRAMES), "--max-pixels", str(PIXELS), "--out", str(tmp_path), "--run-id", "e2e"]  # fmt: skip
    res = runner.invoke(cli.app, args)
    assert res.exit_code == 0, res.output
    assert "left out 1 question(s) of 1 video(s)" in res.output
    df = load(tmp_path / "e2e")
    assert len(df) == 2 and list(df["status"]) == ["ok", "ok"], df[["method", "status", "error"]].to_dict("records")
    records = [json.loads(line) for line in (tmp_path / "e2e" / "cells.jsonl").read_text().splitlines()]
    dense, sparse = records
    assert dense["role"] == "baseline" and dense["method"] == "dense" and sparse["method"] == method and sparse["budget"] == 0.3
    for rec in records:
        assert rec["suite"] == "videomme" and rec["n_samples"] == 3 and rec["questions"] == 3
        rows = [json.loads(line) for line in (tmp_path / "e2e" / rec["samples_log"]).read_text().splitlines()]
        assert len(rows) == 3 and {r["duration"] for r in rows} == {"short", "medium", "long"}
        # Accuracy, overall and per bucket, is what the per-question log says; lmms-eval's own aggregate agrees.
        assert rec["accuracy"] == pytest.approx(100 * sum(r["correct"] for r in rows) / 3)
        for r in rows:
            assert rec[f"accuracy.{r['duration']}"] == 100 * r["correct"]
            assert rec["accuracy_by_category"][r["task_type"]] is not None
            assert r["tokens"] > 128 and r["prefill_s"] > 0 and r["pred"] is not None
        assert rec["lmms_eval_score"] == pytest.approx(rec["accuracy"])
        assert rec["prefill_s"] > 0 and 0 < rec["attention_share"] < 1
        assert rec["dense_prefill_s"] == pytest.approx(dense["prefill_s"])
    assert dense["density"] == 1.0 and dense["speedup_prefill"] == pytest.approx(1.0)
    assert 0 < sparse["density"] < 1 and sparse["sparse_calls"] == 3 * 2 and sparse["dense_fallback_calls"] == 0
    assert sparse["speedup_prefill"] > 0 and sparse["resolved_params"]["budget"] == 0.3
    # The worker really got different model identities (what lmms-eval's response cache keys on).
    specs = [json.loads(p.read_text()) for p in sorted((tmp_path / "e2e" / "videomme" / "cells").glob("*/spec.json"))]
    assert len({s["model_args"] for s in specs}) == 2
    # Re-running the run id resumes: nothing left to evaluate.
    res = runner.invoke(cli.app, args)
    assert res.exit_code == 0, res.output
    assert "0 cells evaluated" in res.output and "2 were already recorded" in res.output
    assert len(load(tmp_path / "e2e")) == 2


@pytest.fixture(scope="module")
def wrapper(assets):
    from spbench.integrations.lmms.model import SparseQwen2_5_VL

    model, _ = assets
    lm = SparseQwen2_5_VL(pretrained=str(model), method="dense", device="cpu", device_map="cpu", dtype="float32", max_num_frames=FRAMES, max_pixels=PIXELS, min_pixels=PIXELS)
    return lm


def _request(doc_id, task="t"):
    from lmms_eval.api.instance import Instance

    def doc_to_messages(doc):
        return [{"role": "user", "content": [{"type": "video", "url": doc["video_path"]}, {"type": "text", "text": "Which colour? A. red B. green"}]}]

    gen = {"max_new_tokens": 2, "temperature": 0, "do_sample": False, "until": ["\n\n"]}
    return Instance(request_type="generate_until", arguments=("ctx", doc_to_messages, gen, doc_id, task, "test"), idx=0, metadata={"task": task, "doc_id": doc_id, "repeats": 1})


def test_wrapper_answers_and_tags_prefills(wrapper, assets):
    from spbench.integrations.lmms import model as module

    _, data = assets
    wrapper.task_dict = {"t": {"test": [{"video_path": str(data / "data" / "synthetic001.mp4")}, {"video_path": str(data / "data" / "synthetic002.mp4")}]}}
    module.COLLECTED.clear()
    out = wrapper.generate_until([_request(0), _request(1)])
    assert len(out) == 2
    assert [r["tag"] for r in module.COLLECTED] == [[{"task": "t", "doc_id": 0}], [{"task": "t", "doc_id": 1}]]
    assert all(r["sparse_calls"] == 2 and r["density"] == 1.0 for r in module.COLLECTED)
    assert module.IDENTITY["method"] == "dense"


def test_wrapper_turns_bad_videos_into_clear_errors(wrapper, assets):
    _, data = assets
    broken = str(data / "data" / "synthetic004.mp4")
    wrapper.task_dict = {"t": {"test": [{"video_path": broken}]}}
    with pytest.raises(SpbenchError, match=r"synthetic004\.mp4 \(doc 0\) does not decode"):
        wrapper.generate_until([_request(0)])

    def exits(doc):  # what lmms-eval's stock Video-MME loader does for a missing video
        raise SystemExit("video path:/x/y.mp4 does not exist, please check")

    req = _request(0)
    req.arguments = (req.arguments[0], exits, *req.arguments[2:])
    wrapper.task_dict = {"t": {"test": [{"videoID": "y"}]}}
    with pytest.raises(SpbenchError, match="exited: video path:/x/y.mp4 does not exist"):
        wrapper.generate_until([req])


def test_wrapper_rejects_bad_arguments(assets):
    from spbench.integrations.lmms.model import SparseQwen2_5_VL

    model, _ = assets
    with pytest.raises(SpbenchError, match="needs method="):
        SparseQwen2_5_VL(pretrained=str(model), device="cpu", device_map="cpu")
    with pytest.raises(SpbenchError, match="no knob"):
        SparseQwen2_5_VL(pretrained=str(model), method="dense", tau=0.5, device="cpu", device_map="cpu")
    with pytest.raises(SpbenchError, match="does not exist"):
        SparseQwen2_5_VL(pretrained=str(model) + "-missing", method="dense", device="cpu", device_map="cpu")


def test_response_cache_identity_differs_by_method_budget_and_knob(assets, tmp_path):
    from lmms_eval.caching.response_cache import ResponseCache, compute_cache_key

    _, data = assets
    sweep = suite.VideoMMESweep(model="m", data_dir=str(data), device="cpu", methods=["levels"], budgets=[0.2])
    cells = [
        suite.VideoCell("dense", None, {}, "baseline"),
        suite.VideoCell("levels", 0.2, {}, "method"),
        suite.VideoCell("levels", 0.3, {}, "method"),
        suite.VideoCell("levels", 0.2, {"seed": 1}, "method"),
    ]
    hashes, keys = set(), set()
    for i, cell in enumerate(cells):
        cache = ResponseCache.create(str(tmp_path / f"c{i}"), model=suite.MODEL_NAME, model_args=suite.model_args(sweep, cell, "/models/qwen"))
        hashes.add(cache._model_fingerprint_hash)
        keys.add(compute_cache_key("generate_until", "spbench_videomme", 0, {"max_new_tokens": 16}, model_fingerprint_hash=cache._model_fingerprint_hash))
        cache.close()
    assert len(hashes) == len(cells) and len(keys) == len(cells)


def test_simple_wrapper_class_answers(assets):
    from lmms_eval.api.instance import Instance

    from spbench.integrations.lmms.model import SparseQwen2_5_VLSimple

    model, data = assets
    lm = SparseQwen2_5_VLSimple(pretrained=str(model), method="dense", device="cpu", device_map="cpu", dtype="float32", max_num_frames=FRAMES, max_pixels=PIXELS, min_pixels=PIXELS)
    lm.task_dict = {"t": {"test": [{"p": str(data / "data" / "synthetic001.mp4")}]}}
    gen = {"max_new_tokens": 2, "until": ["\n\n"]}
    req = Instance(request_type="generate_until", arguments=("Which colour?", gen, lambda d: [d["p"]], 0, "t", "test"), idx=0, metadata={"task": "t", "doc_id": 0, "repeats": 1})
    assert len(lm.generate_until([req])) == 1
    (rec,) = lm.spbench.records
    assert rec.tag == [{"task": "t", "doc_id": 0}] and rec.sparse_calls == 2
