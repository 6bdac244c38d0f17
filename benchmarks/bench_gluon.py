"""GPU check + benchmark of the Gluon path (spbench.kernels.pyramid_gluon) against the Triton kernel and cuDNN.

    python benchmarks/bench_gluon.py --out $OUT/gluon_bench.json [--no-long] [--phases prep,time32,time110]

Each phase runs in a child process with a time limit (a hung warp-specialized
kernel must not eat the whole device slot): ``prep`` (in parallel worker
processes: small ragged shapes vs the PyTorch reference and the Triton
kernel, ``run_plan``'s kernel dispatch, and compiling every timed variant
at a small shape into Triton's cache), ``time32`` (32k x 12 heads:
dense bk64/bk128, binary 0.10, the pyramid mix 1:0.10,2:0.05,8:0.20 with
the pyramid prebuilt, a per-level cost table at 40% of the blocks and the
marginal cost of a level-p block, 40% minus 20%, which cancels per-call constants) and
``time110`` (110k x 40 heads: dense, binary 0.10); ``levels`` (not in the default phases) is only the level-cost
table with run_plan_gluon's own config at block_kv 64 and 128. bf16, d=128, batch 1, non-causal; CUDA events, L2 flushed, median.
Results (ms, TFLOP/s, ratio vs the fastest SDPA backend and vs the Triton
kernel) go to one JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import statistics
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

# Triton configs pinned per case (the autotuner's picks on H200, results/reference/executor_bench_h200*.json)
TRITON_CFG = {
    "32k_dense_bk64": "BLOCK_M=64,BLOCK_N=64,num_warps=4,num_stages=2,TMA=1",
    "32k_dense_bk128": "BLOCK_M=128,BLOCK_N=128,num_warps=8,num_stages=2,TMA=1",
    "32k_sparse10": "BLOCK_M=64,BLOCK_N=64,num_warps=4,num_stages=2,TMA=1",
    "32k_psa_mix": "BLOCK_M=64,BLOCK_N=64,num_warps=4,num_stages=2,TMA=1",
    "32k_level": "BLOCK_M=128,BLOCK_N=64,num_warps=8,num_stages=2,TMA=1",
    "110k_dense_bk64": "BLOCK_M=128,BLOCK_N=128,num_warps=8,num_stages=2,TMA=1",
    "110k_sparse10": "BLOCK_M=128,BLOCK_N=128,num_warps=8,num_stages=2,TMA=1",
}
# 3 stages only with 64-row tiles (128-row ones fit in 224 KB of shared memory but measured no faster; refused);
# Q in registers (q_regs) only with 64-row tiles: with 128-row tiles the consumer spills (sm_90 compile)
GLUON_VARIANTS = [dict(block_n=bn, stages=st, persistent=pers, q_regs=qr)
                  for bn, st, qr in ((128, 2, False), (64, 2, False), (64, 3, False), (64, 2, True), (64, 3, True)) for pers in (False, True)]
PSA_MIX = {1: 0.10, 2: 0.05, 8: 0.20}


def variant_label(var: dict) -> str:
    return f"gluon_bn{var['block_n']}_s{var['stages']}" + ("_qregs" if var.get("q_regs") else "") + ("_persistent" if var["persistent"] else "")


def check_cases():
    cases = []
    for bk in (64, 128):
        for bn in (64, 128):
            cases.append(dict(lq=300, lk=333, bk=bk, bn=bn, stages=2))
    cases += [
        dict(lq=257, lk=640, bk=64, bn=128, stages=2, dtype="float16", d=64, hq=4, hkv=2),
        dict(lq=256, lk=190, bk=128, bn=128, stages=2, epilogue=True, bq=256),
        dict(lq=384, lk=1000, bk=64, bn=128, stages=2, empty=True, dense=True),
        dict(lq=129, lk=4097, bk=64, bn=128, stages=2, dtype="float16"),
        dict(lq=300, lk=333, bk=64, bn=128, stages=2, pooled=True),
        dict(lq=300, lk=1001, bk=128, bn=128, stages=2, pooled=True, hq=4, hkv=2),
        dict(lq=257, lk=517, bk=128, bn=64, stages=2, pooled=True, dtype="float16", d=64, empty=True),
        dict(lq=256, lk=700, bk=64, bn=64, stages=2, pooled=True, epilogue=True, bq=256),
        dict(lq=1000, lk=2049, bk=64, bn=128, stages=2, pooled=True, hq=2, hkv=2),
        # persistent grids of a few programs, each looping over many work items
        dict(lq=1000, lk=2049, bk=64, bn=64, stages=2, pooled=True, hq=2, hkv=2, programs=3),
        dict(lq=257, lk=517, bk=128, bn=128, stages=2, pooled=True, dtype="float16", d=64, empty=True, programs=2),
        dict(lq=256, lk=700, bk=64, bn=64, stages=2, pooled=True, epilogue=True, bq=256, programs=5),
        dict(lq=384, lk=1000, bk=64, bn=128, stages=2, empty=True, dense=True, programs=1),
    ]
    cases += [dict(c, stages=3) for c in cases if c["bn"] == 64]  # 3 stages: 64-row tiles only
    return cases + [dict(c, q_regs=True) for c in cases]


def run_case(c):
    """One GPU correctness case: the Gluon path vs the PyTorch reference (and the Triton kernel)."""
    import torch

    from bench_executor import qkv  # noqa: PLC0415
    from spbench.kernels import pyramid_gluon, tuning
    from spbench.kernels.pyramid_gluon import run_plan_gluon
    from spbench.kernels.pyramid_triton import run_plan
    from spbench.kernels.reference import pyramid_attention_reference
    from spbench.plan import Plan

    tuning.pin_config("BLOCK_M=64,BLOCK_N=64,num_warps=4,num_stages=2,TMA=0")  # no autotuning in the check
    t0 = time.time()
    try:
        dtype = getattr(torch, c.get("dtype", "bfloat16"))
        b, hq, hkv, d, bq = 2, c.get("hq", 3), c.get("hkv", 3), c.get("d", 128), c.get("bq", 128)
        q, k, v = qkv(b, hq, hkv, c["lq"], c["lk"], d, dtype, seed=1)
        nq, nk = -(-c["lq"] // bq), -(-c["lk"] // c["bk"])
        g = torch.Generator(device="cuda").manual_seed(2)
        levels = (torch.rand(b, hq, nq, nk, device="cuda", generator=g) < 0.6).long()
        if c.get("pooled"):
            levels = levels * torch.tensor([1, 2, 4, 8], device="cuda")[torch.randint(0, 4, levels.shape, device="cuda", generator=g)]
        if c.get("dense"):
            levels = torch.ones_like(levels)
        if c.get("empty"):
            levels[:, :, 1] = 0
        extras = {}
        if c.get("epilogue"):
            extras["row_scale"] = torch.rand(b, hq, nq, device="cuda", generator=g) + 0.5
            extras["compensation"] = torch.randn(b, hq, nq, d, device="cuda", generator=g)
        plan = Plan.from_levels(levels, c["lq"], c["lk"], bq, c["bk"], False, extras=extras)
        if c.get("programs"):
            pyramid_gluon._sm_count = lambda device: c["programs"]  # a small persistent grid (this worker's process only)
        out, lse = run_plan_gluon(q, k, v, plan, return_lse=True, block_n=c["bn"], stages=c["stages"], persistent=bool(c.get("programs")),
                                  q_regs=c.get("q_regs", False))
        torch.cuda.synchronize()
        ref, rlse = pyramid_attention_reference(q, k, v, levels, bq, c["bk"], False, row_scale=extras.get("row_scale"),
                                                compensation=extras.get("compensation"), return_lse=True)
        tri = run_plan(q, k, v, plan, kernel="triton")
        err = (out.float() - ref).abs().max().item()
        err_tri = (out.float() - tri.float()).abs().max().item()
        fin = torch.isfinite(rlse)
        same_inf = bool(torch.equal(fin, torch.isfinite(lse)))
        lse_err = (lse[fin] - rlse[fin]).abs().max().item() if fin.any() else 0.0
        tol = 3e-2 if dtype == torch.bfloat16 else 4e-3
        ok = err < tol and lse_err < 1e-2 and same_inf and not out.isnan().any().item()
        return dict(case=c, ok=bool(ok), err=err, err_vs_triton=err_tri, lse_err=lse_err, same_inf=same_inf, secs=round(time.time() - t0, 1))
    except Exception as exc:  # noqa: BLE001
        return dict(case=c, ok=False, error=f"{type(exc).__name__}: {exc}"[:600], secs=round(time.time() - t0, 1))


def run_dispatch():
    """run_plan's kernel switch on sm_90: auto picks Gluon for its set, Triton for the rest; a strided out."""
    import torch

    from bench_executor import qkv  # noqa: PLC0415
    from spbench.kernels import tuning
    from spbench.kernels.pyramid_triton import run_plan
    from spbench.plan import Plan

    t0 = time.time()
    try:
        q, k, v = qkv(1, 2, 2, 500, 500, 128, torch.bfloat16, seed=3)
        g = torch.Generator(device="cuda").manual_seed(4)
        lv = (torch.rand(1, 2, 4, 8, device="cuda", generator=g) < 0.6).long() * 2
        lv[..., 0] = 1
        plan = Plan.from_levels(lv, 500, 500, 128, 64, False)
        tuning.pin_config("BLOCK_M=64,BLOCK_N=64,num_warps=4,num_stages=2,TMA=0")
        tri = run_plan(q, k, v, plan, kernel="triton")
        k_tri = tuning.chosen_config()["kernel"]
        auto = run_plan(q, k, v, plan)
        k_auto = tuning.chosen_config()["kernel"]
        out = torch.empty(1, 500, 2, 128, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
        run_plan(q, k, v, plan, out=out, kernel="gluon")
        causal = Plan.from_levels(lv, 500, 500, 128, 64, True)
        run_plan(q, k, v, causal)
        k_causal = tuning.chosen_config()["kernel"]
        err = max((auto.float() - tri.float()).abs().max().item(), (out.float() - tri.float()).abs().max().item())
        ok = k_tri == "triton" and k_auto == "gluon" and k_causal == "triton" and err < 3e-2
        return dict(case="dispatch", ok=ok, kernels=[k_tri, k_auto, k_causal], err=err, secs=round(time.time() - t0, 1))
    except Exception as exc:  # noqa: BLE001
        return dict(case="dispatch", ok=False, error=f"{type(exc).__name__}: {exc}"[:600], secs=round(time.time() - t0, 1))


def warm(spec):
    """Compile one timed variant at a small shape (same specialisation) into Triton's disk cache."""
    import torch

    from bench_executor import make_plan, qkv  # noqa: PLC0415
    from spbench.kernels import tuning
    from spbench.kernels.pool import build_pyramid
    from spbench.kernels.pyramid_gluon import run_plan_gluon
    from spbench.kernels.pyramid_triton import run_plan

    t0 = time.time()
    try:
        q, k, v = qkv(1, 2, 2, 2048, 2048, 128, torch.bfloat16)
        plan = make_plan(1, 2, 2048, 2048, 128, spec["bk"], {int(p): f for p, f in spec["mix"].items()})
        pyr = build_pyramid(k, v)
        if spec["kind"] == "triton":
            tuning.pin_config(spec["cfg"])
            run_plan(q, k, v, plan, pyramid=pyr, kernel="triton")
        else:
            run_plan_gluon(q, k, v, plan, pyramid=pyr, block_n=spec["bn"], stages=spec["stages"], q_regs=spec["q_regs"])
        torch.cuda.synchronize()
        return dict(case=spec, ok=True, warm=True, secs=round(time.time() - t0, 1))
    except Exception as exc:  # noqa: BLE001
        return dict(case=spec, ok=False, warm=True, error=f"{type(exc).__name__}: {exc}"[:600], secs=round(time.time() - t0, 1))


def warm_specs():
    # one compile per (tile height, stages, q_regs): the persistent flag only changes the grid
    compiled = sorted({(var["block_n"], var["stages"], var["q_regs"]) for var in GLUON_VARIANTS})
    mixes = [(64, {1: 1.0}), (128, {1: 1.0}), (64, {1: 0.1}), (64, PSA_MIX)] + [(64, {p: 0.4}) for p in (2, 4, 8)]
    specs = [dict(kind="gluon", bk=bk, mix=mix, bn=bn, stages=st, q_regs=qr) for bk, mix in mixes for bn, st, qr in compiled]
    for name, cfg in TRITON_CFG.items():
        bk = 128 if "bk128" in name else 64
        mixes = {"psa_mix": [PSA_MIX], "level": [{p: 0.4} for p in (1, 2, 4, 8)]}
        for mix in next((m for key, m in mixes.items() if key in name), [{1: 1.0}]):
            specs.append(dict(kind="triton", bk=bk, mix=mix, cfg=cfg))
    return specs


def _job(task):
    import torch

    torch.cuda.set_device(0)
    kind, payload = task
    return {"check": run_case, "dispatch": lambda _: run_dispatch(), "warm": warm}[kind](payload)


def phase_prep(workers: int):
    """Correctness cases, the dispatch check and compile warm-up, in parallel worker processes."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    tasks = [("check", c) for c in check_cases()] + [("dispatch", None)] + [("warm", s) for s in warm_specs()]
    results = []
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_job, t) for t in tasks]
        for fut in as_completed(futures):
            r = fut.result()
            results.append(r)
            print(("PASS " if r["ok"] else "FAIL ") + json.dumps(r, default=str)[:400], flush=True)
    checks = [r for r in results if not r.get("warm")]
    return {"correctness": checks, "passed": sum(r["ok"] for r in checks), "total": len(checks),
            "warm_failed": [r for r in results if r.get("warm") and not r["ok"]]}


def phase_time(long: bool):
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from bench_executor import bench, make_plan, qkv  # noqa: PLC0415
    from spbench.kernels import tuning
    from spbench.kernels.pool import build_pyramid
    from spbench.kernels.pyramid_gluon import run_plan_gluon
    from spbench.kernels.pyramid_triton import run_plan

    L, H = (110000, 40) if long else (32768, 12)
    tag = "110k" if long else "32k"
    reps = 3 if long else 15
    q, k, v = qkv(1, H, H, L, L, 128, torch.bfloat16)
    full_flops = 4.0 * L * L * 128 * H
    rec: dict = {"shape": dict(L=L, H=H, D=128, dtype="bfloat16", batch=1, causal=False)}

    sd = {}
    backends = (("cudnn", SDPBackend.CUDNN_ATTENTION),) + (() if long else (("flash", SDPBackend.FLASH_ATTENTION),))
    for name, be in backends:
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

    pyr = None if long else build_pyramid(k, v)
    cases = [("dense_bk64", 64, {1: 1.0})] + ([] if long else [("dense_bk128", 128, {1: 1.0})]) + [("sparse10", 64, {1: 0.10})]
    if not long:
        cases.append(("psa_mix", 64, PSA_MIX))
    for name, bk, mix in cases:
        plan = make_plan(1, H, L, L, 128, bk, mix)
        flops = full_flops * plan.density  # density: area-weighted (a level-p block counts 1/p)
        row = {"density": plan.density}
        tuning.pin_config(TRITON_CFG[f"{tag}_{name}"])
        try:
            tri_out = run_plan(q, k, v, plan, pyramid=pyr, kernel="triton")
            t_tri = bench(lambda: run_plan(q, k, v, plan, pyramid=pyr, kernel="triton"), reps)[0]
        finally:
            tuning.pin_config(None)
        row["triton"] = {"ms": t_tri, "tflops": flops / t_tri / 1e9, "vs_sdpa": base / t_tri, "config": TRITON_CFG[f"{tag}_{name}"]}
        best = None
        for var in GLUON_VARIANTS:
            label = variant_label(var)
            try:
                out = run_plan_gluon(q, k, v, plan, pyramid=pyr, **var)
                torch.cuda.synchronize()
                err = (out.float() - tri_out.float()).abs().max().item()
                t = bench(lambda: run_plan_gluon(q, k, v, plan, pyramid=pyr, **var), reps)[0]
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
    if not long:
        rec.update(level_costs(q, k, v, pyr, H, L, reps, bks=(64,), variants=GLUON_VARIANTS))
    return rec


def level_costs(q, k, v, pyr, H, L, reps, bks=(64, 128), variants=(), rounds=5):
    """The cost of a level-p block relative to a level-1 block, x p (1.0 = proportional; the issue's bound is 1.3).

    Whole calls: 40% of each row's blocks at one level, pyramid prebuilt (``level_cost_bk{bk}``; Triton kernel,
    run_plan_gluon's own config and each of ``variants``). Marginal: time at 40% minus time at 20% of the blocks,
    per block, run_plan_gluon's own config (``level_marginal_cost_bk{bk}``); the per-call constants (launch,
    per-item prologue and epilogue) cancel. The Gluon calls are replayed from CUDA graphs: timed as plain calls,
    the host's launch work lands inside the short pooled calls (session 16 on the H200: level 8 at bk64 read
    2.1 that way, 1.26-1.40 replayed). They are timed in ``rounds`` rounds that visit every level in turn, and
    each level's median is used: the clocks drop under sustained load, so a call timed first (session 16: level
    1, 4.0 ms in its first round, 4.5 ms after) would set the scale from another clock than the rest.
    Kernel time only; the Triton column stays a plain call, timed once.
    """
    from bench_executor import bench, make_plan  # noqa: PLC0415
    from gluon_host_overhead import graph_of  # noqa: PLC0415

    from spbench.kernels import tuning  # noqa: PLC0415
    from spbench.kernels.pyramid_gluon import run_plan_gluon  # noqa: PLC0415
    from spbench.kernels.pyramid_triton import run_plan  # noqa: PLC0415

    rec = {}
    for bk in bks:
        plans = {(p, f): make_plan(1, H, L, L, 128, bk, {p: f}) for p in (1, 2, 4, 8) for f in (0.4, 0.2)}
        cost = {"triton_config": TRITON_CFG["32k_level"], "rounds": rounds}
        for p in (1, 2, 4, 8):
            tuning.pin_config(TRITON_CFG["32k_level"])
            try:
                cost[p] = {"triton_ms": bench(lambda: run_plan(q, k, v, plans[p, 0.4], pyramid=pyr, kernel="triton"), reps)[0]}
            finally:
                tuning.pin_config(None)
        sides = {(p, f, "gluon_auto"): {} for p, f in plans}
        sides.update({(p, 0.4, variant_label(var)): var for p in (1, 2, 4, 8) for var in variants})
        graphs = {key: graph_of(lambda plan=plans[key[:2]], var=var: run_plan_gluon(q, k, v, plan, pyramid=pyr, **var))
                  for key, var in sides.items()}
        times = {key: [] for key in graphs}
        for _ in range(rounds):
            for key, g in graphs.items():
                times[key].append(bench(g.replay, reps)[0])
        med = {key: statistics.median(t) for key, t in times.items()}
        slope = {}
        for (p, f, label), t in times.items():
            if f == 0.4:
                cost[p][label + "_ms"] = med[p, f, label]
                cost[p][label + "_ms_rounds"] = t
        for p in (1, 2, 4, 8):
            ms_40, ms_20 = med[p, 0.4, "gluon_auto"], med[p, 0.2, "gluon_auto"]
            slope[p] = {"ms_20": ms_20, "ms_40": ms_40, "ms_per_1pct": (ms_40 - ms_20) / 20, "ms_20_rounds": times[p, 0.2, "gluon_auto"]}
        for p in (1, 2, 4, 8):
            for key in [x for x in cost[p] if x.endswith("_ms")]:
                cost[p][key[:-3] + "_x_p"] = cost[p][key] / cost[1][key] * p
            slope[p]["x_p"] = slope[p]["ms_per_1pct"] / slope[1]["ms_per_1pct"] * p
        rec[f"level_cost_bk{bk}"] = cost
        rec[f"level_marginal_cost_bk{bk}"] = slope
        print(f"L={L} bk={bk} level cost x p (whole call, gluon auto, median of {rounds} rounds): "
              + ", ".join(f"p{p} {cost[p]['gluon_auto_x_p']:.3f}" for p in (1, 2, 4, 8))
              + "; marginal: " + ", ".join(f"p{p} {slope[p]['x_p']:.3f}" for p in (1, 2, 4, 8)) + " [target <= 1.3]", flush=True)
    return rec


def phase_levels():
    """Only the level-cost table, run_plan_gluon's own config, block_kv 64 and 128, at 32k x 12 (bf16, d128)."""
    from bench_executor import qkv  # noqa: PLC0415

    from spbench.kernels.pool import build_pyramid  # noqa: PLC0415

    import torch  # noqa: PLC0415

    L, H = 32768, 12
    q, k, v = qkv(1, H, H, L, L, 128, torch.bfloat16)
    rec = {"shape": dict(L=L, H=H, D=128, dtype="bfloat16", batch=1, causal=False)}
    rec.update(level_costs(q, k, v, build_pyramid(k, v), H, L, 15))
    return rec


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "gluon_bench.json"))
    ap.add_argument("--no-long", action="store_true")
    ap.add_argument("--phase", default="")
    ap.add_argument("--phases", default="prep,time32,time110")
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--check-timeout", type=float, default=90)
    ap.add_argument("--time-timeout", type=float, default=100)
    args = ap.parse_args()
    if args.phase:
        run = {"prep": lambda: phase_prep(args.workers), "levels": phase_levels}.get(args.phase, lambda: phase_time(args.phase == "time110"))
        res = run()
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

    wanted = [p for p in args.phases.split(",") if p and not (args.no_long and p == "time110")]
    phases = [(p, args.check_timeout if p == "prep" else args.time_timeout) for p in wanted]
    for phase, limit in phases:
        t0 = time.time()
        try:
            proc = subprocess.run([sys.executable, __file__, "--phase", phase, "--workers", str(args.workers)], capture_output=True, text=True,
                                  timeout=limit)
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
        if phase == "prep" and result is not None and result["passed"] == 0:
            print("no Gluon case passed: skipping the timings", flush=True)
            break
    print("saved", args.out)


if __name__ == "__main__":
    main()
