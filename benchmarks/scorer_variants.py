"""Time a planner with variants of its scoring function in one process (compare_psa_scorer.py, compare_xattn_scorer.py).

A variant replaces one module attribute (the planner's scorer) while its
cells run. Per cell: one plan call to compile and autotune, the output
error against exact attention, one torch.profiler table of a plan call, and
the share of blocks that differ from the first cell of the same score dtype;
then the plan calls of all cells are timed interleaved over rounds (the GPU
clock drifts between calls): per round and cell the median of ``repeats``
calls (CUDA events, L2 flushed), reported as the median over rounds and as a
share of the fastest dense SDPA measured in the same process.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import platform
import statistics
import sys

import torch

import spbench
from spbench.kernels import score_tuning
from spbench.metrics import quality_vs_exact
from spbench.timing import time_fn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from profile_plans import dense_ms as fastest_sdpa_ms, profile_once  # noqa: E402  (the sibling benchmark's helpers)


def load_function(path: str, attr: str):
    """``attr`` of the Python file ``path`` (an older version of a kernel module), imported under a private name."""
    spec = importlib.util.spec_from_file_location(f"_before_{os.path.splitext(os.path.basename(path))[0]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, attr)


@contextlib.contextmanager
def swapped(module, attr: str, fn):
    """``module.attr`` is ``fn`` inside the block, the original again after it."""
    original = getattr(module, attr)
    setattr(module, attr, fn)
    try:
        yield
    finally:
        setattr(module, attr, original)


def header(script: str, args) -> dict:
    """The record's command line and environment."""
    device = torch.device(args.device)
    return {
        "command": f"python3 benchmarks/{script} " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "triton": __import__("triton").__version__,
    }


def dense_baseline(q, k, v) -> tuple[str, float]:
    """(backend, ms) of the fastest dense SDPA on the GPU; the dense method once elsewhere."""
    best = fastest_sdpa_ms(q, k, v, 3) if q.device.type == "cuda" else None
    return best or ("dense", time_fn(lambda: spbench.get_method("dense")(q, k, v), q.device, repeats=1, warmup=0).median_ms)


def time_cells(record: dict, q, k, v, method_name: str, budget: float, target, attr: str, cells: list[tuple[str, object]],
               repeats: int, rounds: int, top: int) -> None:
    """Fill ``record["cells"]``: ``cells`` are (``variant/score_dtype`` label, scorer) pairs, ``target.attr`` the scorer swapped."""
    device = q.device
    dense_name, dense_ms = record["dense_backend"], record["dense_ms"]
    methods, samples, first = {}, {}, {}
    for label, fn in cells:
        name, score_dtype = label.split("/")
        method = spbench.get_method(method_name, budget=budget, score_dtype=score_dtype)
        with swapped(target, attr, fn):
            plan = method.plan(q, k, v)  # compiles and autotunes this variant
            out = method.run(q, k, v, plan)
            quality = quality_vs_exact(q, k, v, out)
            levels = plan.to_levels()
            prof = profile_once(lambda: method.plan(q, k, v), device.type, top)
        cell = {"density": round(plan.density, 5), "rel_l2": round(quality["rel_l2"], 5), "cosine": round(quality["cosine"], 6)}
        ref_name, ref_levels = first.setdefault(score_dtype, (name, levels))
        if ref_name != name:
            cell[f"changed_blocks_vs_{ref_name}"] = round(float((levels != ref_levels).float().mean()), 5)
        cell["profile"] = {key: prof[key] for key in ("device_total_ms", "device_kernels", "top_kernels")}
        record["cells"][label] = cell
        methods[label], samples[label] = (method, fn), []
        del plan, out, levels
        changed = next((x for key, x in cell.items() if key.startswith("changed_blocks_vs_")), "-")
        top_text = ", ".join(f"{r['name'][:36]} {r['self_device_ms']:.2f}" for r in prof["top_kernels"][:5])
        print(f"{label:20s} rel_l2 {quality['rel_l2']:.5f} changed {changed}  profile: {top_text}", flush=True)
    for rnd in range(rounds):
        for label, (method, fn) in methods.items():
            with swapped(target, attr, fn):
                samples[label].append(time_fn(lambda method=method: method.plan(q, k, v), device, repeats=repeats, warmup=1).median_ms)
        print(f"round {rnd}: " + "  ".join(f"{label} {s[-1]:.2f}" for label, s in samples.items()), flush=True)
    for label, s in samples.items():
        ms = statistics.median(s)
        cell = record["cells"][label]
        cell.update(plan_ms=round(ms, 3), plan_ms_rounds=[round(x, 3) for x in s], plan_pct_of_dense=round(100 * ms / dense_ms, 2))
        print(f"{label:20s} plan {ms:8.2f} ms = {cell['plan_pct_of_dense']:.2f}% of {dense_name} {dense_ms:.1f} ms", flush=True)
    record["scorer_configs"] = score_tuning.scorer_configs()


def write(record: dict, path: str | None) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(record, f, indent=1)
        print(f"wrote {path}")
