import json
import signal
import subprocess
import sys
import time

import pytest

from spbench.errors import SpbenchError
from spbench.results import RunStore, cell_key, load, read_cells


def test_round_trip(tmp_path):
    store = RunStore(tmp_path, run_id="r1", config={"x": 1}, environment={"gpu": "TestGPU"})
    store.append({"cell_key": "a", "status": "ok", "method": "psa", "rel_l2": 0.1, "params": {"tau": 0.9}})
    store.append({"cell_key": "b", "status": "failed", "error": "out of memory", "rel_l2": float("nan")})
    df = load(tmp_path / "r1")
    assert list(df["method"].fillna("")) == ["psa", ""]
    assert df.loc[0, "params.tau"] == 0.9 and df.loc[0, "gpu"] == "TestGPU"
    assert df["rel_l2"].isna().iloc[1]  # NaN stored as null, never invalid JSON
    meta = json.loads((tmp_path / "r1" / "run.json").read_text())
    assert meta["config"] == {"x": 1}
    # load() also takes a folder of runs and several paths
    RunStore(tmp_path, run_id="r2", environment={}).append({"cell_key": "c", "status": "ok"})
    assert len(load(tmp_path)) == 3 and len(load([tmp_path / "r1", tmp_path / "r2"])) == 3


def test_resume_keeps_everything(tmp_path):
    RunStore(tmp_path, run_id="r", config={"a": 1}, environment={"n": 1}).append({"cell_key": "k1", "status": "ok"})
    again = RunStore(tmp_path, run_id="r", config={"a": 1}, environment={"n": 2})
    assert again.resumed and again.done_keys() == {"k1"}
    again.append({"cell_key": "k2", "status": "failed"})
    assert again.done_keys(include_failed=False) == {"k1"}
    assert len(again.meta["sessions"]) == 1 and again.meta["environment"] == {"n": 1}


def test_bad_run_id(tmp_path):
    with pytest.raises(SpbenchError):
        RunStore(tmp_path, run_id="../escape", environment={})


def test_cell_key_is_stable_and_order_free():
    assert cell_key({"a": 1, "b": [1, 2]}) == cell_key({"b": [1, 2], "a": 1})
    assert cell_key({"a": 1}) != cell_key({"a": 2})


WRITER = """
import sys
from spbench.results import RunStore
store = RunStore(sys.argv[1], run_id="killed", environment={})
i = 0
while True:
    store.append({"cell_key": str(i), "status": "ok", "payload": "x" * 200000})
    i += 1
"""


def test_kill_in_the_middle_loses_at_most_the_cell_in_flight(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)])
    path = tmp_path / "killed" / "cells.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and (not path.exists() or path.stat().st_size < 3_000_000):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    records = list(read_cells(path))
    assert len(records) >= 10
    assert [r["cell_key"] for r in records] == [str(i) for i in range(len(records))]
    # Re-opening repairs a partial tail; new appends are never glued to it.
    with open(path, "a") as f:
        f.write('{"cell_key": "partial", "sta')  # simulate a kill mid-write
    store = RunStore(tmp_path, run_id="killed", environment={})
    store.append({"cell_key": "after", "status": "ok"})
    lines = path.read_text().splitlines()
    assert all(json.loads(line) for line in lines)
    assert json.loads(lines[-1])["cell_key"] == "after"
    assert len(lines) == len(records) + 1
