"""Same-process A/B of the Gluon executor kernel: an older revision's kernel against this checkout's.

    git show REV:kernels/gluon_attn.py > benchmarks/baselines/gluon_attn_REV.py
    python benchmarks/ab_gluon.py --before benchmarks/baselines/gluon_attn_REV.py [--cases mix32,dense110] [--rounds 3]

The older kernel is launched through this checkout's host code (run_plan_gluon with
its kernel swapped in; a ``Q_REGS`` argument it does not know is dropped), so only
the kernel differs. Each call is timed as a CUDA-graph replay (no host work; CUDA
events, L2 flushed, median), the two alternating for ``--rounds`` rounds so machine
drift hits both alike; outputs are compared too. bf16, d=128, batch 1, non-causal.
Cases: the "before" side runs the old defaults (no persistent grid, Q from shared
memory); "after" runs this checkout's defaults. JSON to --out.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_executor import bench, make_plan, qkv  # noqa: E402
from gluon_host_overhead import graph_of  # noqa: E402
from spbench.kernels import pyramid_gluon  # noqa: E402
from spbench.kernels.pool import build_pyramid  # noqa: E402

CASES = {  # name: (L, heads, block_kv, level mix)
    "mix32": (32768, 12, 64, {1: 0.1, 2: 0.05, 8: 0.2}),
    "sparse32": (32768, 12, 64, {1: 0.1}),
    "dense110": (110000, 40, 64, {1: 1.0}),
    "sparse110": (110000, 40, 64, {1: 0.1}),
}


def load_kernel(path: str):
    spec = importlib.util.spec_from_file_location("gluon_attn_before", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod._gluon_fwd


class _Swapped:
    """Stands in for pyramid_gluon._gluon_fwd: launches the older kernel."""

    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            kwargs.pop("Q_REGS", None)
            return self.kernel[grid](*args, **kwargs)

        return launch


def caller(q, k, v, plan, pyr, before_kernel=None):
    if before_kernel is None:
        return lambda: pyramid_gluon.run_plan_gluon(q, k, v, plan, pyramid=pyr)
    swapped = _Swapped(before_kernel)

    def run():
        saved = pyramid_gluon._gluon_fwd
        pyramid_gluon._gluon_fwd = swapped
        try:
            return pyramid_gluon.run_plan_gluon(q, k, v, plan, pyramid=pyr, persistent=False, q_regs=False)
        finally:
            pyramid_gluon._gluon_fwd = saved

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="an older kernels/gluon_attn.py (made with git show)")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "ab_gluon.json"))
    args = ap.parse_args()
    names = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(names) - set(CASES))
    if unknown or not os.path.isfile(args.before):
        sys.exit(f"unknown case(s) {unknown}" if unknown else f"no such file: {args.before}")
    before = load_kernel(args.before)
    records = []
    for name in names:
        L, H, bk, mix = CASES[name]
        q, k, v = qkv(1, H, H, L, L, 128, torch.bfloat16)
        pyr = build_pyramid(k, v) if any(p > 1 for p in mix) else None
        plan = make_plan(1, H, L, L, 128, bk, mix)
        calls = {"before": caller(q, k, v, plan, pyr, before), "after": caller(q, k, v, plan, pyr)}
        outs = {side: fn() for side, fn in calls.items()}
        graphs = {side: graph_of(fn) for side, fn in calls.items()}
        reps = 3 if L > 65536 else 15
        times = {side: [] for side in calls}
        for _ in range(args.rounds):
            for side, g in graphs.items():
                times[side].append(bench(g.replay, reps)[0])
        rec = dict(case=name, L=L, heads=H, block_kv=bk, mix={str(p): f for p, f in mix.items()},
                   max_diff=(outs["before"].float() - outs["after"].float()).abs().max().item(),
                   before_ms=times["before"], after_ms=times["after"],
                   after_vs_before=min(times["before"]) / min(times["after"]))
        print(json.dumps(rec), flush=True)
        records.append(rec)
        del q, k, v, pyr, plan, graphs, outs
        torch.cuda.empty_cache()
    with open(args.out, "w") as fh:
        json.dump(records, fh, indent=1)


if __name__ == "__main__":
    main()
