"""Capture real Q/K/V from a diffusers video generation (``spbench capture``).

The pipeline runs dense (spbench's dense processor, the models' own math)
and, at the chosen self-attention layers and denoising steps, Q, K and V are
saved *after* RoPE and QK-norm, exactly as attention sees them, in the
model's own token order (row-major t, y, x video tokens; joint models keep
their text tokens where the model puts them: ``text_position`` "first" for
CogVideoX, "last" for HunyuanVideo). One safetensors file per (layer, step):
``L{layer:03d}-S{step:03d}.safetensors`` with string metadata model, layer,
step, grid ("TxHxW"), text_len, text_position, prompt, seed, pass, dtype;
``index.json`` lists them. Replay with ``--workload trace:DIR`` (first file)
or ``trace:DIR/L010-S025.safetensors``.

Only pass 0 of a step is captured by default: with classifier-free guidance
Wan runs the conditional pass first and the unconditional one second
(``pass_index=1``); CogVideoX batches both passes (batch 2: unconditional,
conditional) and saves both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from spbench.errors import SpbenchError


@dataclass
class CaptureRequest:
    model: str
    layers: list[int]
    steps: list[int]
    out: str
    prompt: str = "A cat walks on the grass, realistic style."
    seed: int = 0
    height: int | None = None
    width: int | None = None
    frames: int | None = None
    num_steps: int | None = None
    guidance: float | None = None
    device: str = "auto"
    dtype: str = "auto"
    pass_index: int = 0
    offload: bool = False


def trace_name(layer: int, step: int) -> str:
    return f"L{layer:03d}-S{step:03d}.safetensors"


def attach_capture(target, layers: list[int], steps: list[int], out: str | Path, metadata: dict[str, Any], pass_index: int = 0):
    """Run ``target`` dense and save Q/K/V at (layer, step); returns (handle, saved list)."""
    from spbench.integrations import diffusers as spd
    from spbench.traces import save_trace

    out = Path(out)
    handle = spd.apply(target, "dense", dense_steps=0, dense_layers=0, reorder="none", total_steps=1)
    n_layers = len(handle._originals) // max(len(handle.transformers), 1)
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        spd.remove(target)
        raise SpbenchError(f"--layers {bad}: the transformer has self-attention layers 0..{n_layers - 1}")
    wanted = {(int(layer), int(step)) for layer in layers for step in steps}
    saved: list[dict[str, Any]] = []

    def on_call(info, q, k, v) -> None:
        if (info.layer, info.step) not in wanted or info.call != pass_index:
            return
        meta = {
            **metadata,
            "layer": info.layer,
            "step": info.step,
            "pass": info.call,
            "grid": "x".join(map(str, info.grid)) if info.grid else "",
            "text_len": info.text_len,
            "text_position": info.text_position,
            "transformer": info.transformer,
            "dtype": str(q.dtype).replace("torch.", ""),
        }
        path = save_trace(out / trace_name(info.layer, info.step), q, k, v, meta)
        saved.append({"file": path.name, **meta, "q_shape": list(q.shape), "kv_shape": list(k.shape)})

    handle.capture = on_call
    return handle, saved


def capture(req: CaptureRequest, echo: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Generate one video and save the requested Q/K/V; returns the index entries."""
    from spbench.integrations import diffusers as spd
    from spbench.suites.vbench import VBenchSweep, generate, load_pipeline, resolve_device, resolve_dtype

    if not req.layers or not req.steps:
        raise SpbenchError("--layers and --steps need at least one value each")
    if min(req.steps) < 0 or min(req.layers) < 0:
        raise SpbenchError("--layers and --steps must be non-negative")
    if req.num_steps is not None and max(req.steps) >= req.num_steps:
        raise SpbenchError(f"--steps {max(req.steps)} is beyond the {req.num_steps} denoising steps (0..{req.num_steps - 1})")
    device = resolve_device(req.device)
    dtype = resolve_dtype(req.dtype, device)
    pipe = load_pipeline(req.model, device, dtype, req.offload)
    meta = {"model": req.model, "prompt": req.prompt, "seed": req.seed}
    handle, saved = attach_capture(pipe, req.layers, req.steps, req.out, meta, req.pass_index)
    sweep = VBenchSweep(model=req.model, height=req.height, width=req.width, frames=req.frames, steps=req.num_steps, guidance=req.guidance)
    try:
        generate(pipe, req.prompt, req.seed, sweep, device)
    finally:
        spd.remove(pipe)
    ran = handle.step + 1
    missing = sorted({s for s in req.steps if s >= ran})
    if missing:
        raise SpbenchError(f"--steps {missing}: the generation ran only {ran} steps (0..{ran - 1}); nothing saved for them")
    out = Path(req.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "index.json").write_text(json.dumps(saved, indent=2))
    echo(f"saved {len(saved)} trace file(s) to {out}")
    return saved
