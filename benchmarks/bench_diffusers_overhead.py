"""Overhead of spbench's diffusers attention processors, outside the attention itself.

    python benchmarks/bench_diffusers_overhead.py --methods psa,block,xattention --budget 0.15 \\
        --out results/diffusers_overhead.json

What is timed, per method, at the Wan2.1-14B 720p self-attention shape
(default: batch 1, grid 21 x 45 x 80 = 75,600 tokens, 40 heads, head dim
128, bf16), on synthetic video-like Q/K/V (``spbench.workloads`` "video"):

* ``method``: ``m.run(q, k, v, m.plan(q, k, v))`` alone, on contiguous
  ``[B, H, L, D]`` tensors already in the order the method sees (curve order
  with ``--reorder hilbert``), i.e. the sparse attention itself;
* two processor paths, each what a spbench processor does between the
  model's projections and its output projection
  (:meth:`SparseAttention.attend`, CUDA events, density bookkeeping, then the
  ``flatten`` to ``[B, L, H*D]``):

  - ``call`` (``reorder_scope="call"``, the fallback for joint-attention
    models): ``attend`` on the strided ``[B, H, L, D]`` views of
    row-major ``[B, L, H, D]`` projections: reordering gathers of Q/K/V, the
    method, the inverse gather straight into ``[B, L, H, D]``;
  - ``forward`` (``reorder_scope="forward"``, Wan): the tokens are already
    in curve order, Q/K ``[B, H, L, D]``-contiguous as the processor's rotary
    embedding writes them, V the strided view of its projection; ``attend``
    runs the method on them as they are, then the output is copied to
    ``[B, L, H*D]``. Its per-call overhead also counts the difference between
    spbench's rotary embedding (``[B, H, L, D]`` storage) and the model's own
    (``rope delta``, measured once; may be negative);

* ``amortised``: the ``forward`` path's once-per-forward work (gather of the
  ``[B, L, H*D]`` block-0 input, the permuted rotary embedding, the inverse
  gather of ``proj_out``'s ``[B, L, C*prod(patch)]`` output) divided by the
  sparse layers of a forward (``--layers - --dense-layers``: 40 - 1 = 39 for
  Wan2.1-14B with the default dense first layer);
* ``overhead``: ``call``: ``(processor - method) / method``; ``forward``:
  ``(processor - method + rope delta + amortised) / method``. Target < 5%;
* ``method strided``: the method alone on the ``forward`` path's inputs
  (what strided V costs the method), ``v copy``: making V contiguous
  instead (not done);
* ``gathers``: the per-call reordering index_selects alone (3 inputs + 1
  output); ``transpose``: the ``[B, H, L, D] -> [B, L, H*D]`` output copy
  (what the ``forward`` path still pays per call);
* ``dense``: torch SDPA at the same shape, for scale.

Method and processor calls alternate within each repeat (CUDA events, L2
flushed before each call) so clock drift hits both alike; medians are
reported. No diffusers or model weights are needed: the processor's own
code path (``spbench.integrations.diffusers.SparseAttention``) imports only
torch and spbench. Runs on the CPU too (tiny shapes only, wall clock).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _map_checkout_packages() -> None:
    """Without an install, make the repo's kernels/, methods/, suites/ importable as spbench.* ."""
    import importlib.util

    import spbench

    for sub in ("kernels", "methods", "suites"):
        name = f"spbench.{sub}"
        if importlib.util.find_spec(name) is not None or not os.path.isdir(os.path.join(ROOT, sub)):
            continue
        spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, sub, "__init__.py"), submodule_search_locations=[os.path.join(ROOT, sub)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        setattr(spbench, sub, module)
        spec.loader.exec_module(module)


_map_checkout_packages()

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default="psa,block,xattention", help="comma list of spbench methods")
    p.add_argument("--budget", type=float, default=0.15)
    p.add_argument("--param", action="append", default=[], help="knob=value for every method (repeatable)")
    p.add_argument("--grid", default="21x45x80", help="latent grid TxHxW (Wan2.1 720p, 81 frames: 21x45x80)")
    p.add_argument("--heads", type=int, default=40)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--text-len", type=int, default=0, help="joint text tokens (CogVideoX 226, HunyuanVideo 256); 0 for Wan")
    p.add_argument("--text-first", action="store_true", help="text tokens before the video (CogVideoX)")
    p.add_argument("--layers", type=int, default=40, help="self-attention layers per forward (Wan2.1-14B: 40)")
    p.add_argument("--dense-layers", type=int, default=1, help="leading dense layers (spbench's default 1)")
    p.add_argument("--out-dim", type=int, default=64, help="proj_out width, out channels x patch volume (Wan: 16 x 1x2x2)")
    p.add_argument("--reorder", default="hilbert", choices=("hilbert", "none"))
    p.add_argument("--workload", default="video", choices=("video", "random"))
    p.add_argument("--dtype", default="bf16", choices=tuple(DTYPES))
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p.parse_args(argv)


def make_inputs(args, device):
    """Q/K/V as a diffusers processor holds them: [B, L, H, D] tensors (after RoPE)."""
    from spbench.parsing import parse_grid
    from spbench.workloads import make_qkv

    grid = parse_grid(args.grid)
    video = grid[0] * grid[1] * grid[2]
    total = video + args.text_len
    dtype = DTYPES[args.dtype]
    q, k, v = make_qkv(args.workload, args.batch, args.heads, args.heads, total, args.head_dim, dtype=dtype, device=device, seed=args.seed, grid=(grid[0] + (1 if args.text_len else 0), grid[1], grid[2]) if args.workload == "video" else None)
    # make_qkv gives [B, H, L, D]; the processor's projections are [B, L, H, D] (contiguous).
    return grid, tuple(t.transpose(1, 2).contiguous() for t in (q, k, v))


def timed(fn, device, flush_buf) -> float:
    if device.type == "cuda":
        if flush_buf is not None:
            flush_buf.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def forward_inputs(views, order):
    """The ``forward`` path's Q/K/V: curve order, Q/K [B, H, L, D]-contiguous, V a strided view."""
    curve = [t.index_select(2, order[0]) if order is not None else t for t in views]
    return curve[0].contiguous(), curve[1].contiguous(), curve[2].transpose(1, 2).contiguous().transpose(1, 2)


def measure(name, args, knobs, grid, inputs, device, flush_buf, once) -> dict:
    from spbench.integrations.diffusers import SparseAttention

    handle = SparseAttention(name, args.budget, knobs, dense_steps=0, dense_layers=0, reorder=args.reorder, total_steps=1, text="joint", reorder_scope="call")
    handle.grid = tuple(grid)
    handle._dense_steps_resolved = 0
    qs, ks, vs = inputs  # [B, L, H, D]
    views = [t.transpose(1, 2) for t in (qs, ks, vs)]  # what the processor passes: strided [B, H, L, D]
    order = handle.sequence_order(qs.shape[1], args.text_len, args.text_first, device)
    if order is not None:
        ordered = [t.index_select(2, order[0]) for t in views]
    else:
        ordered = [t.contiguous() for t in views]
    method = handle.method_for(args.text_len, handle.grid)
    text = dict(text_len=args.text_len, text_first=args.text_first)
    # The forward path (Wan, no text): a second handle whose forward is in curve order.
    fwd = None
    if not args.text_len and args.reorder != "none":
        fwd_handle = SparseAttention(name, args.budget, knobs, dense_steps=0, dense_layers=0, reorder=args.reorder, total_steps=1, text="joint", reorder_scope="forward")
        fwd_handle.grid = tuple(grid)
        fwd_handle._dense_steps_resolved = 0
        fwd_handle.begin_forward_order(device).entered = True
        fwd = forward_inputs(views, order)

    def run_method():
        return method.run(*ordered, method.plan(*ordered))

    def run_method_strided():
        return method.run(*fwd, method.plan(*fwd))

    def run_processor():
        return handle.attend(1, *views, layout="bshd", **text).flatten(2, 3)

    def run_forward():
        return fwd_handle.attend(1, *fwd, layout="bshd").flatten(2, 3)

    def run_gathers():
        if order is None:
            return [t.contiguous() for t in views]
        outs = [t.index_select(2, order[0]) for t in views]
        return outs[0].transpose(1, 2).index_select(1, order[1])

    def run_transpose():
        return ordered[0].transpose(1, 2).flatten(2, 3)

    def run_v_copy():
        return fwd[2].contiguous()

    fns = {"method": run_method, "processor": run_processor, "gathers": run_gathers, "transpose": run_transpose}
    if fwd is not None:
        fns.update({"forward": run_forward, "method_strided": run_method_strided, "v_copy": run_v_copy})
    for _ in range(args.warmup):
        for key in ("method", "processor", "forward", "method_strided"):
            if key in fns:
                fns[key]()
    samples = {key: [] for key in fns}
    for _ in range(args.repeats):
        for key, fn in fns.items():
            samples[key].append(timed(fn, device, flush_buf))
    med = {key: statistics.median(vals) for key, vals in samples.items()}
    stats = handle.stats()
    m = med["method"]
    row = {
        "method": name,
        "budget": args.budget,
        "params": knobs,
        "density": stats["sparse_density"],
        "method_ms": m,
        "processor_ms": med["processor"],
        "overhead_ms": med["processor"] - m,
        "overhead": (med["processor"] - m) / m if m > 0 else None,
        "gathers_ms": med["gathers"],
        "transpose_ms": med["transpose"],
    }
    if fwd is not None:
        per_call = med["forward"] - m + once["rope_delta_ms"]
        total = per_call + once["amortised_ms"]
        row.update(
            {
                "forward_processor_ms": med["forward"],
                "forward_per_call_ms": per_call,
                "forward_amortised_ms": once["amortised_ms"],
                "forward_overhead_ms": total,
                "forward_overhead_per_call": per_call / m if m > 0 else None,
                "forward_overhead": total / m if m > 0 else None,
                "method_strided_ms": med["method_strided"],
                "v_copy_ms": med["v_copy"],
                "forward_density": fwd_handle.stats()["sparse_density"],
            }
        )
    row["samples_ms"] = samples
    return row


def once_per_forward(args, grid, inputs, device, flush_buf) -> dict:
    """The forward path's once-per-forward reorder and its rotary-embedding layout, timed."""
    from spbench.integrations.diffusers import _wan_rotary
    from spbench.integrations.reorder import Reorderer

    qs = inputs[0]  # [B, L, H, D]
    bsz, seq, heads, dim = qs.shape
    video = grid[0] * grid[1] * grid[2]
    perm, inverse = Reorderer(args.reorder, grid).indices(video, device)
    hidden = qs.reshape(bsz, seq, heads * dim)  # the block-0 input [B, L, H*D]
    proj = torch.randn(bsz, seq, args.out_dim, dtype=qs.dtype, device=device)
    rope = [torch.randn(1, seq, 1, dim, dtype=torch.float32, device=device) for _ in range(2)]

    def reorder():
        hidden.index_select(1, perm)
        [t.index_select(1, perm) for t in rope]
        proj.index_select(1, inverse)

    def model_rope():  # diffusers' WanAttnProcessor: into [B, L, H, D]
        x1, x2 = qs.unflatten(-1, (-1, 2)).unbind(-1)
        cos, sin = rope[0][..., 0::2], rope[1][..., 1::2]
        out = torch.empty_like(qs)
        out[..., 0::2] = x1 * cos - x2 * sin
        out[..., 1::2] = x1 * sin + x2 * cos
        return out

    def spbench_rope():
        return _wan_rotary(qs, *rope)

    fns = {"reorder": reorder, "model_rope": model_rope, "spbench_rope": spbench_rope}
    for _ in range(args.warmup):
        for fn in fns.values():
            fn()
    med = {key: statistics.median(timed(fn, device, flush_buf) for _ in range(args.repeats)) for key, fn in fns.items()}
    sparse_layers = max(args.layers - args.dense_layers, 1)
    return {
        "forward_reorder_ms": med["reorder"],
        "sparse_layers": sparse_layers,
        "amortised_ms": med["reorder"] / sparse_layers,
        "model_rope_ms": med["model_rope"],
        "spbench_rope_ms": med["spbench_rope"],
        # Per call, for Q and K.
        "rope_delta_ms": 2 * (med["spbench_rope"] - med["model_rope"]),
    }


def dense_ms(inputs, args, device, flush_buf) -> float:
    import torch.nn.functional as F

    views = [t.transpose(1, 2) for t in inputs]
    fn = lambda: F.scaled_dot_product_attention(*views).transpose(1, 2).flatten(2, 3)  # noqa: E731
    for _ in range(args.warmup):
        fn()
    return statistics.median(timed(fn, device, flush_buf) for _ in range(args.repeats))


def main(argv=None) -> int:
    from spbench.parsing import parse_list, parse_params

    args = parse_args(argv)
    device = torch.device(args.device)
    knobs = parse_params(args.param)
    grid, inputs = make_inputs(args, device)
    flush_buf = torch.empty(256 * 2**20 // 4, dtype=torch.float32, device=device) if device.type == "cuda" else None
    rows, failures = [], {}
    with torch.no_grad():
        once = once_per_forward(args, grid, inputs, device, flush_buf) if not args.text_len and args.reorder != "none" else None
        for name in parse_list(args.methods):
            try:
                rows.append(measure(name, args, knobs, grid, inputs, device, flush_buf, once))
            except Exception as exc:  # one method failing must not lose the others
                failures[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            if device.type == "cuda":
                torch.cuda.empty_cache()
        dense = dense_ms(inputs, args, device, flush_buf)
    seq = grid[0] * grid[1] * grid[2] + args.text_len
    print(f"diffusers processor overhead: grid {args.grid} (+{args.text_len} text), {seq} tokens, {args.heads} heads x {args.head_dim}, {args.dtype}, reorder={args.reorder}, {device}")
    pct = lambda x: f"{100 * x:.2f}%" if x is not None else "-"  # noqa: E731
    print("reorder per attention call (reorder_scope=call):")
    print(f"{'method':<14}{'density':>9}{'method ms':>12}{'processor ms':>14}{'overhead':>10}{'gathers ms':>12}{'transpose ms':>14}")
    for r in rows:
        print(f"{r['method']:<14}{r['density']:>9.3f}{r['method_ms']:>12.2f}{r['processor_ms']:>14.2f}{pct(r['overhead']):>10}{r['gathers_ms']:>12.2f}{r['transpose_ms']:>14.2f}")
    if once is not None:
        print(
            f"reorder once per forward (reorder_scope=forward): forward reorder {once['forward_reorder_ms']:.3f} ms / {once['sparse_layers']} sparse layers"
            f" = {once['amortised_ms']:.4f} ms amortised per call; rope delta (Q+K) {once['rope_delta_ms']:+.3f} ms per call"
        )
        print(f"{'method':<14}{'method ms':>12}{'processor ms':>14}{'per-call ms':>13}{'amortised ms':>14}{'per-call':>10}{'overhead':>10}{'strided ms':>12}{'v copy ms':>11}")
        for r in rows:
            if "forward_processor_ms" in r:
                print(
                    f"{r['method']:<14}{r['method_ms']:>12.2f}{r['forward_processor_ms']:>14.2f}{r['forward_per_call_ms']:>13.3f}{r['forward_amortised_ms']:>14.4f}"
                    f"{pct(r['forward_overhead_per_call']):>10}{pct(r['forward_overhead']):>10}{r['method_strided_ms']:>12.2f}{r['v_copy_ms']:>11.3f}"
                )
    for name, err in failures.items():
        print(f"{name:<14} failed: {err}")
    print(f"dense SDPA (+ output transpose): {dense:.2f} ms; target: overhead < 5%")
    if args.out:
        gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
        payload = {
            "benchmark": "diffusers_processor_overhead",
            "config": {k: v for k, v in vars(args).items() if k != "out"},
            "seq": seq,
            "gpu": gpu,
            "torch": torch.__version__,
            "dense_ms": dense,
            "once_per_forward": once,
            "rows": rows,
            "failures": failures,
            "target_overhead": 0.05,
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(payload, f, indent=2)
        print(f"wrote {args.out}")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
