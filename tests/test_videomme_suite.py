"""Video-MME suite: data preparation, cells, records and failures, without running lmms-eval."""

from __future__ import annotations

import json
import sys

import pandas as pd
import pytest
from typer.testing import CliRunner

pytest.importorskip("decord")
pytest.importorskip("av")

from spbench import cli  # noqa: E402
from spbench.errors import SpbenchError, UnavailableError  # noqa: E402
from spbench.integrations.lmms.local import probe_video, resolve_model  # noqa: E402
from spbench.integrations.lmms.synthetic import make_videomme  # noqa: E402
from spbench.results import RunStore  # noqa: E402
from spbench.suites import videomme as suite  # noqa: E402

cli._register_commands()
runner = CliRunner()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("videomme")
    return make_videomme(root, videos=5, questions_per_video=2, frames=4, size=32, broken=("synthetic004",), missing=("synthetic005",))


def _sweep(data_dir, **kw):
    return suite.VideoMMESweep(model="unused", data_dir=str(data_dir), device="cpu", **kw)


def test_select_questions_spreads_over_durations():
    df = pd.DataFrame({"duration": ["short"] * 5 + ["medium"] * 3 + ["long"] * 2, "question_id": range(10)})
    picked = suite.select_questions(df, 6)
    assert sorted(picked["question_id"]) == [0, 1, 5, 6, 8, 9]
    assert list(picked["duration"]).count("short") == 2
    assert len(suite.select_questions(df, 100)) == 10
    assert list(suite.select_questions(df, 2)["question_id"]) == [0, 5]


def test_prepare_leaves_out_broken_and_missing_videos(dataset, tmp_path):
    notes: list[str] = []
    data = suite.prepare_data(_sweep(dataset), tmp_path, notes)
    assert data.questions == 6 and data.subset == "6 of 10"
    reasons = {s["videoID"]: s["reason"] for s in data.skipped}
    assert reasons["synthetic004"].startswith("does not decode") and reasons["synthetic005"] == "file not found"
    assert json.loads((tmp_path / "videomme" / "skipped.json").read_text()) == data.skipped
    assert len(notes) == 1 and "left out 4 question(s) of 2 video(s)" in notes[0]
    table = pd.read_parquet(data.table)
    assert set(table["videoID"]) == {"synthetic001", "synthetic002", "synthetic003"}
    assert all(probe_video(p) is None for p in table["video_path"])
    task = (data.task_dir / "spbench_videomme.yaml").read_text()
    assert "include: " in task and "videomme.yaml" in task and str(data.table) in task
    # Same data, same digest (cells resume); --limit changes the question set and so the digest.
    again = suite.prepare_data(_sweep(dataset), tmp_path)
    limited = suite.prepare_data(_sweep(dataset, limit=3), tmp_path / "limited")
    assert again.digest == data.digest and limited.digest != data.digest and limited.questions == 3


def test_missing_data_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(UnavailableError, match="does not exist"):
        suite.locate_data(str(tmp_path / "nowhere"))
    with pytest.raises(UnavailableError, match="no question table"):
        suite.locate_data(str(tmp_path))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(UnavailableError, match="not available offline"):
        suite.locate_data(None)


def test_every_video_unreadable_is_a_clear_error(tmp_path):
    root = make_videomme(tmp_path / "d", videos=2, broken=("synthetic001",), missing=("synthetic002",))
    with pytest.raises(UnavailableError, match="no question of the selected 2 has a readable video"):
        suite.prepare_data(_sweep(root), tmp_path / "run")


def test_unknown_labels_are_rejected_before_running(tmp_path):
    root = make_videomme(tmp_path / "d", videos=1)
    table = root / "videomme" / "test-00000-of-00001.parquet"
    df = pd.read_parquet(table)
    df.loc[0, "task_type"] = "Vibes"
    df.to_parquet(table)
    with pytest.raises(SpbenchError, match="task_type value.*Vibes"):
        suite.prepare_data(_sweep(root), tmp_path / "run")


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(UnavailableError, match="does not exist"):
        resolve_model(str(tmp_path / "no-model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnavailableError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))
    with pytest.raises(UnavailableError, match="not in the local Hugging Face cache"):
        resolve_model("nobody/no-such-model-xyz")


def test_cli_reports_missing_model_and_dataset(tmp_path, dataset):
    res = runner.invoke(cli.app, ["suite", "videomme", "--model", str(tmp_path / "no-model"), "--data-dir", str(dataset), "--out", str(tmp_path)])
    assert res.exit_code == 2 and "does not exist" in res.output
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    res = runner.invoke(cli.app, ["suite", "videomme", "--model", str(tmp_path / "m"), "--data-dir", str(tmp_path / "nodata"), "--out", str(tmp_path)])
    assert res.exit_code == 2 and "--data-dir" in res.output and "does not exist" in res.output
    res = runner.invoke(cli.app, ["suite", "videomme", "--model", str(tmp_path / "m"), "--data-dir", str(dataset), "--methods", "nosuch", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "unknown method" in res.output
    assert not any((tmp_path / name).exists() for name in ("run.json",)) and not list(tmp_path.glob("*/run.json"))


def test_cells_keys_and_model_args_differ_by_method(dataset, tmp_path):
    sweep = _sweep(dataset, methods=["dense", "levels"], budgets=[0.2, 0.4], params={"levels": {"seed": 3}}, frames=8, max_pixels=3136)
    data = suite.prepare_data(sweep, tmp_path)
    cells = suite.plan_cells(sweep, data)
    assert [c.describe() for c in cells] == ["dense baseline", "levels b=0.2 seed=3", "levels b=0.4 seed=3"]
    assert len({c.key for c in cells}) == 3
    args = [suite.model_args(sweep, c, "/m") for c in cells]
    assert args[0].startswith("pretrained=/m,method=dense,max_num_frames=8,max_pixels=3136,min_pixels=3136")
    assert "method=levels,budget=0.2,seed=3" in args[1] and "budget=0.4" in args[2]
    assert all("device=cpu,device_map=cpu,dtype=float32" in a for a in args)
    # A value with commas is quoted so lmms-eval keeps it whole.
    mixed = suite.VideoCell("levels", None, {"mix": "1:0.1,2:0.05"}, "method")
    assert 'mix="1:0.1,2:0.05"' in suite.model_args(sweep, mixed, "/m")


def test_failed_cells_are_recorded_and_the_sweep_goes_on(dataset, tmp_path, monkeypatch):
    sweep = _sweep(dataset, methods=["levels"], budgets=[0.3])
    store = RunStore(tmp_path, "fail", config={}, environment={})
    data = suite.prepare_data(sweep, store.path)
    cells = suite.plan_cells(sweep, data)
    fake = "import json, pathlib, sys; spec = json.load(open(sys.argv[1])); p = pathlib.Path(spec['out_dir']); json.dump({'type': 'SpbenchError', 'message': 'video x does not decode'}, open(p / 'error_rank0.json', 'w')); sys.exit(3)"
    monkeypatch.setattr(suite, "worker_command", lambda sweep, spec: [sys.executable, "-c", fake, str(spec)])
    monkeypatch.setattr(suite, "_is_sparse", lambda m: True)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    sweep.model = str(tmp_path / "model")
    outcome = suite.run_sweep(sweep, cells, data, store)
    records = store.records()
    assert outcome.ran == 2 and outcome.counts == {"failed": 2}
    assert [r["status"] for r in records] == ["failed", "failed"]
    assert all(r["error"] == "video x does not decode" and r["cell_key"] for r in records)
    assert (store.path / records[0]["log"]).exists()
    # Resume skips recorded cells (failed ones included).
    assert suite.run_sweep(sweep, cells, data, store).ran == 0


def test_record_fields_from_samples_and_prefills():
    samples = []
    for i, (duration, task, score) in enumerate([("short", "Counting Problem", 1.0), ("short", "OCR Problems", 0.0), ("long", "Counting Problem", 1.0)]):
        samples.append({"doc_id": i, "doc": {}, "filtered_resps": [f"resp{i}"], "videomme_perception_score": {"question_id": f"q{i}", "duration": duration, "category": "Knowledge", "sub_category": "Law", "task_category": task, "pred_answer": "A", "answer": "A" if score else "B", "score": score, "videoID": f"v{i}"}})
    prefills = [{"batch": 1, "tokens": 100 * (i + 1), "prefill_s": 1.0 + i, "prefill_total_s": 1.5 + i, "attention_s": 0.5, "plan_s": 0.1, "density": 0.25, "sparse_calls": 2, "dense_calls": 0, "fallbacks": {}, "tag": [{"task": "t", "doc_id": i}]} for i in range(3)]
    rows = suite.sample_rows(samples, prefills)
    assert [r["response"] for r in rows] == ["resp0", "resp1", "resp2"] and rows[2]["tokens"] == 300
    acc = suite.accuracy_fields(rows)
    assert acc["accuracy"] == pytest.approx(200 / 3) and acc["accuracy.short"] == 50.0 and acc["accuracy.long"] == 100.0
    assert acc["accuracy.medium"] is None
    assert acc["accuracy_by_category"] == {"Counting Problem": 100.0, "OCR Problems": 0.0}
    dense_rows = [dict(r, prefill_s=2 * r["prefill_s"], prefill_total_s=r["prefill_total_s"] + 1) for r in rows]
    eff = suite.efficiency_fields(rows, prefills, dense_rows)
    assert eff["speedup_prefill"] == pytest.approx(2.0) and eff["prefill_s"] == pytest.approx(2.0) and eff["dense_prefill_s"] == pytest.approx(4.0)
    assert eff["speedup_prefill_total"] == pytest.approx(10.5 / 7.5)
    assert eff["attention_share"] == pytest.approx(1.5 / 6.0) and eff["density"] == pytest.approx(0.25)


def test_multi_gpu_cells_launch_through_accelerate(tmp_path):
    sweep = suite.VideoMMESweep(model="m", device="cuda", num_processes=4)
    cmd = suite.worker_command(sweep, tmp_path / "spec.json")
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--num_processes") + 1] == "4"
    assert cmd[-3:] == ["-m", "spbench.integrations.lmms.worker", str(tmp_path / "spec.json")]
    assert suite.worker_command(suite.VideoMMESweep(model="m"), tmp_path / "s.json")[1:3] == ["-m", "spbench.integrations.lmms.worker"]
    with pytest.raises(SpbenchError, match="needs CUDA"):
        suite.VideoMMESweep(model="m", device="cpu", num_processes=2).validate()
