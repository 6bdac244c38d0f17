"""How much of an event-timed Gluon executor call is host-side launch work? (32k x 12, bf16, d128)

Event timing of run_plan_gluon (L2 flushed) vs a CUDA-graph replay of the same call (no host work)
and the Python time per call; run on an sm_90 GPU: python benchmarks/gluon_host_overhead.py (JSON to $OUT).
"""
import json, os, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
from spbench.kernels.pyramid_gluon import run_plan_gluon
from spbench.kernels.pool import build_pyramid
from bench_executor import make_plan, qkv, bench

L, H = 32768, 12
q, k, v = qkv(1, H, H, L, L, 128, torch.bfloat16)
pyr = build_pyramid(k, v)
flush = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32, device="cuda")
out = []
for name, mix in (("sparse10", {1: 0.1}), ("mix", {1: 0.1, 2: 0.05, 8: 0.2}), ("level8_40", {8: 0.4}), ("level1_40", {1: 0.4})):
    plan = make_plan(1, H, L, L, 128, 64, mix)
    fn = lambda: run_plan_gluon(q, k, v, plan, pyramid=pyr)
    t_event = bench(fn, 15)[0]
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(20):
        fn()
    t_host = (time.perf_counter() - t0) / 20 * 1e3
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        fn(); torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, stream=s):
            fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(15):
        flush.zero_()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); g.replay(); b.record(); torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    t_graph = sorted(times)[len(times) // 2]
    rec = dict(case=name, event_ms=round(t_event, 4), graph_ms=round(t_graph, 4), host_ms_per_call=round(t_host, 4))
    print(json.dumps(rec), flush=True)
    out.append(rec)
json.dump(out, open(os.path.join(os.environ.get("OUT", "."), "host_overhead.json"), "w"), indent=1)
