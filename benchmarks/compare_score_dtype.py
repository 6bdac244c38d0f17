"""fp8 vs input-dtype block scoring (issue 4): plan time, selected blocks and attention quality, same process.

    python3 benchmarks/compare_score_dtype.py --out results/reference/score_dtype_h200.json
    python3 benchmarks/compare_score_dtype.py --seq 32k --methods psa --budgets 0.1
    python3 benchmarks/compare_score_dtype.py --device cpu --seq 2048 --heads 2 --head-dim 64 --repeats 1   # smoke test

For every (sequence, method, budget) the planner runs with ``score_dtype=input``
(bf16 products) and ``score_dtype=fp8`` (e4m3 with per-row scales) on the same
video-workload tensors (bf16, d128, ``--heads`` query = KV heads). Reported:

* ``plan_ms`` (median, CUDA events, L2 flushed) and its share of the fastest
  dense SDPA timed in the same process;
* ``density`` and ``changed_blocks``: the share of (query block, KV block)
  cells whose level differs between the two plans;
* ``rel_l2`` / ``cosine`` of the executed output against exact fp32 attention on
  256 sampled query rows (:func:`spbench.metrics.quality_vs_exact`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import torch

import spbench
from spbench.metrics import quality_vs_exact
from spbench.parsing import parse_seq
from spbench.timing import time_fn
from spbench.workloads import make_qkv

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from profile_plans import dense_ms as fastest_sdpa_ms, parse_method  # noqa: E402  (the sibling benchmark's helpers)

DTYPES = ("input", "fp8")


def dense_ms(q, k, v, repeats: int) -> tuple[str, float]:
    """The fastest of cuDNN / FlashAttention SDPA; off the GPU (smoke tests), torch SDPA's default choice."""
    best = fastest_sdpa_ms(q, k, v, repeats)
    if best is None:
        m = spbench.get_method("dense")
        best = ("dense", time_fn(lambda: m(q, k, v), q.device, repeats=repeats, warmup=1).median_ms)
    return best


def compare_cell(q, k, v, spec: str, budget: float, repeats: int, dense: float) -> dict:
    name, knobs = parse_method(spec)
    row: dict = {"method": spec, "budget": budget}
    levels = {}
    for dtype in DTYPES:
        method = spbench.get_method(name, budget=budget, score_dtype=dtype, **knobs)
        plan = method.plan(q, k, v)
        timing = time_fn(lambda: method.plan(q, k, v), q.device, repeats=repeats, warmup=1)
        out = method.run(q, k, v, plan)
        quality = quality_vs_exact(q, k, v, out)
        levels[dtype] = plan.to_levels()
        row[dtype] = {
            "plan_ms": round(timing.median_ms, 3),
            "plan_pct_of_dense": round(100 * timing.median_ms / dense, 2),
            "density": round(plan.density, 5),
            "rel_l2": round(quality["rel_l2"], 5),
            "cosine": round(quality["cosine"], 6),
        }
        del plan, out
    row["changed_blocks"] = round(float((levels["input"] != levels["fp8"]).float().mean()), 5)
    a, b = row["input"], row["fp8"]
    print(
        f"{spec:28s} budget {budget:<5g} plan {a['plan_ms']:8.2f} -> {b['plan_ms']:8.2f} ms "
        f"({a['plan_pct_of_dense']:.2f}% -> {b['plan_pct_of_dense']:.2f}% of dense)  density {a['density']:.4f} / {b['density']:.4f}  "
        f"rel_l2 {a['rel_l2']:.4f} / {b['rel_l2']:.4f}  changed {100 * row['changed_blocks']:.2f}%",
        flush=True,
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", default="32k,110k")
    ap.add_argument("--heads", type=int, default=40)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--methods", default="psa,xattention,xattention:stride=16,psa:variant=understanding")
    ap.add_argument("--budgets", default="0.05,0.1,0.2")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    record = {
        "command": "python3 benchmarks/compare_score_dtype.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "triton": __import__("triton").__version__,
        "workload": f"video, bf16, B=1, {args.heads} heads (q = kv), d={args.head_dim}",
        "cells": [],
    }
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    for seq in (parse_seq(s) for s in args.seq.split(",")):
        q, k, v = make_qkv("video", 1, args.heads, args.heads, seq, args.head_dim, dtype=dtype, device=device)
        dense_name, dense = dense_ms(q, k, v, max(1, args.repeats // 2))
        print(f"seq {seq}: dense {dense_name} {dense:.2f} ms", flush=True)
        for spec in args.methods.split(","):
            for budget in (float(b) for b in args.budgets.split(",")):
                try:
                    row = compare_cell(q, k, v, spec, budget, args.repeats, dense)
                except Exception as exc:  # noqa: BLE001 - record the failing cell and go on
                    row = {"method": spec, "budget": budget, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
                    print(f"{spec} budget {budget}: FAILED {row['error']}", flush=True)
                row.update(seq=seq, dense_backend=dense_name, dense_ms=round(dense, 3))
                record["cells"].append(row)
        del q, k, v
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(record, f, indent=1)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
