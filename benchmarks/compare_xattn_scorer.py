"""xattention's plan time with variants of the antidiagonal scorer, timed in one process (issue 4).

    python3 benchmarks/compare_xattn_scorer.py --seq 110k --before benchmarks/baselines/antidiag_56e1afe.py --out xattn_scorer.json
    python3 benchmarks/compare_xattn_scorer.py --device cpu --seq 4096 --heads 2 --repeats 1 --rounds 1 --check-seq 0   # smoke test

The planner (``xattention``, video workload, bf16, d=128, ``--budget``,
its defaults: stride 8, block_q = block_kv = 128) runs with its
``antidiagonal_scores`` swapped for each variant:

* ``before``: ``antidiagonal_scores`` of the module file ``--before``, an
  older kernels/antidiag.py (``git show REV:kernels/antidiag.py >
  benchmarks/baselines/antidiag_REV.py``; that folder is git-ignored, carry
  it to the GPU machine): 49f9ad6 is the kernel before the key interleave,
  56e1afe the one before the edge-tile epilogue;
* ``blockmajor``: this checkout with ``interleave=1`` (block-major keys,
  the new one-exp2 epilogue);
* ``after``: this checkout's defaults (fp8: keys interleaved in groups of
  8 KV blocks inside the e4m3 copy; input dtype: K as is, = blockmajor);
* ``il8``: this checkout with ``interleave=8`` (at input dtype: a permuted
  bf16 copy of K first);

at ``score_dtype`` fp8 and input (``--cells`` picks, default
``before/fp8,after/fp8,before/input,after/input,il8/input``, the before
cells only with ``--before``); what is measured per cell and how:
:mod:`scorer_variants` (blocks that differ are counted against the first
cell of the same dtype: ``before`` when it runs).

``--check-seq N`` (default 4056: a multiple of the stride, not of the
blocks, so TMA applies and the last tiles are partial) first checks every
GPU autotune candidate of this checkout against the PyTorch reference,
causal, GQA (4 query heads on 2 KV heads): ``--check timed`` (default)
the variants timed here at block_kv 128 (fp8 at the default interleave,
the input dtype at interleave 1 and 8); ``--check all`` adds block_kv 64
and fp8 at interleave 1 (about twice the compiles).
"""

from __future__ import annotations

import argparse
import functools
import os

import torch

import spbench.methods.xattention as xattn_method
from scorer_variants import dense_baseline, header, load_function, time_cells, write
from spbench.errors import SpbenchError
from spbench.kernels import antidiag, score_tuning
from spbench.kernels.fp8_rows import dequantize_rows, quantize_rows
from spbench.parsing import parse_seq
from spbench.workloads import make_qkv

DEFAULT_CELLS = "before/fp8,after/fp8,before/input,after/input,il8/input"


def variants(before: str | None) -> dict:
    out = {}
    if before:
        out["before"] = load_function(before, "antidiagonal_scores")
    out["blockmajor"] = functools.partial(antidiag.antidiagonal_scores, interleave=1)
    out["after"] = antidiag.antidiagonal_scores
    out["il8"] = functools.partial(antidiag.antidiagonal_scores, interleave=8)
    return out


def check_candidates(seq: int, scope: str = "timed", device: str = "cuda") -> list[dict]:
    """Every GPU autotune candidate (causal) against the reference: max abs error per (dtype, interleave, config)."""
    rows = []
    gen = torch.Generator(device=device).manual_seed(0)
    q = (torch.randn(1, 4, seq, 128, device=device, generator=gen) * 1.5).bfloat16()
    k = (torch.randn(1, 2, seq, 128, device=device, generator=gen) * 1.5).bfloat16()
    stride = 8
    for bk in (128, 64) if scope == "all" else (128,):
        cpb = bk // stride
        want = antidiag.antidiagonal_scores_reference(q, k, stride, 128, bk, True)
        qd, kd = dequantize_rows(*quantize_rows(q, stride), seq), dequantize_rows(*quantize_rows(k, stride), seq)
        want8 = antidiag.antidiagonal_scores_reference(qd, kd, stride, 128, bk, True)
        for fp8, interleaves, ref in ((True, (None, 1) if scope == "all" else (None,), want8), (False, (1, 8), want)):
            for interleave in interleaves:
                for cfg in antidiag.tile_configs(q.device, cpb, tma=True, fp8=fp8):
                    try:
                        got = antidiag.antidiagonal_scores(q, k, stride, 128, bk, True, config=cfg, fp8=fp8, interleave=interleave)
                        err = float((got - ref).abs().max())
                    except Exception as exc:  # noqa: BLE001 - e.g. out of shared memory: the autotune skips it too
                        err = f"{type(exc).__name__}: {exc}"[:120]
                    rows.append(dict(dtype="fp8" if fp8 else "input", block_kv=bk, interleave=interleave, config=score_tuning.label(cfg), max_err=err))
                    print(f"check {rows[-1]}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", default="110k")
    ap.add_argument("--heads", type=int, default=40)
    ap.add_argument("--budget", type=float, default=0.1)
    ap.add_argument("--before", default=None, help="path of an older kernels/antidiag.py to time as 'before'")
    ap.add_argument("--cells", default=None, help=f"variant/score_dtype labels to time (default {DEFAULT_CELLS}, the before cells only with --before)")
    ap.add_argument("--check-seq", type=int, default=4056, help="sequence of the candidate check (0: skip)")
    ap.add_argument("--check", choices=("timed", "all"), default="timed", help="which candidates the check runs (see above)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    fns = variants(args.before)
    labels = args.cells.split(",") if args.cells else [c for c in DEFAULT_CELLS.split(",") if args.before or not c.startswith("before/")]
    unknown = [label for label in labels if label.split("/")[0] not in fns]
    if unknown:
        raise SpbenchError(f"unknown cells {unknown}: variants are {sorted(fns)} (before needs --before)")
    device = torch.device(args.device)
    record = header("compare_xattn_scorer.py", args)
    if args.check_seq and (device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"):
        record["check"] = check_candidates(args.check_seq, args.check, args.device)
        bad = [r for r in record["check"] if not isinstance(r["max_err"], float) or r["max_err"] > 1e-3]
        record["check_failures"] = bad
        print(f"candidate check: {len(record['check'])} runs, {len(bad)} over 1e-3 or failed", flush=True)
    seq = parse_seq(args.seq)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q, k, v = make_qkv("video", 1, args.heads, args.heads, seq, 128, dtype=dtype, device=device)
    dense_name, dense_ms = dense_baseline(q, k, v)
    print(f"seq {seq} x {args.heads} heads: dense {dense_name} {dense_ms:.2f} ms", flush=True)
    record.update(
        workload=f"video, {str(dtype).removeprefix('torch.')}, B=1, {args.heads} heads (q = kv), d=128, seq {seq}, xattention budget {args.budget} (defaults: stride 8, block_q = block_kv = 128)",
        dense_backend=dense_name, dense_ms=round(dense_ms, 3), cells={},
    )
    cells = [(label, fns[label.split("/")[0]]) for label in labels]
    time_cells(record, q, k, v, "xattention", args.budget, xattn_method, "antidiagonal_scores", cells, args.repeats, args.rounds, args.top)
    write(record, args.out)


if __name__ == "__main__":
    try:
        main()
    except SpbenchError as exc:
        raise SystemExit(f"error: {exc}") from None
