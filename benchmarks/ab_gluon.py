"""Same-process A/B of the Gluon executor: an older revision's kernel and/or launch configs against this checkout's.

    git show REV:kernels/gluon_attn.py > benchmarks/baselines/gluon_attn_REV.py
    python benchmarks/ab_gluon.py --before benchmarks/baselines/gluon_attn_REV.py [--cases mix32,dense110] [--rounds 3]
    python benchmarks/ab_gluon.py --before ... --configs "t128=block_n=128,persistent=1" --cases mix32,level1_40

Sides: one per launch config (``--configs``: ``label=SPBENCH_GLUON_CONFIG-style string``,
those fields pinned, the rest default; "default" is always there), each run with this
checkout's kernel and, with ``--before``, also with the older kernel ("label@before"),
launched through this checkout's host code (run_plan_gluon with its kernel swapped in),
so only the kernel differs; the older kernel gets its arguments by name, without the ones
it predates (``Q_REGS``, ``ILV``: a kernel without ``ILV`` runs with interleaved tiles off; a session 15-16 kernel
gets its last-round split's arguments, switched off; one from before session 18 gets ``Out`` and its strides).
``--legacy`` is for kernels older than the persistent grid and Q-in-registers options
(the before side runs without either). Each call is timed as a CUDA-graph replay (no host work; CUDA
events, L2 flushed, median), the sides alternating for ``--rounds`` rounds so machine
drift hits all alike; outputs are compared with the first side. bf16, d=128, batch 1,
non-causal. JSON to --out.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_executor import bench, case_names, labelled_sides, make_plan, qkv  # noqa: E402
from gluon_host_overhead import graph_of  # noqa: E402
from spbench.kernels import gluon_attn, pyramid_gluon  # noqa: E402
from spbench.errors import SpbenchError  # noqa: E402
from spbench.kernels.pool import build_pyramid  # noqa: E402

CASES = {  # name: (L, heads, block_kv, level mix)
    "mix32": (32768, 12, 64, {1: 0.1, 2: 0.05, 8: 0.2}),
    "mix32k": (32000, 12, 64, {1: 0.1, 2: 0.05, 8: 0.2}),  # the shape of `spbench kernel --seq 32k`
    "sparse32": (32768, 12, 64, {1: 0.1}),
    "level1_40": (32768, 12, 64, {1: 0.4}),
    "level2_40": (32768, 12, 64, {2: 0.4}),
    "level8_40": (32768, 12, 64, {8: 0.4}),
    "level4_40": (32768, 12, 64, {4: 0.4}),
    "level1_40_bk128": (32768, 12, 128, {1: 0.4}),
    "level2_40_bk128": (32768, 12, 128, {2: 0.4}),
    "level4_40_bk128": (32768, 12, 128, {4: 0.4}),
    "level8_40_bk128": (32768, 12, 128, {8: 0.4}),
    "level1_1": (32768, 12, 64, {1: 0.01}),
    "level8_1": (32768, 12, 64, {8: 0.01}),
    "dense32": (32768, 12, 64, {1: 1.0}),
    "mix110": (110000, 40, 64, {1: 0.1, 2: 0.05, 8: 0.2}),
    "dense110": (110000, 40, 64, {1: 1.0}),
    "sparse110": (110000, 40, 64, {1: 0.1}),
}


def load_kernel(path: str):
    spec = importlib.util.spec_from_file_location("gluon_attn_before", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod._gluon_fwd


class _Swapped:
    """Stands in for pyramid_gluon._gluon_fwd: launches the older kernel, its arguments bound by name, so one
    that predates some (Q_REGS, ILV) gets the rest, one from before session 18 (pointer-stored output) gets Out and
    its strides, and one from sessions 15-16 (which had the last-round split) gets that feature's arguments,
    switched off."""

    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            current = gluon_attn._gluon_fwd.arg_names
            named = dict(zip(current, args), **kwargs)
            if named.get("ILV") and "ILV" not in self.kernel.arg_names:
                sys.exit("interleaved tiles with an older kernel: the before side must run with ilv off")
            if "Out" in self.kernel.arg_names:  # before session 18 the output was stored through a pointer and strides
                out = named["o_desc"].base
                named.update(Out=out, so_b=out.stride(0), so_h=out.stride(1), so_l=out.stride(2))
            if "PARTS" in self.kernel.arg_names:  # split off: every item whole, the part buffers never written
                n_items = -(-named["q_len"] // gluon_attn.BLOCK_M) * named["n_bh"]
                named.update(PartO=named["Lse"], PartL=named["Lse"], n_whole=n_items, PARTS=1)
            # arguments of this checkout's kernel that the older one lacks are dropped; launch options stay
            return self.kernel[grid](**{k: v for k, v in named.items() if k in self.kernel.arg_names or k not in current})

        return launch


def caller(q, k, v, plan, pyr, before_kernel=None, overrides=None, legacy=False):
    overrides = dict(overrides or {})
    if before_kernel is None:
        return lambda: pyramid_gluon.run_plan_gluon(q, k, v, plan, pyramid=pyr, **overrides)
    swapped = _Swapped(before_kernel)
    if "ILV" not in before_kernel.arg_names:
        overrides["ilv"] = False  # kernels before session 17 read every tile as NVMMA
    if legacy:
        overrides.update(persistent=False, q_regs=False)

    def run():
        saved = pyramid_gluon._gluon_fwd
        pyramid_gluon._gluon_fwd = swapped
        try:
            return pyramid_gluon.run_plan_gluon(q, k, v, plan, pyramid=pyr, **overrides)
        finally:
            pyramid_gluon._gluon_fwd = saved

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", help="an older kernels/gluon_attn.py (made with git show)")
    ap.add_argument("--configs", default="", help="';'-separated label=config sides, e.g. 't128=block_n=128,persistent=1'")
    ap.add_argument("--legacy", action="store_true", help="--before predates the persistent / q_regs options")
    ap.add_argument("--cases", default="mix32,sparse32,dense110,sparse110")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "ab_gluon.json"))
    args = ap.parse_args()
    names = case_names(args.cases, CASES)
    if args.before and not os.path.isfile(args.before):
        sys.exit(f"no such file: {args.before}")
    configs = {"default": {}}
    for label, text in labelled_sides(args.configs, "label=config"):
        try:
            configs[label] = pyramid_gluon.parse_config(text)
        except SpbenchError as err:
            sys.exit(f"--configs side {label}={text}: {err}")
    before = load_kernel(args.before) if args.before else None
    records = []
    for name in names:
        L, H, bk, mix = CASES[name]
        q, k, v = qkv(1, H, H, L, L, 128, torch.bfloat16)
        pyr = build_pyramid(k, v) if any(p > 1 for p in mix) else None
        plan = make_plan(1, H, L, L, 128, bk, mix)
        calls = {}
        for label, ov in configs.items():
            calls[label] = caller(q, k, v, plan, pyr, overrides=ov)
            if before:
                calls[f"{label}@before"] = caller(q, k, v, plan, pyr, before, ov, args.legacy)
        outs = {side: fn() for side, fn in calls.items()}
        graphs = {side: graph_of(fn) for side, fn in calls.items()}
        reps = 3 if L > 65536 else 15
        times = {side: [] for side in calls}
        for _ in range(args.rounds):
            for side, g in graphs.items():
                times[side].append(bench(g.replay, reps)[0])
        first = next(iter(calls))
        rec = dict(case=name, L=L, heads=H, block_kv=bk, mix={str(p): f for p, f in mix.items()},
                   max_diff={side: (outs[first].float() - o.float()).abs().max().item() for side, o in outs.items()},
                   ms=times, best_ms={side: min(t) for side, t in times.items()},
                   vs_first={side: min(times[first]) / min(t) for side, t in times.items()})
        if before:
            rec["after_vs_before"] = {label: min(times[f"{label}@before"]) / min(times[label]) for label in configs}
        print(json.dumps(rec), flush=True)
        records.append(rec)
        del q, k, v, pyr, plan, graphs, outs
        torch.cuda.empty_cache()
    with open(args.out, "w") as fh:
        json.dump(records, fh, indent=1)


if __name__ == "__main__":
    main()
