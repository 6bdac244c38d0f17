"""GPU check of the scoring kernels against their references, and per-kernel timings with the chosen configs.

    python3 benchmarks/check_scorers.py [--seq 8192] [--bench-seq 32k,110k] [--out scorers.json]

Correctness: psa sampled importance and XAttention antidiagonal scores at
``--seq`` tokens, 4 query heads over 2 KV heads (GQA), causal and not, bf16
(and a ragged length), every autotune candidate of both kernels (psa also
with key interleaves 1, 2, 4), compared with the plain-PyTorch references
(fp32 accumulation there); the fp8 variants (score_dtype=fp8; psa with
per-block and per-row key scales) against the references on the very
values they multiply (the GPU quantizer's output, dequantized), and the GPU quantizer
against its PyTorch reference (share of entries one e4m3 step apart).
Timing: the scorer calls alone at ``--bench-seq`` x 40 heads (video
workload), CUDA events with L2 flushed, next to the fastest dense SDPA, with
the autotune choice and its candidate timings.
"""

from __future__ import annotations

import argparse
import json

import torch

import spbench
from spbench.kernels import score_tuning
from triton.runtime.errors import OutOfResources

from spbench.kernels.fp8_rows import dequantize_rows, quantize_rows, quantize_rows_reference
from spbench.kernels.antidiag import antidiagonal_scores, antidiagonal_scores_reference, tile_configs, tma_ok
from spbench.kernels.psa_score import FP8_KEY_SCALES, psa_importance, psa_importance_reference, rowmax_configs, sample_offsets
from spbench.parsing import parse_seq
from spbench.timing import time_fn
from spbench.workloads import make_qkv


def _err(fn, want) -> float | str:
    """Max abs error of ``fn()`` against ``want``, or why the config cannot run here."""
    try:
        return float((fn() - want).abs().max())
    except OutOfResources as exc:  # the autotune skips such a config too
        return f"skipped: {exc}"[:120]


def check(seq: int, kernels: str = "psa,xattn,quantize") -> list[dict]:
    rows = []
    gen = torch.Generator(device="cuda").manual_seed(0)
    for lq in (seq, seq - 37):
        q = (torch.randn(1, 4, lq, 128, device="cuda", generator=gen) * 1.5).bfloat16()
        k = (torch.randn(1, 2, lq, 128, device="cuda", generator=gen) * 1.5).bfloat16()
        q_off, k_off = sample_offsets(4, 128, 32, 0, 1), sample_offsets(4, 64, 16, 0, 2)
        for causal in (False, True):
            if "psa" in kernels:
                want = psa_importance_reference(q, k, q_off, k_off, 128, 64, causal)
                for cfg in rowmax_configs(q.device, 128, 16):
                    err = _err(lambda cfg=cfg: psa_importance(q, k, q_off, k_off, 128, 64, causal, config=cfg), want)
                    rows.append(dict(kernel="psa", lq=lq, causal=causal, config=score_tuning.label(cfg), max_err=err))
                for key_scale in FP8_KEY_SCALES:  # the reference quantizes the gathered rows with the GPU quantizer
                    want = psa_importance_reference(q, k, q_off, k_off, 128, 64, causal, fp8=True, fp8_key_scale=key_scale)
                    for cfg in rowmax_configs(q.device, 128, 16, fp8=True):
                        err = _err(lambda cfg=cfg: psa_importance(q, k, q_off, k_off, 128, 64, causal, config=cfg, fp8=True, fp8_key_scale=key_scale), want)
                        rows.append(dict(kernel=f"psa_fp8_{key_scale}", lq=lq, causal=causal, config=score_tuning.label(cfg), max_err=err))
                cfg = rowmax_configs(q.device, 128, 16)[0]
                for group in (1, 2, 4):  # other key interleaves (the default is 8), one config
                    want = psa_importance_reference(q, k, q_off, k_off, 128, 64, causal)
                    err = _err(lambda group=group: psa_importance(q, k, q_off, k_off, 128, 64, causal, config=cfg, interleave=group), want)
                    rows.append(dict(kernel=f"psa_interleave{group}", lq=lq, causal=causal, config=score_tuning.label(cfg), max_err=err))
            if "xattn" in kernels:
                for stride in (8, 16):
                    want = antidiagonal_scores_reference(q, k, stride, 128, 128, causal)
                    for cfg in tile_configs(q.device, 128 // stride, tma=tma_ok(q, k, stride)):
                        err = _err(lambda cfg=cfg: antidiagonal_scores(q, k, stride, 128, 128, causal, config=cfg), want)
                        rows.append(dict(kernel=f"xattn{stride}", lq=lq, causal=causal, config=score_tuning.label(cfg), max_err=err))
                    q8, k8 = dequantize_rows(*quantize_rows(q, stride), lq), dequantize_rows(*quantize_rows(k, stride), lq)
                    want = antidiagonal_scores_reference(q8, k8, stride, 128, 128, causal)
                    for cfg in tile_configs(q.device, 128 // stride, tma=True, fp8=True):  # the fp8 copies are padded and contiguous
                        err = _err(lambda cfg=cfg: antidiagonal_scores(q, k, stride, 128, 128, causal, config=cfg, fp8=True), want)
                        rows.append(dict(kernel=f"xattn{stride}_fp8", lq=lq, causal=causal, config=score_tuning.label(cfg), max_err=err))
        if "quantize" in kernels:
            for group in (1, 8, 16):
                y, s = quantize_rows(q, group)
                y_ref, s_ref = quantize_rows_reference(q, group)
                rows.append(dict(kernel=f"quantize_rows_g{group}", lq=lq, scale_max_rel_err=float(((s - s_ref).abs() / s_ref.clamp(min=1e-30)).max()),
                                 share_differing=float((y.float() != y_ref.float()).float().mean()),
                                 max_step_ratio=float(((y.float() - y_ref.float()).abs() / (y_ref.float().abs() / 8 + 2.0**-9)).max())))
    return rows


def bench(seq: int, heads: int = 40) -> dict:
    q, k, v = make_qkv("video", 1, heads, heads, seq, 128, dtype=torch.bfloat16, device="cuda")
    dense = min(time_fn(lambda m=spbench.get_method(n): m(q, k, v), q.device, repeats=3, warmup=1).median_ms for n in ("cudnn", "flash"))
    q_off, k_off = sample_offsets(heads, 128, 32, 0, 1), sample_offsets(heads, 64, 16, 0, 2)
    out = {"seq": seq, "heads": heads, "dense_ms": dense}
    calls = {
        "psa": lambda: psa_importance(q, k, q_off, k_off, 128, 64, False),
        "xattn8": lambda: antidiagonal_scores(q, k, 8, 128, 128, False),
        "xattn16": lambda: antidiagonal_scores(q, k, 16, 128, 128, False),
        "psa_fp8": lambda: psa_importance(q, k, q_off, k_off, 128, 64, False, fp8=True),
        "psa_fp8_rowscale": lambda: psa_importance(q, k, q_off, k_off, 128, 64, False, fp8=True, fp8_key_scale="row"),
        "psa_fp8_blockmajor": lambda: psa_importance(q, k, q_off, k_off, 128, 64, False, fp8=True, fp8_key_scale="row", interleave=1),
        "psa_blockmajor": lambda: psa_importance(q, k, q_off, k_off, 128, 64, False, interleave=1),
        "xattn8_fp8": lambda: antidiagonal_scores(q, k, 8, 128, 128, False, fp8=True),
        "xattn16_fp8": lambda: antidiagonal_scores(q, k, 16, 128, 128, False, fp8=True),
        "quantize_q_g8": lambda: quantize_rows(q, 8),
    }
    for name, fn in calls.items():
        out[name + "_ms"] = time_fn(fn, q.device, repeats=5, warmup=2).median_ms
        print(f"seq {seq}: {name} scorer {out[name + '_ms']:.2f} ms = {100 * out[name + '_ms'] / dense:.2f}% of dense {dense:.1f} ms", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", default="8192")
    ap.add_argument("--bench-seq", default="32k,110k")
    ap.add_argument("--kernels", default="psa,xattn,quantize", help="which checks to run (comma list)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    report = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    report["check"] = check(parse_seq(args.seq), args.kernels)
    worst = max(r["max_err"] for r in report["check"] if isinstance(r.get("max_err"), float))
    for r in report["check"]:
        if "max_err" in r:
            print(f"check {r['kernel']:12s} lq={r['lq']} causal={r['causal']!s:5s} {r['config']:62s} max_err {r['max_err']}")
        else:
            print(f"check {r['kernel']:12s} lq={r['lq']} " + " ".join(f"{k}={v:.3g}" for k, v in r.items() if isinstance(v, float)))
    print(f"worst max abs error vs reference: {worst:.2e}", flush=True)
    report["bench"] = [bench(parse_seq(s)) for s in args.bench_seq.split(",") if s]
    report["tuning"] = score_tuning.scorer_configs()
    for key, val in report["tuning"].items():
        print(f"tuned {key}: {val['config']}  {val['timings_ms']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
