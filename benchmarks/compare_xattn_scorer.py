"""xattention's plan time with variants of the antidiagonal scorer, timed in one process (issue 4).

    python3 benchmarks/compare_xattn_scorer.py --seq 110k --out xattn_scorer.json
    python3 benchmarks/compare_xattn_scorer.py --device cpu --seq 4096 --heads 2 --repeats 1 --rounds 1 --check-seq 0   # smoke test

The planner (``xattention``, video workload, bf16, d=128, ``--budget``,
its defaults: stride 8, block_q = block_kv = 128) runs with its
``antidiagonal_scores`` swapped for each variant:

* ``before``: ``antidiagonal_scores`` of the module file ``--before``
  (default benchmarks/baselines/antidiag_49f9ad6.py, the kernel before the
  key interleave: block-major keys, per-block max then exp2 per entry);
* ``blockmajor``: this checkout with ``interleave=1`` (block-major keys,
  the new one-exp2 epilogue);
* ``after``: this checkout's defaults (fp8: keys interleaved in groups of
  8 KV blocks inside the e4m3 copy; input dtype: K as is, = blockmajor);
* ``il8``: this checkout with ``interleave=8`` (at input dtype: a permuted
  bf16 copy of K first);

at ``score_dtype`` fp8 and input (``--cells`` picks, default
``before/fp8,after/fp8,before/input,after/input,il8/input``). Timings are
interleaved over ``--rounds`` rounds: per round and cell the median of
``--repeats`` plan calls (CUDA events, L2 flushed), reported as the median
over rounds and as a share of the fastest dense SDPA measured in the same
process. Per cell also one torch.profiler table of a plan call and the
share of blocks that differ from the ``before`` plan at the same dtype.

``--check-seq N`` (default 4056: a multiple of the stride, not of the
blocks, so TMA applies and the last tiles are partial) first checks every
GPU autotune candidate of this checkout against the PyTorch reference,
causal, GQA (4 query heads on 2 KV heads): ``--check timed`` (default)
the variants timed here at block_kv 128 (fp8 at the default interleave,
the input dtype at interleave 1 and 8); ``--check all`` adds block_kv 64
and fp8 at interleave 1 (about twice the compiles).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import platform
import statistics
import sys

import torch

import spbench
import spbench.methods.xattention as xattn_method
from spbench.kernels import antidiag, score_tuning
from spbench.kernels.fp8_rows import dequantize_rows, quantize_rows
from spbench.metrics import quality_vs_exact
from spbench.parsing import parse_seq
from spbench.timing import time_fn
from spbench.workloads import make_qkv

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from profile_plans import dense_ms as fastest_sdpa_ms, profile_once  # noqa: E402  (the sibling benchmark's helpers)

ORIGINAL = xattn_method.antidiagonal_scores
DEFAULT_CELLS = "before/fp8,after/fp8,before/input,after/input,il8/input"


def load_before(path: str):
    """``antidiagonal_scores`` of another version of kernels/antidiag.py, imported under a private name."""
    spec = importlib.util.spec_from_file_location("_antidiag_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.antidiagonal_scores


def variants(before: str | None) -> dict:
    out = {}
    if before:
        out["before"] = load_before(before)
    out["blockmajor"] = functools.partial(antidiag.antidiagonal_scores, interleave=1)
    out["after"] = antidiag.antidiagonal_scores
    out["il8"] = functools.partial(antidiag.antidiagonal_scores, interleave=8)
    return out


def check_candidates(seq: int, scope: str = "timed", device: str = "cuda") -> list[dict]:
    """Every GPU autotune candidate (causal) against the reference: max abs error per (dtype, interleave, config)."""
    rows = []
    gen = torch.Generator(device=device).manual_seed(0)
    q = (torch.randn(1, 4, seq, 128, device=device, generator=gen) * 1.5).bfloat16()
    k = (torch.randn(1, 2, seq, 128, device=device, generator=gen) * 1.5).bfloat16()
    stride = 8
    for bk in (128, 64) if scope == "all" else (128,):
        cpb = bk // stride
        want = antidiag.antidiagonal_scores_reference(q, k, stride, 128, bk, True)
        qd, kd = dequantize_rows(*quantize_rows(q, stride), seq), dequantize_rows(*quantize_rows(k, stride), seq)
        want8 = antidiag.antidiagonal_scores_reference(qd, kd, stride, 128, bk, True)
        for fp8, interleaves, ref in ((True, (None, 1) if scope == "all" else (None,), want8), (False, (1, 8), want)):
            for interleave in interleaves:
                for cfg in antidiag.tile_configs(q.device, cpb, tma=True, fp8=fp8):
                    try:
                        got = antidiag.antidiagonal_scores(q, k, stride, 128, bk, True, config=cfg, fp8=fp8, interleave=interleave)
                        err = float((got - ref).abs().max())
                    except Exception as exc:  # noqa: BLE001 - e.g. out of shared memory: the autotune skips it too
                        err = f"{type(exc).__name__}: {exc}"[:120]
                    rows.append(dict(dtype="fp8" if fp8 else "input", block_kv=bk, interleave=interleave, config=score_tuning.label(cfg), max_err=err))
                    print(f"check {rows[-1]}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", default="110k")
    ap.add_argument("--heads", type=int, default=40)
    ap.add_argument("--budget", type=float, default=0.1)
    ap.add_argument("--before", default=os.path.join(HERE, "baselines", "antidiag_49f9ad6.py"), help="an older kernels/antidiag.py to time as 'before' ('' to skip)")
    ap.add_argument("--cells", default=DEFAULT_CELLS, help="variant/score_dtype labels to time")
    ap.add_argument("--check-seq", type=int, default=4056, help="sequence of the candidate check (0: skip)")
    ap.add_argument("--check", choices=("timed", "all"), default="timed", help="which candidates the check runs (see above)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    record = {
        "command": "python3 benchmarks/compare_xattn_scorer.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "triton": __import__("triton").__version__,
    }
    if args.check_seq and (device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"):
        record["check"] = check_candidates(args.check_seq, args.check, args.device)
        bad = [r for r in record["check"] if not isinstance(r["max_err"], float) or r["max_err"] > 1e-3]
        record["check_failures"] = bad
        print(f"candidate check: {len(record['check'])} runs, {len(bad)} over 1e-3 or failed", flush=True)
    seq = parse_seq(args.seq)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q, k, v = make_qkv("video", 1, args.heads, args.heads, seq, 128, dtype=dtype, device=device)
    dense = fastest_sdpa_ms(q, k, v, 3) if device.type == "cuda" else None
    dense_name, dense_ms = dense if dense else ("dense", time_fn(lambda: spbench.get_method("dense")(q, k, v), device, repeats=1, warmup=0).median_ms)
    print(f"seq {seq} x {args.heads} heads: dense {dense_name} {dense_ms:.2f} ms", flush=True)
    record.update(
        workload=f"video, {str(dtype).removeprefix('torch.')}, B=1, {args.heads} heads (q = kv), d=128, seq {seq}, xattention budget {args.budget} (defaults: stride 8, block_q = block_kv = 128)",
        dense_backend=dense_name, dense_ms=round(dense_ms, 3), cells={},
    )
    fns = variants(args.before or None)
    methods, samples, levels_before = {}, {}, {}
    for label in args.cells.split(","):
        name, score_dtype = label.split("/")
        fn = fns[name]
        method = spbench.get_method("xattention", budget=args.budget, score_dtype=score_dtype)
        xattn_method.antidiagonal_scores = fn
        try:
            plan = method.plan(q, k, v)  # compiles and autotunes this variant
            out = method.run(q, k, v, plan)
            quality = quality_vs_exact(q, k, v, out)
            levels = plan.to_levels()
            prof = profile_once(lambda: method.plan(q, k, v), args.device, args.top)
        finally:
            xattn_method.antidiagonal_scores = ORIGINAL
        cell = {"density": round(plan.density, 5), "rel_l2": round(quality["rel_l2"], 5), "cosine": round(quality["cosine"], 6)}
        if name == "before":
            levels_before[score_dtype] = levels
        elif score_dtype in levels_before:
            cell["changed_blocks_vs_before"] = round(float((levels != levels_before[score_dtype]).float().mean()), 5)
        cell["profile"] = {key: prof[key] for key in ("device_total_ms", "device_kernels", "top_kernels")}
        record["cells"][label] = cell
        methods[label], samples[label] = (method, fn), []
        del plan, out, levels
        top = ", ".join(f"{r['name'][:32]} {r['self_device_ms']:.2f}" for r in prof["top_kernels"][:4])
        print(f"{label:18s} rel_l2 {quality['rel_l2']:.5f} changed {cell.get('changed_blocks_vs_before', '-')}  profile: {top}", flush=True)
    for rnd in range(args.rounds):
        for label, (method, fn) in methods.items():
            xattn_method.antidiagonal_scores = fn
            try:
                samples[label].append(time_fn(lambda method=method: method.plan(q, k, v), device, repeats=args.repeats, warmup=1).median_ms)
            finally:
                xattn_method.antidiagonal_scores = ORIGINAL
        print(f"round {rnd}: " + "  ".join(f"{label} {s[-1]:.2f}" for label, s in samples.items()), flush=True)
    for label, s in samples.items():
        ms = statistics.median(s)
        cell = record["cells"][label]
        cell.update(plan_ms=round(ms, 3), plan_ms_rounds=[round(x, 3) for x in s], plan_pct_of_dense=round(100 * ms / dense_ms, 2))
        print(f"{label:18s} plan {ms:8.2f} ms = {cell['plan_pct_of_dense']:.2f}% of {dense_name} {dense_ms:.1f} ms", flush=True)
    record["scorer_configs"] = score_tuning.scorer_configs()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(record, f, indent=1)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
