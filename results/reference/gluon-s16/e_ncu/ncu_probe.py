"""Two Gluon calls for ncu: 40% of the blocks at level 1, then at level 8 (32k x 12, block_kv 64)."""
import sys, os
sys.path.insert(0, "benchmarks")
import torch
from bench_executor import make_plan, qkv
from spbench.kernels.pool import build_pyramid
from spbench.kernels.pyramid_gluon import run_plan_gluon
L, H = 32768, 12
q, k, v = qkv(1, H, H, L, L, 128, torch.bfloat16)
pyr = build_pyramid(k, v)
for p in (1, 8):
    plan = make_plan(1, H, L, L, 128, 64, {p: 0.4})
    run_plan_gluon(q, k, v, plan, pyramid=pyr)  # warm (compile)
    torch.cuda.synchronize()
    run_plan_gluon(q, k, v, plan, pyramid=pyr)  # profiled
    torch.cuda.synchronize()
print("done")
