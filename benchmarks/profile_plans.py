"""Where the planning time of the sparse methods goes (issues 4 and 5: plan <= 5% of dense).

    python3 benchmarks/profile_plans.py --out results/reference/plan_profile_h100.json
    python3 benchmarks/profile_plans.py --seq 32k --methods psa,block --budgets 0.1
    python3 benchmarks/profile_plans.py --device cpu --seq 4096 --heads 2 --repeats 1   # smoke test

For every (sequence length, method, budget) it reports:

* ``plan_ms``: median of CUDA-event timings of ``method.plan(q, k, v)`` with
  L2 flushed before each repeat (:func:`spbench.timing.time_fn`, as the
  kernel sweep measures it), and the host wall time of one call;
* ``syncs``: host-device synchronisations inside one plan call, counted with
  ``torch.cuda.set_sync_debug_mode("warn")`` (each one stalls the CPU until
  the GPU drains, so the launches after it cannot overlap the kernels before);
* once per (sequence, method), at the first budget: the top CUDA kernels and
  CPU ops of one plan call from ``torch.profiler``;
* at the end, ``scorer_configs``: the launch config the scoring kernels'
  autotune chose per shape key, with every candidate's time
  (:mod:`spbench.kernels.score_tuning`).

The workload is ``make_qkv("video", 1, H, H, L, 128)`` in bf16; dense time is
the fastest of cuDNN and FlashAttention SDPA on the same tensors.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch

import spbench
from spbench.kernels import score_tuning
from spbench.parsing import parse_seq
from spbench.timing import time_fn
from spbench.workloads import make_qkv

DEFAULT_METHODS = "psa,block,xattention,xattention:stride=16,rectified,token-sparse,token-sparse+psa"


def parse_method(spec: str) -> tuple[str, dict]:
    """``name`` or ``name:knob=value,...`` (values parsed as int/float when they look like one)."""
    name, _, rest = spec.partition(":")
    knobs = {}
    for item in filter(None, rest.split(";")):
        key, _, value = item.partition("=")
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                continue
        knobs[key] = value
    return name, knobs


def dense_ms(q, k, v, repeats: int) -> tuple[str, float] | None:
    best = None
    for name in ("cudnn", "flash"):
        m = spbench.get_method(name)
        try:
            t = time_fn(lambda m=m: m(q, k, v), q.device, repeats=repeats, warmup=1).median_ms
        except Exception as exc:  # noqa: BLE001 - a backend unavailable for this input
            print(f"dense {name}: unavailable ({type(exc).__name__}: {exc})")
            continue
        if best is None or t < best[1]:
            best = (name, t)
    return best


def count_syncs(fn) -> int:
    """Synchronising CUDA calls made by ``fn()`` (0 on the CPU)."""
    if not torch.cuda.is_available():
        return 0
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def _attr(evt, *names) -> float:
    for name in names:
        value = getattr(evt, name, None)
        if value is not None:
            return float(value)
    return 0.0


LAUNCH_CALLS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx", "cudaMemcpyAsync", "cudaMemsetAsync")


def profile_once(fn, device: str, top: int) -> dict:
    """Top CUDA kernels (self device time) and CPU ops (self CPU time) of one ``fn()`` call, in ms."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.startswith("cuda"):
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    events = prof.key_averages()
    rows = []
    for e in events:
        rows.append(
            {
                "name": e.key[:120],
                "count": int(e.count),
                "self_device_ms": _attr(e, "self_device_time_total", "self_cuda_time_total") / 1e3,
                "self_cpu_ms": _attr(e, "self_cpu_time_total") / 1e3,
            }
        )
    kernels = sorted((r for r in rows if r["self_device_ms"] > 0), key=lambda r: -r["self_device_ms"])[:top]
    cpu = sorted(rows, key=lambda r: -r["self_cpu_ms"])[:top]
    return {
        "device_total_ms": sum(r["self_device_ms"] for r in rows),
        "cpu_total_ms": sum(r["self_cpu_ms"] for r in rows),
        # rows with device time include the aten:: op *and* its kernel, so this counts most launches twice;
        # kept for comparison with earlier records. device_kernels / launch_calls count each launch once.
        "kernel_launches": sum(r["count"] for r in rows if r["self_device_ms"] > 0),
        "device_kernels": sum(r["count"] for r in rows if r["self_device_ms"] > 0 and not r["name"].startswith("aten::")),
        "launch_calls": sum(r["count"] for r in rows if r["name"] in LAUNCH_CALLS),
        "top_kernels": kernels,
        "top_cpu_ops": cpu,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", default="32k,110k")
    ap.add_argument("--heads", type=int, default=40)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--methods", default=DEFAULT_METHODS, help="comma list; knobs as name:key=value;key=value")
    ap.add_argument("--budgets", default="0.1,0.2")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--tag", default="", help="label stored with the results (e.g. before / after)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    budgets = [float(b) for b in args.budgets.split(",")]
    methods = [parse_method(s) for s in args.methods.split(",")]
    report = {"tag": args.tag, "heads": args.heads, "head_dim": args.head_dim, "device": args.device, "cells": [], "profiles": []}
    if args.device.startswith("cuda"):
        report["gpu"] = torch.cuda.get_device_name()
    report["torch"] = torch.__version__
    for seq_text in args.seq.split(","):
        seq = parse_seq(seq_text)
        q, k, v = make_qkv("video", 1, args.heads, args.heads, seq, args.head_dim, dtype=dtype, device=args.device)
        dense = dense_ms(q, k, v, 3) if args.device.startswith("cuda") else None
        print(f"\n== seq={seq} heads={args.heads} d={args.head_dim} {dtype}; dense: {dense}", flush=True)
        for name, knobs in methods:
            label = name + ("" if not knobs else ":" + ";".join(f"{a}={b}" for a, b in knobs.items()))
            for bi, budget in enumerate(budgets):
                m = spbench.get_method(name, budget=budget, **knobs)
                try:
                    t = time_fn(lambda m=m: m.plan(q, k, v), args.device, repeats=args.repeats, warmup=2)
                except Exception as exc:  # noqa: BLE001 - report and go on
                    print(f"{label:28s} b={budget:<4} FAILED {type(exc).__name__}: {exc}", flush=True)
                    continue
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                plan = m.plan(q, k, v)
                host_ms = (time.perf_counter() - t0) * 1e3
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                syncs = count_syncs(lambda m=m: m.plan(q, k, v))
                share = t.median_ms / dense[1] if dense else None
                cell = dict(method=label, seq=seq, budget=budget, plan_ms=t.median_ms, plan_iqr_ms=t.iqr_ms, host_ms=host_ms,
                            syncs=syncs, density=float(plan.density), dense_ms=dense[1] if dense else None, plan_share=share)
                report["cells"].append(cell)
                pct = f"{100 * share:5.2f}%" if share is not None else "  -  "
                print(f"{label:28s} b={budget:<4} plan {t.median_ms:8.2f} ms (iqr {t.iqr_ms:.2f}) host {host_ms:7.2f} ms "
                      f"syncs {syncs:2d} density {plan.density:.4f} plan/dense {pct}", flush=True)
                del plan
                if bi == 0 and not args.no_profile:
                    prof = profile_once(lambda m=m: m.plan(q, k, v), args.device, args.top)
                    report["profiles"].append(dict(method=label, seq=seq, budget=budget, **prof))
                    print(f"   profile: device {prof['device_total_ms']:.2f} ms in {prof['kernel_launches']} kernels "
                          f"({prof['device_kernels']} device kernels, {prof['launch_calls']} launch/copy calls), cpu {prof['cpu_total_ms']:.2f} ms")
                    for r in prof["top_kernels"][:8]:
                        print(f"     k {r['self_device_ms']:8.3f} ms x{r['count']:<4d} {r['name'][:90]}")
                    for r in prof["top_cpu_ops"][:5]:
                        print(f"     c {r['self_cpu_ms']:8.3f} ms x{r['count']:<4d} {r['name'][:90]}")
        del q, k, v
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    # launch configs the scorer autotune chose (and its candidate timings), per shape key
    report["scorer_configs"] = score_tuning.scorer_configs()
    for key, val in report["scorer_configs"].items():
        print(f"scorer config {key}: {val['config']}  {val['timings_ms']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
