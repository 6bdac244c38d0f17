"""How much of an event-timed Gluon executor call is host-side launch work, and how much is fixed per call?
(32k x 12, bf16, d128)

Per case: event timing of run_plan_gluon (L2 flushed) vs a CUDA-graph replay of the same call (no host
work), the kernel's own device time (torch.profiler, median of 5 calls) and the Python time per call.
Near-empty plans (1% of the blocks: one tile per work item) give the per-item fixed cost. The config
follows SPBENCH_GLUON_CONFIG like any call. Run on an sm_90 GPU:
python benchmarks/gluon_host_overhead.py [--cases mix,level8_20] (JSON to $OUT).
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_executor import bench, case_names, make_plan, qkv  # noqa: E402
from spbench.kernels.pool import build_pyramid  # noqa: E402
from spbench.kernels.pyramid_gluon import run_plan_gluon  # noqa: E402
from spbench.timing import flush_l2  # noqa: E402

CASES = {
    "sparse10": {1: 0.1},
    "mix": {1: 0.1, 2: 0.05, 8: 0.2},
    "level8_40": {8: 0.4},
    "level8_20": {8: 0.2},
    "level1_40": {1: 0.4},
    "level1_20": {1: 0.2},
    "level1_1": {1: 0.01},
    "level8_1": {8: 0.01},
}


def graph_of(fn) -> torch.cuda.CUDAGraph:
    """``fn`` captured once (warmed up on the capture stream first)."""
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        fn()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            fn()
    torch.cuda.synchronize()
    return graph


def host_ms_per_call(fn, calls: int = 20) -> float:
    """Python time per call while the GPU queue absorbs the launches."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    ms = (time.perf_counter() - t0) / calls * 1e3
    torch.cuda.synchronize()
    return ms


def kernel_ms(fn, calls: int = 5) -> float:
    """Median device time of the Gluon kernel per call (torch.profiler, L2 flushed first), without launch gaps."""
    times = []
    for _ in range(calls):
        flush_l2(torch.device("cuda"))
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        times.append(sum(e.self_device_time_total for e in prof.key_averages() if "gluon" in e.key) / 1e3)
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma list of {', '.join(CASES)}")
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "host_overhead.json"))
    args = ap.parse_args()
    names = case_names(args.cases, CASES)
    L, H = 32768, 12
    q, k, v = qkv(1, H, H, L, L, 128, torch.bfloat16)
    pyr = build_pyramid(k, v)
    out = []
    for name in names:
        mix = CASES[name]
        plan = make_plan(1, H, L, L, 128, 64, mix)

        def call(plan=plan):
            return run_plan_gluon(q, k, v, plan, pyramid=pyr)

        # both timed by bench: CUDA events, L2 flushed before each run, median of 15
        rec = dict(case=name, event_ms=round(bench(call, 15)[0], 4), graph_ms=round(bench(graph_of(call).replay, 15)[0], 4),
                   kernel_ms=round(kernel_ms(call), 4), config=os.environ.get("SPBENCH_GLUON_CONFIG", "default"),
                   host_ms_per_call=round(host_ms_per_call(call), 4))
        print(json.dumps(rec), flush=True)
        out.append(rec)
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
