"""psa's plan time with variants of the sampled-importance scorer, timed in one process (issue 4).

    python3 benchmarks/compare_psa_scorer.py --seq 110k --before /path/to/old/psa_score.py --out psa_scorer.json
    python3 benchmarks/compare_psa_scorer.py --device cpu --seq 4096 --heads 2 --repeats 1   # smoke test

The planner (``psa``, video workload, bf16, d=128, ``--budget``) runs with its
``psa_importance`` swapped for each variant:

* ``before``: ``psa_importance`` of the module file given by ``--before``
  (e.g. ``git show <commit>:kernels/psa_score.py``), if given;
* ``rowscale``: this checkout, sample-major keys, fp8 scale per key row;
* ``blockmajor``: this checkout, ``interleave=1`` (block-major keys), per-row key scales;
* ``after``: this checkout's defaults (sample-major keys, fp8 scale per KV block);

each at ``score_dtype`` fp8 and input (bf16 products). Timings are
interleaved over ``--rounds`` rounds (the GPU clock drifts between calls):
per round and variant the median of ``--repeats`` plan calls (CUDA events,
L2 flushed), reported as the median over rounds and as a share of the
fastest dense SDPA measured in the same process. Per variant also: one
torch.profiler table of a plan call (top kernels), the levels that differ
from the first variant's plan, and the output error against exact
attention on sampled rows.
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
import spbench.methods.psa as psa_method
from spbench.kernels import psa_score, score_tuning
from spbench.metrics import quality_vs_exact
from spbench.parsing import parse_seq
from spbench.timing import time_fn
from spbench.workloads import make_qkv

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from profile_plans import dense_ms as fastest_sdpa_ms, profile_once  # noqa: E402  (the sibling benchmark's helpers)

ORIGINAL = psa_method.psa_importance


def load_before(path: str):
    """``psa_importance`` of another version of kernels/psa_score.py, imported under a private name."""
    spec = importlib.util.spec_from_file_location("_psa_score_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.psa_importance


def variants(before: str | None) -> dict:
    out = {}
    if before:
        out["before"] = load_before(before)
    out["blockmajor"] = functools.partial(psa_score.psa_importance, interleave=1, fp8_key_scale="row")
    out["rowscale"] = functools.partial(psa_score.psa_importance, fp8_key_scale="row")
    out["after"] = psa_score.psa_importance
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", default="110k")
    ap.add_argument("--heads", type=int, default=40)
    ap.add_argument("--budget", type=float, default=0.1)
    ap.add_argument("--before", default=None, help="path of an older kernels/psa_score.py to time as 'before'")
    ap.add_argument("--dtypes", default="fp8,input", help="score_dtype values to time")
    ap.add_argument("--cells", default=None, help="variant/dtype labels to time (default: every variant at every dtype)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    seq = parse_seq(args.seq)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q, k, v = make_qkv("video", 1, args.heads, args.heads, seq, 128, dtype=dtype, device=device)
    dense = fastest_sdpa_ms(q, k, v, 3) if device.type == "cuda" else None
    dense_name, dense_ms = dense if dense else ("dense", time_fn(lambda: spbench.get_method("dense")(q, k, v), device, repeats=1, warmup=0).median_ms)
    print(f"seq {seq} x {args.heads} heads: dense {dense_name} {dense_ms:.2f} ms", flush=True)
    record = {
        "command": "python3 benchmarks/compare_psa_scorer.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "triton": __import__("triton").__version__,
        "workload": f"video, {str(dtype).removeprefix('torch.')}, B=1, {args.heads} heads (q = kv), d=128, seq {seq}, psa budget {args.budget}",
        "dense_backend": dense_name,
        "dense_ms": round(dense_ms, 3),
        "cells": {},
    }
    fns = variants(args.before)
    methods, samples, first_levels = {}, {}, {}
    for score_dtype in args.dtypes.split(","):
        for name, fn in fns.items():
            label = f"{name}/{score_dtype}"
            if args.cells and label not in args.cells.split(","):
                continue
            method = spbench.get_method("psa", budget=args.budget, score_dtype=score_dtype)
            psa_method.psa_importance = fn
            try:
                plan = method.plan(q, k, v)  # compiles and autotunes this variant
                out = method.run(q, k, v, plan)
                quality = quality_vs_exact(q, k, v, out)
                levels = plan.to_levels()
                ref = first_levels.setdefault(score_dtype, (name, levels))
                prof = profile_once(lambda: method.plan(q, k, v), args.device, args.top)
            finally:
                psa_method.psa_importance = ORIGINAL
            record["cells"][label] = {
                "density": round(plan.density, 5),
                "rel_l2": round(quality["rel_l2"], 5),
                "cosine": round(quality["cosine"], 6),
                f"changed_blocks_vs_{ref[0]}": round(float((levels != ref[1]).float().mean()), 5),
                "profile": {key: prof[key] for key in ("device_total_ms", "device_kernels", "top_kernels")},
            }
            methods[label], samples[label] = (method, fn), []
            del plan, out, levels
            top = ", ".join(f"{r['name'][:40]} {r['self_device_ms']:.2f}" for r in prof["top_kernels"][:6])
            print(f"{label:22s} rel_l2 {quality['rel_l2']:.5f}  profile: {top}", flush=True)
    for rnd in range(args.rounds):
        for label, (method, fn) in methods.items():
            psa_method.psa_importance = fn
            try:
                samples[label].append(time_fn(lambda method=method: method.plan(q, k, v), device, repeats=args.repeats, warmup=1).median_ms)
            finally:
                psa_method.psa_importance = ORIGINAL
        print(f"round {rnd}: " + "  ".join(f"{label} {s[-1]:.2f}" for label, s in samples.items()), flush=True)
    for label, s in samples.items():
        ms = statistics.median(s)
        cell = record["cells"][label]
        cell.update(plan_ms=round(ms, 3), plan_ms_rounds=[round(x, 3) for x in s], plan_pct_of_dense=round(100 * ms / dense_ms, 2))
        print(f"{label:22s} plan {ms:8.2f} ms = {cell['plan_pct_of_dense']:.2f}% of {dense_name} {dense_ms:.1f} ms", flush=True)
    record["scorer_configs"] = score_tuning.scorer_configs()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(record, f, indent=1)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
