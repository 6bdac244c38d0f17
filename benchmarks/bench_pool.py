"""Same-process timing of the K/V pooling pass (``build_pyramid``): this checkout's kernel, its launch
variants, and optionally an older ``kernels/pool.py``, against a plain device copy of the same bytes.

    git show REV:kernels/pool.py > benchmarks/baselines/pool_REV.py
    python benchmarks/bench_pool.py [--before benchmarks/baselines/pool_REV.py] [--configs "g8w8=8,8;g16w8=16,8"]

Per case (bf16, d=128, batch 1; ``mix`` = the pooled levels the pyramid mix 1:0.10,2:0.05,8:0.20 needs,
``all`` = 2, 4, 8): each side is a CUDA-graph replay (no host work; L2 flushed, median), the sides
alternating for ``--rounds`` rounds. Bytes = K and V read once + the pooled levels written; GB/s against
``copy`` (K and V copied: the same read plus an equal write), the bandwidth this GPU reaches on a stream.
An older pool.py builds every level (its sides are ``before``). JSON lines to --out.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_executor import bench, case_names, labelled_sides  # noqa: E402
from gluon_host_overhead import graph_of  # noqa: E402
from spbench.kernels import pool  # noqa: E402
from spbench.kernels.reference import pool_kv  # noqa: E402

CASES = {  # name: (L, heads, pooled levels)
    "mix32k": (32000, 12, (2, 8)),
    "all32k": (32000, 12, (2, 4, 8)),
    "all110": (110000, 40, (2, 4, 8)),
}


def load_pool(path: str):
    spec = importlib.util.spec_from_file_location("pool_before", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclass looks its module up there
    spec.loader.exec_module(mod)
    return mod


def with_config(groups: int, warps: int, fn):
    """``fn`` run with the pool kernel's groups per program and warps pinned."""

    def run():
        saved = pool.POOL_GROUPS, pool.POOL_WARPS
        pool.POOL_GROUPS, pool.POOL_WARPS = groups, warps
        try:
            return fn()
        finally:
            pool.POOL_GROUPS, pool.POOL_WARPS = saved

    return run


def parse_configs(text: str) -> dict[str, tuple[int, int]]:
    usage = "label=groups,warps (e.g. g8w8=8,8)"
    configs = {}
    for label, value in labelled_sides(text, usage):
        groups, _, warps = value.partition(",")
        if not groups.strip().isdigit() or not warps.strip().isdigit():
            sys.exit(f"--configs side {label}={value}: expected {usage}")
        configs[label] = (int(groups), int(warps))
    return configs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", help="an older kernels/pool.py (made with git show)")
    ap.add_argument("--configs", default="", help="';'-separated label=groups,warps sides of this checkout's kernel")
    ap.add_argument("--cases", default="mix32k,all32k,all110")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "bench_pool.json"))
    args = ap.parse_args()
    names = case_names(args.cases, CASES)
    if args.before and not os.path.isfile(args.before):
        sys.exit(f"no such file: {args.before}")
    configs = parse_configs(args.configs)
    if not torch.cuda.is_available():
        sys.exit("bench_pool needs a CUDA GPU")
    before = load_pool(args.before) if args.before else None
    with open(args.out, "a") as out:
        for name in names:
            rec = run_case(name, configs, before, args.rounds)
            print(json.dumps(rec), flush=True)
            out.write(json.dumps(rec) + "\n")


def run_case(name: str, configs: dict[str, tuple[int, int]], before, rounds: int) -> dict:
    length, heads, levels = CASES[name]
    g = torch.Generator(device="cuda").manual_seed(0)
    k, v = (torch.randn(1, heads, length, 128, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
    ck, cv = torch.empty_like(k), torch.empty_like(v)
    calls = {"copy": lambda: (ck.copy_(k), cv.copy_(v)), "default": lambda: pool.build_pyramid(k, v, levels)}
    for label, (groups, warps) in configs.items():
        calls[label] = with_config(groups, warps, lambda: pool.build_pyramid(k, v, levels))
    if before:
        calls["before"] = lambda: before.build_pyramid(k, v)
    ref = pool.build_pyramid(k, v)
    for p in (2, 4, 8):  # this checkout's kernel against the PyTorch pooling (fp32 sums, rounded once)
        torch.testing.assert_close(ref.k[p].float(), pool_kv(k.float(), p)[0], atol=1e-6, rtol=2**-7)
        torch.testing.assert_close(ref.v[p].float(), pool_kv(v.float(), p)[0], atol=1e-6, rtol=2**-7)
    for side, fn in calls.items():  # every pooling side gives the same pooled rows
        if side != "copy":
            pyr = fn()
            assert all(torch.equal(pyr.k[p], ref.k[p]) and torch.equal(pyr.v[p], ref.v[p]) for p in levels), side
    graphs = {side: graph_of(fn) for side, fn in calls.items()}
    times = {side: [] for side in calls}
    for _ in range(rounds):
        for side, graph in graphs.items():
            times[side].append(bench(graph.replay, 15)[0])
    read = 2 * k.numel() * k.element_size()
    written = {side: read if side == "copy" else sum(2 * ref.k[p].numel() * k.element_size()
                                                      for p in ((2, 4, 8) if side == "before" else levels))
               for side in calls}
    best = {side: min(t) for side, t in times.items()}
    copy_rate = 2 * read / best["copy"]
    return {"case": name, "L": length, "heads": heads, "levels": list(levels), "ms": times, "best_ms": best,
            "gb_per_s": {side: (read + written[side]) / best[side] / 1e6 for side in calls},
            "vs_copy_bandwidth": {side: (read + written[side]) / best[side] / copy_rate for side in calls},
            "gpu": torch.cuda.get_device_name()}

if __name__ == "__main__":
    main()
