"""psa's plan time with variants of the sampled-importance scorer, timed in one process (issue 4).

    python3 benchmarks/compare_psa_scorer.py --seq 110k --before /path/to/old/psa_score.py --out psa_scorer.json
    python3 benchmarks/compare_psa_scorer.py --device cpu --seq 4096 --heads 2 --repeats 1   # smoke test

The planner (``psa``, video workload, bf16, d=128, ``--budget``) runs with its
``psa_importance`` swapped for each variant:

* ``before``: ``psa_importance`` of the module file given by ``--before``
  (e.g. ``git show <commit>:kernels/psa_score.py``), if given;
* ``rowscale``: this checkout, sample-major keys, fp8 scale per key row;
* ``blockmajor``: this checkout, ``interleave=1`` (block-major keys), per-row key scales;
* ``after``: this checkout's defaults (sample-major keys, fp8 scale per KV block);

each at ``score_dtype`` fp8 and input (bf16 products); what is measured per
cell and how: :mod:`scorer_variants`.
"""

from __future__ import annotations

import argparse
import functools

import torch

import spbench.methods.psa as psa_method
from scorer_variants import dense_baseline, header, load_function, time_cells, write
from spbench.kernels import psa_score
from spbench.parsing import parse_seq
from spbench.workloads import make_qkv


def variants(before: str | None) -> dict:
    out = {}
    if before:
        out["before"] = load_function(before, "psa_importance")
    out["blockmajor"] = functools.partial(psa_score.psa_importance, interleave=1, fp8_key_scale="row")
    out["rowscale"] = functools.partial(psa_score.psa_importance, fp8_key_scale="row")
    out["after"] = psa_score.psa_importance
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", default="110k")
    ap.add_argument("--heads", type=int, default=40)
    ap.add_argument("--budget", type=float, default=0.1)
    ap.add_argument("--before", default=None, help="path of an older kernels/psa_score.py to time as 'before'")
    ap.add_argument("--dtypes", default="fp8,input", help="score_dtype values to time")
    ap.add_argument("--cells", default=None, help="variant/dtype labels to time (default: every variant at every dtype)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    seq = parse_seq(args.seq)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q, k, v = make_qkv("video", 1, args.heads, args.heads, seq, 128, dtype=dtype, device=device)
    dense_name, dense_ms = dense_baseline(q, k, v)
    print(f"seq {seq} x {args.heads} heads: dense {dense_name} {dense_ms:.2f} ms", flush=True)
    record = header("compare_psa_scorer.py", args)
    record.update(
        workload=f"video, {str(dtype).removeprefix('torch.')}, B=1, {args.heads} heads (q = kv), d=128, seq {seq}, psa budget {args.budget}",
        dense_backend=dense_name, dense_ms=round(dense_ms, 3), cells={},
    )
    fns = variants(args.before)
    wanted = args.cells.split(",") if args.cells else None
    cells = [(f"{name}/{score_dtype}", fn) for score_dtype in args.dtypes.split(",") for name, fn in fns.items()]
    cells = [(label, fn) for label, fn in cells if wanted is None or label in wanted]
    time_cells(record, q, k, v, "psa", args.budget, psa_method, "psa_importance", cells, args.repeats, args.rounds, args.top)
    write(record, args.out)


if __name__ == "__main__":
    main()
