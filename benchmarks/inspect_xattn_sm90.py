"""Static sm_90 compile inspection of xattention's ``_tile_lse`` (no GPU needed).

    .venv/bin/python benchmarks/inspect_xattn_sm90.py                      # this checkout
    .venv/bin/python benchmarks/inspect_xattn_sm90.py --module benchmarks.baselines.antidiag_49f9ad6
    (an older version, made with git show 49f9ad6:kernels/antidiag.py > benchmarks/baselines/antidiag_49f9ad6.py)

Compiles the kernel for every GPU autotune candidate at d=128, stride 8,
block_kv 128 (xattention's defaults; --block-kv 64 for 8 columns per block), bf16 and fp8 operands, and prints
registers, spills (STACK), shared memory, PTX butterfly shuffles and the
SASS instruction / SHFL / MUFU counts. The interleave ``G`` constexpr is
passed when the kernel has one (fp8: the default interleave; bf16: 1).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]  # --module may name a file under benchmarks/ (run from the repo root)
from sm90_compile import sm90_resources  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--module", default="spbench.kernels.antidiag")
    ap.add_argument("--causal", type=int, default=0)
    ap.add_argument("--block-kv", type=int, default=128)
    ap.add_argument("--stride", type=int, default=8)
    ap.add_argument("--dump", default="", help="path prefix: write each config's TTGIR / PTX / SASS to {dump}_{dtype}_{i}.{ext}")
    ap.add_argument("--only", default="", help="comma-separated candidate indices to compile (default: all)")
    args = ap.parse_args()
    mod = importlib.import_module(args.module)
    fn = mod._tile_lse
    d, stride, cpb = 128, args.stride, args.block_kv // args.stride
    rows = []
    for fp8 in (False, True):
        elem = "fp8e4nv" if fp8 else "bf16"
        configs = []
        cands = mod.gpu_candidates(fp8)
        if args.only:
            cands = [cands[int(i)] for i in args.only.split(",") if int(i) < len(cands)]
        for bm, bn, warps, stages, flat, *tma in cands:
            consts = dict(STRIDE=stride, D=d, BLOCK_M=bm, CPB=cpb, KPT=bn // cpb, CAUSAL=bool(args.causal), DOT_F32=False, FLAT=flat, TMA=tma[0] if tma else 0, FP8=fp8)
            if "G" in fn.arg_names:
                consts["G"] = mod.key_interleave(cpb, [dict(BLOCK_N=c[1]) for c in cands]) if fp8 else 1
            descs = {"QD": f"tensordesc<{elem}[{bm}, {d}]>", "KD": f"tensordesc<{elem}[{bn}, {d}]>"} if tma else {"QD": f"*{elem}", "KD": f"*{elem}"}
            descs.update(Q=f"*{elem}", K=f"*{elem}")
            configs.append({"constexprs": consts, "options": {"num_warps": warps, "num_stages": stages}, "pointers": descs})
        res = sm90_resources(
            args.module, "_tile_lse", configs, {"LSE": "*fp32", "ROW_LSE": "*fp32", "QSC": "*fp32", "KSC": "*fp32"},
            div16=("sqb", "sqh", "sql", "skb", "skh", "skl", "ld"), ones=("sqd", "skd"), floats=("qk_scale",), sass=True,
            dump=f"{args.dump}_{elem}" if args.dump else "",
        )
        for cand, r in zip(cands, res):
            row = dict(dtype=elem, config=list(cand), **r)
            rows.append(row)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
