"""Plan-time benchmark of the block, xattention and psa planners against dense attention.

    python benchmarks/bench_planners.py                       # 110k tokens x 40 heads x d128, bf16, H100
    python benchmarks/bench_planners.py --seq 32k --out results/planners.json
    python benchmarks/bench_planners.py --device cpu --seq 2048 --heads 2 --repeats 1   # smoke test

For each planner configuration it reports plan() time (CUDA events, L2
flushed, median of --repeats), the time of its scoring step alone, the
measured density, and plan time as a share of the fastest dense SDPA
backend's time on the same inputs (the target is <= 5%).
"""

from __future__ import annotations

import argparse
import json

import torch

import spbench
from spbench.parsing import parse_seq
from spbench.timing import time_fn
from spbench.workloads import make_qkv

CONFIGS = [
    ("block", {}),
    ("block", {"budget": 0.15}),
    ("xattention", {}),
    ("xattention", {"budget": 0.15}),
    ("xattention", {"stride": 16}),
    ("psa", {}),
    ("psa", {"budget": 0.15}),
    ("psa", {"mode": "topk"}),
    ("psa", {"variant": "understanding"}),
]


def scoring_step(method, q, k):
    """The method's scoring call alone (what the Triton scorers do)."""
    if method.name == "block":
        from spbench.methods import _select as sel

        visible = sel.block_visibility(q.shape[2], k.shape[2], method.params["block_q"], method.params["block_kv"], method.causal, q.device)
        return lambda: method.block_scores(q, k, visible)
    if method.name == "xattention":
        return lambda: method.scores(q, k)
    return lambda: method.importance(q, k)


def dense_ms(q, k, v, repeats):
    best = None
    for name in ("cudnn", "flash", "efficient", "dense"):
        m = spbench.get_method(name)
        try:
            t = time_fn(lambda m=m: m(q, k, v), q.device, repeats=repeats, warmup=1).median_ms
        except Exception as exc:  # noqa: BLE001 - a backend unavailable for this input
            print(f"dense {name}: unavailable ({type(exc).__name__})")
            continue
        if best is None or t < best[1]:
            best = (name, t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", default="110k")
    ap.add_argument("--heads", type=int, default=40)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--workload", default="video")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    seq = parse_seq(args.seq)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    q, k, v = make_qkv(args.workload, 1, args.heads, args.heads, seq, args.head_dim, dtype=dtype, device=args.device)
    dense = dense_ms(q, k, v, args.repeats) if args.device.startswith("cuda") else None
    rows = []
    print(f"seq={seq} heads={args.heads} d={args.head_dim} {dtype} causal={args.causal}; dense: {dense}")
    for name, knobs in CONFIGS:
        m = spbench.get_method(name, causal=args.causal, **knobs)
        plan_t = time_fn(lambda m=m: m.plan(q, k, v), q.device, repeats=args.repeats, warmup=1).median_ms
        score_t = time_fn(scoring_step(m, q, k), q.device, repeats=args.repeats, warmup=1).median_ms
        density = m.plan(q, k, v).density
        share = plan_t / dense[1] if dense else None
        rows.append(dict(method=name, knobs=knobs, plan_ms=plan_t, score_ms=score_t, density=density, plan_over_dense=share))
        pct = f"{100 * share:5.1f}%" if share is not None else "   - "
        print(f"{name:11s} {json.dumps(knobs):28s} plan {plan_t:9.2f} ms  score {score_t:9.2f} ms  density {density:.3f}  plan/dense {pct}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"seq": seq, "heads": args.heads, "head_dim": args.head_dim, "dense": dense, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
