"""`spbench capture`: real Q/K/V from a generation, saved and replayed."""

import json

import pytest
import torch
from typer.testing import CliRunner

from video_tiny import one_thread, tiny_wan, wan_inputs

from spbench.capture import attach_capture, trace_name
from spbench.errors import SpbenchError
from spbench.integrations import diffusers as spd
from spbench.traces import load_trace, trace_metadata
from spbench.workloads import make_qkv


def test_capture_round_trip_on_transformer(tmp_path):
    with one_thread(), torch.no_grad():
        model = tiny_wan(layers=2)
        x, enc = wan_inputs(frames=3, size=8)  # grid 3 x 4 x 4
        kept = {}
        handle, saved = attach_capture(model, layers=[1], steps=[0, 2], out=tmp_path, metadata={"model": "tiny"})
        inner = handle.capture
        handle.capture = lambda info, q, k, v: (kept.setdefault((info.layer, info.step, info.call), (q.clone(), k.clone(), v.clone())), inner(info, q, k, v))
        for t in (900, 900, 800, 800, 700, 700):  # 3 steps, two passes each
            model(x, torch.tensor([t]), enc)
        spd.remove(model)
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == [trace_name(1, 0), trace_name(1, 2)]
    assert len(saved) == 2
    q, k, v = load_trace(tmp_path / trace_name(1, 2))
    assert q.shape == (1, 2, 48, 64) and k.shape == v.shape == q.shape
    for got, want in zip((q, k, v), kept[(1, 2, 0)]):  # pass 0 of step 2, after RoPE
        assert torch.equal(got, want)
    meta = trace_metadata(tmp_path / trace_name(1, 2))
    assert meta["model"] == "tiny" and meta["layer"] == "1" and meta["step"] == "2" and meta["grid"] == "3x4x4"
    assert meta["text_position"] == "none" and meta["pass"] == "0"
    # Replay through the workload interface: a file, or the first file of the folder.
    rq, rk, rv = make_qkv(f"trace:{tmp_path / trace_name(1, 2)}", 1, 2, 2, 48, 64)
    assert torch.equal(rq, q) and torch.equal(rv, v)
    fq, _, _ = make_qkv(f"trace:{tmp_path}", 1, 2, 2, 48, 64)
    assert torch.equal(fq, load_trace(tmp_path / trace_name(1, 0))[0])


def test_capture_rejects_layers_out_of_range(tmp_path):
    with one_thread():
        model = tiny_wan(layers=2)
        with pytest.raises(SpbenchError, match="layers 0..1"):
            attach_capture(model, layers=[5], steps=[0], out=tmp_path, metadata={})
        assert spd.get_handle(model) is None  # nothing left attached


def test_capture_command_on_tiny_pipeline(tmp_path):
    from spbench import cli as cli_module
    from spbench.integrations.tiny import save_tiny_wan_pipeline

    with one_thread():
        model = save_tiny_wan_pipeline(tmp_path / "tiny-wan")
        cli_module._register_commands()
        runner = CliRunner()
        out = tmp_path / "traces"
        args = ["capture", "--model", model, "--layers", "0,1", "--steps", "0,2", "--out", out, "--num-steps", 3, "--height", 32, "--width", 32, "--frames", 5]
        result = runner.invoke(cli_module.app, [str(a) for a in args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        index = json.loads((out / "index.json").read_text())
        assert {(e["layer"], e["step"]) for e in index} == {(0, 0), (0, 2), (1, 0), (1, 2)}
        assert all(e["grid"] == "2x2x2" and e["q_shape"] == [1, 2, 8, 64] for e in index)
        bad = runner.invoke(cli_module.app, [str(a) for a in ["capture", "--model", model, "--layers", "0", "--steps", "5", "--out", out, "--num-steps", 3]], catch_exceptions=False)
        assert bad.exit_code == 2 and "beyond the 3 denoising steps" in bad.output
