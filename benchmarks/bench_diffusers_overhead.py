"""Overhead of spbench's diffusers attention processors, outside the attention itself.

    python benchmarks/bench_diffusers_overhead.py --methods psa,block,xattention --budget 0.15 \\
        --out results/diffusers_overhead.json

What is timed, per method, at the Wan2.1-14B 720p self-attention shape
(default: batch 1, grid 21 x 45 x 80 = 75,600 tokens, 40 heads, head dim
128, bf16), on synthetic video-like Q/K/V (``spbench.workloads`` "video"):

* ``method``: ``m.run(q, k, v, m.plan(q, k, v))`` alone, on contiguous
  ``[B, H, L, D]`` tensors already in the order the method sees (curve order
  with ``--reorder hilbert``), i.e. the sparse attention itself;
* ``processor``: what a spbench processor does between the model's
  projections and its output projection: :meth:`SparseAttention.attend` on
  the strided ``[B, H, L, D]`` views of the ``[B, L, H, D]`` projections a
  diffusers processor holds (reordering gather, the method, inverse gather
  straight into ``[B, L, H, D]``, CUDA events, density bookkeeping), then
  the ``flatten`` to ``[B, L, H*D]``;
* ``overhead = (processor - method) / method``; the target is below 5%;
* ``gathers``: the reordering index_selects alone (3 inputs + 1 output);
* ``transpose``: the ``[B, H, L, D] -> [B, L, H*D]`` copy the models' own
  dense processors pay anyway (the inverse gather replaces it here);
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


def measure(name, args, knobs, grid, inputs, device, flush_buf) -> dict:
    from spbench.integrations.diffusers import SparseAttention

    handle = SparseAttention(name, args.budget, knobs, dense_steps=0, dense_layers=0, reorder=args.reorder, total_steps=1, text="joint")
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

    def run_method():
        return method.run(*ordered, method.plan(*ordered))

    def run_processor():
        return handle.attend(1, *views, layout="bshd", **text).flatten(2, 3)

    def run_gathers():
        if order is None:
            return [t.contiguous() for t in views]
        outs = [t.index_select(2, order[0]) for t in views]
        return outs[0].transpose(1, 2).index_select(1, order[1])

    def run_transpose():
        return ordered[0].transpose(1, 2).flatten(2, 3)

    for _ in range(args.warmup):
        run_method()
        run_processor()
    samples = {"method": [], "processor": [], "gathers": [], "transpose": []}
    for _ in range(args.repeats):
        samples["method"].append(timed(run_method, device, flush_buf))
        samples["processor"].append(timed(run_processor, device, flush_buf))
        samples["gathers"].append(timed(run_gathers, device, flush_buf))
        samples["transpose"].append(timed(run_transpose, device, flush_buf))
    med = {key: statistics.median(vals) for key, vals in samples.items()}
    stats = handle.stats()
    return {
        "method": name,
        "budget": args.budget,
        "params": knobs,
        "density": stats["sparse_density"],
        "method_ms": med["method"],
        "processor_ms": med["processor"],
        "overhead_ms": med["processor"] - med["method"],
        "overhead": (med["processor"] - med["method"]) / med["method"] if med["method"] > 0 else None,
        "gathers_ms": med["gathers"],
        "transpose_ms": med["transpose"],
        "samples_ms": samples,
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
        for name in parse_list(args.methods):
            try:
                rows.append(measure(name, args, knobs, grid, inputs, device, flush_buf))
            except Exception as exc:  # one method failing must not lose the others
                failures[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            if device.type == "cuda":
                torch.cuda.empty_cache()
        dense = dense_ms(inputs, args, device, flush_buf)
    seq = grid[0] * grid[1] * grid[2] + args.text_len
    print(f"diffusers processor overhead: grid {args.grid} (+{args.text_len} text), {seq} tokens, {args.heads} heads x {args.head_dim}, {args.dtype}, reorder={args.reorder}, {device}")
    print(f"{'method':<14}{'density':>9}{'method ms':>12}{'processor ms':>14}{'overhead':>10}{'gathers ms':>12}{'transpose ms':>14}")
    for r in rows:
        ov = f"{100 * r['overhead']:.2f}%" if r["overhead"] is not None else "-"
        print(f"{r['method']:<14}{r['density']:>9.3f}{r['method_ms']:>12.2f}{r['processor_ms']:>14.2f}{ov:>10}{r['gathers_ms']:>12.2f}{r['transpose_ms']:>14.2f}")
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
