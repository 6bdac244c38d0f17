"""GPU check: Plan.from_levels through the Triton row kernels equals the torch path on real psa plans.

    python3 benchmarks/check_plan_csr.py --seq 32k,110k --heads 40

For each length and budget: a psa plan of the video workload (its CSR built
by ``kernels/plan_csr.py``), then ``Plan.from_levels`` of the same levels
through the torch ops; prints OK / MISMATCH for the CSR and the density
(exit status 1 on any mismatch).
"""

from __future__ import annotations

import argparse
import sys

import torch

from spbench import plan as plan_mod
from spbench.methods.psa import PSA
from spbench.plan import Plan
from spbench.parsing import parse_seq
from spbench.workloads import make_qkv


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", default="32k,110k")
    ap.add_argument("--heads", type=int, default=40)
    ap.add_argument("--budgets", default="0.1,0.2")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    ok = True
    for seq in (parse_seq(t) for t in args.seq.split(",")):
        q, k, v = make_qkv("video", 1, args.heads, args.heads, seq, 128, dtype=torch.bfloat16, device=args.device)
        for budget in map(float, args.budgets.split(",")):
            fast = PSA(budget=budget).plan(q, k, v)
            want = fast.to_levels()
            saved = plan_mod._row_kernels
            plan_mod._row_kernels = lambda t: False
            try:
                slow = Plan.from_levels(want, seq, seq, 128, 64, False)
            finally:
                plan_mod._row_kernels = saved
            same_csr = all(torch.equal(a, b) for a, b in ((fast.kv_num_blocks, slow.kv_num_blocks), (fast.kv_indices, slow.kv_indices), (fast.kv_levels, slow.kv_levels)))
            same_density = fast.density == slow.density
            good = same_csr and same_density
            ok &= good
            print(f"seq={seq} heads={args.heads} budget={budget}: csr {'OK' if same_csr else 'MISMATCH'}, density {fast.density:.6f} vs {slow.density:.6f} {'OK' if same_density else 'MISMATCH'}")
            del want, fast, slow
            torch.cuda.empty_cache() if q.is_cuda else None
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
