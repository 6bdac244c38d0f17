"""GPU check: the fused rectified planner (kernels/rect_plan.py) against the torch planner.

    python3 benchmarks/check_rect_plan.py --seq 4096,32k --heads 40

For each (sequence, causal, budget) on the video workload (bf16, d128) it
plans with ``executor=triton`` (fused) and ``executor=torch`` and prints the
share of (row, KV block) entries whose critical flag differs, the largest
differences of the epilogue terms, and both densities. Last-bit differences
of fp32 sums may flip near-tied blocks, so the mismatch share is reported,
not asserted to be zero; exits 1 if it exceeds ``--max-mismatch``.
"""

from __future__ import annotations

import argparse
import sys

import torch

import spbench
from spbench.parsing import parse_seq
from spbench.workloads import make_qkv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", default="4096,32k")
    ap.add_argument("--heads", type=int, default=40)
    ap.add_argument("--budgets", default="0.05,0.2")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--max-mismatch", type=float, default=1e-3)
    args = ap.parse_args()
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    worst = 0.0
    for seq_text in args.seq.split(","):
        seq = parse_seq(seq_text)
        q, k, v = make_qkv("video", 1, args.heads, args.heads, seq, 128, dtype=dtype, device=args.device)
        for causal in (False, True):
            for budget in [float(b) for b in args.budgets.split(",")] + [None]:
                kw = dict(causal=causal) if budget is None else dict(budget=budget, causal=causal)
                fused = spbench.get_method("rectified", executor="triton", **kw)
                ref = spbench.get_method("rectified", executor="torch", **kw)
                got, want = fused.plan(q, k, v), ref.plan(q, k, v)
                mismatch = float((got.to_levels() != want.to_levels()).double().mean())
                worst = max(worst, mismatch)
                d_rs = float((got.extras["row_scale"] - want.extras["row_scale"]).abs().max())
                d_comp = float((got.extras["compensation"] - want.extras["compensation"]).abs().max())
                print(f"seq={seq} causal={causal!s:5} budget={budget}: level mismatch {mismatch:.2e}  |d row_scale| {d_rs:.1e}  "
                      f"|d comp| {d_comp:.1e}  density fused {got.density:.5f} torch {want.density:.5f}", flush=True)
        del q, k, v
    print(f"worst mismatch share {worst:.2e}")
    sys.exit(0 if worst <= args.max_mismatch else 1)


if __name__ == "__main__":
    main()
