"""GPU check + benchmark of the experimental Gluon level-1 path against the Triton kernel and cuDNN.

    python benchmarks/bench_gluon.py --out $OUT/gluon_bench.json [--no-long]

Each phase runs in a child process with a time limit (a hung warp-specialized
kernel must not eat the whole device slot): ``check`` (small ragged shapes vs
the PyTorch reference and the Triton kernel), ``time32`` (32k x 12 heads:
dense bk64/bk128, binary 0.10) and ``time110`` (110k x 40 heads: dense,
binary 0.10). bf16, d=128, batch 1, non-causal; CUDA events, L2 flushed, median.
Results (ms, TFLOP/s, ratio vs the fastest SDPA backend and vs the Triton
kernel) go to one JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

# Triton configs pinned per case (the autotuner's picks on H200, results/reference/executor_bench_h200*.json)
TRITON_CFG = {
    "32k_dense_bk64": "BLOCK_M=64,BLOCK_N=64,num_warps=4,num_stages=3,TMA=1",
    "32k_dense_bk128": "BLOCK_M=128,BLOCK_N=128,num_warps=8,num_stages=3,TMA=1",
    "32k_sparse10": "BLOCK_M=64,BLOCK_N=64,num_warps=4,num_stages=3,TMA=1",
    "110k_dense_bk64": "BLOCK_M=128,BLOCK_N=128,num_warps=8,num_stages=3,TMA=1",
    "110k_sparse10": "BLOCK_M=128,BLOCK_N=128,num_warps=8,num_stages=3,TMA=1",
}
GLUON_VARIANTS = [dict(block_n=128, stages=2), dict(block_n=128, stages=3)]


def phase_check():
    import torch

    from bench_executor import qkv  # noqa: PLC0415
    from spbench.kernels.pyramid_gluon import run_plan_gluon
    from spbench.kernels.pyramid_triton import run_plan
    from spbench.kernels.reference import pyramid_attention_reference
    from spbench.plan import Plan

    cases = []
    for bk in (64, 128):
        for bn in (64, 128):
            for stages in (2, 3):
                cases.append(dict(lq=300, lk=333, bk=bk, bn=bn, stages=stages))
    cases += [
        dict(lq=257, lk=640, bk=64, bn=128, stages=2, dtype="float16", d=64, hq=4, hkv=2),
        dict(lq=256, lk=190, bk=128, bn=128, stages=2, epilogue=True, bq=256),
        dict(lq=384, lk=1000, bk=64, bn=128, stages=2, empty=True, dense=True),
        dict(lq=129, lk=4097, bk=64, bn=128, stages=3, dtype="float16"),
    ]
    from spbench.kernels import tuning

    tuning.pin_config("BLOCK_M=64,BLOCK_N=64,num_warps=4,num_stages=3,TMA=0")  # no autotuning in the check
    results = []
    for c in cases:
        t0 = time.time()
        try:
            dtype = getattr(torch, c.get("dtype", "bfloat16"))
            b, hq, hkv, d, bq = 2, c.get("hq", 3), c.get("hkv", 3), c.get("d", 128), c.get("bq", 128)
            q, k, v = qkv(b, hq, hkv, c["lq"], c["lk"], d, dtype, seed=1)
            nq, nk = -(-c["lq"] // bq), -(-c["lk"] // c["bk"])
            g = torch.Generator(device="cuda").manual_seed(2)
            levels = (torch.rand(b, hq, nq, nk, device="cuda", generator=g) < 0.6).long()
            if c.get("dense"):
                levels = torch.ones_like(levels)
            if c.get("empty"):
                levels[:, :, 1] = 0
            extras = {}
            if c.get("epilogue"):
                extras["row_scale"] = torch.rand(b, hq, nq, device="cuda", generator=g) + 0.5
                extras["compensation"] = torch.randn(b, hq, nq, d, device="cuda", generator=g)
            plan = Plan.from_levels(levels, c["lq"], c["lk"], bq, c["bk"], False, extras=extras)
            out, lse = run_plan_gluon(q, k, v, plan, return_lse=True, block_n=c["bn"], stages=c["stages"])
            torch.cuda.synchronize()
            ref, rlse = pyramid_attention_reference(q, k, v, levels, bq, c["bk"], False, row_scale=extras.get("row_scale"),
                                                    compensation=extras.get("compensation"), return_lse=True)
            tri = run_plan(q, k, v, plan)
            err = (out.float() - ref).abs().max().item()
            err_tri = (out.float() - tri.float()).abs().max().item()
            fin = torch.isfinite(rlse)
            same_inf = bool(torch.equal(fin, torch.isfinite(lse)))
            lse_err = (lse[fin] - rlse[fin]).abs().max().item() if fin.any() else 0.0
            tol = 3e-2 if dtype == torch.bfloat16 else 4e-3
            ok = err < tol and lse_err < 1e-2 and same_inf and not out.isnan().any().item()
            results.append(dict(case=c, ok=bool(ok), err=err, err_vs_triton=err_tri, lse_err=lse_err, same_inf=same_inf, secs=round(time.time() - t0, 1)))
        except Exception as exc:  # noqa: BLE001
            results.append(dict(case=c, ok=False, error=f"{type(exc).__name__}: {exc}"[:600], secs=round(time.time() - t0, 1)))
        r = results[-1]
        print(("PASS " if r["ok"] else "FAIL ") + json.dumps(r, default=str)[:400], flush=True)
    return {"correctness": results, "passed": sum(r["ok"] for r in results), "total": len(results)}


def phase_time(long: bool):
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from bench_executor import bench, make_plan, qkv  # noqa: PLC0415
    from spbench.kernels import tuning
    from spbench.kernels.pyramid_gluon import run_plan_gluon
    from spbench.kernels.pyramid_triton import run_plan

    L, H = (110000, 40) if long else (32768, 12)
    tag = "110k" if long else "32k"
    reps = 3 if long else 15
    q, k, v = qkv(1, H, H, L, L, 128, torch.bfloat16)
    full_flops = 4.0 * L * L * 128 * H
    rec: dict = {"shape": dict(L=L, H=H, D=128, dtype="bfloat16", batch=1, causal=False)}

    sd = {}
    for name, be in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
        try:
            with sdpa_kernel([be]):
                sd[name] = bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), reps)[0]
        except Exception as exc:  # noqa: BLE001
            sd[name] = f"unavailable: {str(exc)[:100]}"
    rec["sdpa_ms"] = sd
    base = min(t for t in sd.values() if isinstance(t, float))
    rec["sdpa_best_ms"] = base
    rec["sdpa_tflops"] = full_flops / base / 1e9
    print(f"{tag} sdpa {sd}", flush=True)

    cases = [("dense_bk64", 64, {1: 1.0})] + ([] if long else [("dense_bk128", 128, {1: 1.0})]) + [("sparse10", 64, {1: 0.10})]
    for name, bk, mix in cases:
        plan = make_plan(1, H, L, L, 128, bk, mix)
        flops = full_flops * plan.density
        row = {"density": plan.density}
        tuning.pin_config(TRITON_CFG[f"{tag}_{name}"])
        try:
            tri_out = run_plan(q, k, v, plan)
            t_tri = bench(lambda: run_plan(q, k, v, plan), reps)[0]
        finally:
            tuning.pin_config(None)
        row["triton"] = {"ms": t_tri, "tflops": flops / t_tri / 1e9, "vs_sdpa": base / t_tri, "config": TRITON_CFG[f"{tag}_{name}"]}
        best = None
        for var in GLUON_VARIANTS:
            label = f"gluon_bn{var['block_n']}_s{var['stages']}"
            try:
                out = run_plan_gluon(q, k, v, plan, **var)
                torch.cuda.synchronize()
                err = (out.float() - tri_out.float()).abs().max().item()
                t = bench(lambda: run_plan_gluon(q, k, v, plan, **var), reps)[0]
                row[label] = {"ms": t, "tflops": flops / t / 1e9, "vs_sdpa": base / t, "vs_triton": t_tri / t, "max_err_vs_triton": err}
                if best is None or t < row[best]["ms"]:
                    best = label
            except Exception as exc:  # noqa: BLE001
                row[label] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
            print(f"{tag} {name} {label}: {row[label]}", flush=True)
        row["gluon_best"] = best
        print(f"{tag} {name}: triton {t_tri:.3f} ms ({base / t_tri:.3f}x sdpa); best gluon {best}: "
              f"{row[best]['ms'] if best else float('nan'):.3f} ms" if best else f"{tag} {name}: gluon failed", flush=True)
        rec[name] = row
        del plan
    return rec


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "gluon_bench.json"))
    ap.add_argument("--no-long", action="store_true")
    ap.add_argument("--phase", default="")
    ap.add_argument("--check-timeout", type=float, default=90)
    ap.add_argument("--time-timeout", type=float, default=100)
    args = ap.parse_args()
    if args.phase:
        res = phase_check() if args.phase == "check" else phase_time(args.phase == "time110")
        print("RESULT-JSON " + json.dumps(res, default=str), flush=True)
        return

    import torch
    import triton

    record = {"env": {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "triton": triton.__version__,
                      "cuda": torch.version.cuda, "date": time.strftime("%Y-%m-%d %H:%M:%S")}}

    def save():
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as fh:
            json.dump(record, fh, indent=1, default=str)

    phases = [("check", args.check_timeout), ("time32", args.time_timeout)] + ([] if args.no_long else [("time110", args.time_timeout)])
    for phase, limit in phases:
        t0 = time.time()
        try:
            proc = subprocess.run([sys.executable, __file__, "--phase", phase], capture_output=True, text=True, timeout=limit)
            text, status = proc.stdout + proc.stderr, f"rc={proc.returncode}"
        except subprocess.TimeoutExpired as exc:
            text = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            status = f"timeout after {limit}s"
        print(f"== phase {phase}: {status} in {time.time() - t0:.0f}s", flush=True)
        result = None
        partial = []
        for line in text.splitlines():
            if line.startswith("RESULT-JSON "):
                result = json.loads(line[len("RESULT-JSON "):])
            else:
                print("   " + line[:300], flush=True)
                if line.startswith(("PASS ", "FAIL ")):
                    partial.append(line[:600])
        if result is None and partial:  # timed out part-way: keep what finished
            result = {"partial": partial, "passed": sum(x.startswith("PASS") for x in partial), "total": len(partial)}
        record[phase] = {"status": status, "secs": round(time.time() - t0, 1), "result": result, "log_tail": text[-3000:] if result is None else ""}
        save()
        if phase == "check" and result is not None and result["passed"] == 0:
            print("no Gluon case passed: skipping the timings", flush=True)
            break
    print("saved", args.out)


if __name__ == "__main__":
    main()
