"""GPU correctness check of ``run(..., out=)`` at a mid shape (run before bench_transformers_overhead).

    python3 benchmarks/check_out_inplace.py --seq 8229 --methods xattention,psa,block,rectified,token-sparse

Inputs are strided as a transformers layer passes them (``[B, L, H, D]``
projections viewed as ``[B, H, L, D]``), the length ragged. Per method:

* ``run(q, k, v, plan, out=buf.transpose(1, 2))`` with ``buf`` a NaN-filled
  ``[B, L, H, D]`` tensor stores in place and is bit-identical to ``run``'s
  own freshly allocated output (same kernel, same config);
* for the planned methods, the output matches the plain-PyTorch reference
  (fp32) on the plan's level map, within bf16 tolerance, on a sub-shape
  small enough for the reference.

Exits non-zero on any mismatch.
"""

from __future__ import annotations

import argparse
import sys

import torch

import spbench
from spbench.kernels.reference import pyramid_attention_reference


def strided_qkv(b, length, hq, hkv, d, dtype, device, seed):
    gen = torch.Generator(device=device).manual_seed(seed)

    def make(heads):
        return torch.randn(b, length, heads * d, generator=gen, device=device, dtype=dtype).view(b, length, heads, d).transpose(1, 2)

    return make(hq), make(hkv), make(hkv)


def check(name, args, device) -> list[str]:
    dtype = torch.bfloat16
    q, k, v = strided_qkv(1, args.seq, args.heads, args.kv_heads, args.head_dim, dtype, device, 0)
    m = spbench.get_method(name, budget=args.budget, causal=True)
    plan = m.plan(q, k, v)
    fresh = m.run(q, k, v, plan)
    buf = torch.full((1, args.seq, args.heads, args.head_dim), float("nan"), dtype=dtype, device=device)
    got = m.run(q, k, v, plan, out=buf.transpose(1, 2))
    problems = []
    if got.data_ptr() != buf.data_ptr():
        problems.append("out= not stored in place")
    if not torch.equal(buf.transpose(1, 2), fresh):
        bad = (buf.transpose(1, 2).float() - fresh.float()).abs().nan_to_num(float("inf")).max()
        problems.append(f"out= differs from run(): max |diff| {bad}")
    line = f"{name:<14} L={args.seq} density={plan.density:.3f} writes_out={m.writes_out} in-place bit-identical: {not problems}"
    if name in ("xattention", "psa", "block", "rectified") and plan.extras.get("token_indices") is None:
        # The reference materialises L x L per head: compare the first heads of one KV group on a prefix of query blocks.
        lv = plan.to_levels()
        heads = args.heads // args.kv_heads
        rq = min(args.seq, args.ref_rows)
        nq = -(-rq // plan.block_q)
        qs, ks, vs = q[:, :heads, :rq], k[:, :1, :rq], v[:, :1, :rq]
        extras = plan.extras
        rs = extras.get("row_scale")
        comp = extras.get("compensation")
        ref = pyramid_attention_reference(
            qs.float(), ks.float(), vs.float(), lv[:, :heads, :nq, : -(-rq // plan.block_kv)], plan.block_q, plan.block_kv, True,
            m.softmax_scale(args.head_dim), row_scale=None if rs is None else rs[:, :heads, :nq], compensation=None if comp is None else comp[:, :heads, :nq],
        )
        err = float((buf.transpose(1, 2)[:, :heads, :rq].float() - ref).abs().max())
        line += f"; vs fp32 reference (first {rq} rows, {heads} heads): max |diff| {err:.4f}"
        if not err < 0.05:
            problems.append(f"reference mismatch {err}")
    print(line, flush=True)
    return [f"{name}: {p}" for p in problems]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default="xattention,psa,block,rectified,token-sparse")
    p.add_argument("--seq", type=int, default=8229)
    p.add_argument("--heads", type=int, default=28)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--budget", type=float, default=0.35)
    p.add_argument("--ref-rows", type=int, default=4096, help="query rows compared with the fp32 reference")
    p.add_argument("--device", default="cuda")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    problems = []
    for name in args.methods.split(","):
        problems += check(name.strip(), args, device)
    for line in problems:
        print("FAIL", line)
    print("out= check:", "FAILED" if problems else "all passed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
