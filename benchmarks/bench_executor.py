"""Standalone GPU benchmark of the pyramid executor (spbench.kernels.pyramid_triton).

    python benchmarks/bench_executor.py --out results/executor.json [--quick] [--no-long]

Phases:
0. compile every kernel variant the benchmark uses in parallel worker
   processes (Triton's on-disk cache then serves the timed process);
1. correctness on the GPU against the plain-PyTorch reference (small
   ragged shapes: every block_q/block_kv, all levels, causal, GQA, fp16/bf16/
   fp32, d 64/128, epilogue, lse, empty rows), also in the workers;
2. timings (bf16, d=128, batch 1, non-causal unless noted), CUDA events,
   L2 flushed before each repeat, median of N, in one process:
   SDPA pinned to cuDNN / flash / efficient (the fastest is the baseline),
   the executor in dense mode (all level 1), binary sparse at density 0.10,
   the PSA-style mix 1:0.10,2:0.05,8:0.20, and a per-level cost table.
A compact table is printed at the end and every figure goes to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import sys
import time
import traceback

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def bootstrap():
    """Make ``spbench.kernels`` / ``spbench.methods`` importable from a plain checkout.

    An installed spbench maps kernels/ and methods/ into the package; without
    an install (or when it failed) map them here, so the script runs from
    the repository root either way.
    """
    import importlib
    import importlib.util

    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    try:
        importlib.import_module("spbench.kernels")
        return
    except ModuleNotFoundError:
        pass
    import spbench

    for sub in ("kernels", "methods", "suites"):
        name = f"spbench.{sub}"
        if name in sys.modules or not os.path.isdir(os.path.join(ROOT, sub)):
            continue
        spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, sub, "__init__.py"), submodule_search_locations=[os.path.join(ROOT, sub)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        setattr(spbench, sub, module)
        spec.loader.exec_module(module)


bootstrap()
DEV = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: --smoke under TRITON_INTERPRET=1 only
SMOKE = {"on": False}


# --------------------------------------------------------------------------- helpers
def make_plan(b, h, lq, lk, bq, bk, mix, causal=False, seed=0, device=DEV, spread="random"):
    from spbench.kernels.schedule import schedule_for
    from spbench.methods.levels import random_level_map
    from spbench.plan import Plan

    levels = random_level_map(b, h, lq, lk, bq, bk, mix, causal, seed, device, spread)
    plan = Plan.from_levels(levels, lq, lk, bq, bk, causal)
    schedule_for(plan)
    return plan


def qkv(b, hq, hkv, lq, lk, d, dtype, seed=0):
    g = torch.Generator(device=DEV).manual_seed(seed)
    q = torch.randn(b, hq, lq, d, device=DEV, dtype=dtype, generator=g)
    k = torch.randn(b, hkv, lk, d, device=DEV, dtype=dtype, generator=g)
    v = torch.randn(b, hkv, lk, d, device=DEV, dtype=dtype, generator=g)
    return q, k, v


_FLUSH = None


def bench(fn, reps=10, warmup=1):
    """Median ms over ``reps`` runs, L2 flushed (256 MB write) before each."""
    global _FLUSH
    if DEV != "cuda":
        t0 = time.perf_counter()
        fn()
        ms = (time.perf_counter() - t0) * 1e3
        return ms, ms, ms
    if _FLUSH is None:
        _FLUSH = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32, device=DEV)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        _FLUSH.zero_()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    times.sort()
    return times[len(times) // 2], times[0], times[-1]


def case_names(text: str, known) -> list[str]:
    """The comma-separated case names of a ``--cases`` argument; exits with a one-line message on an unknown one."""
    names = [c for c in text.split(",") if c]
    unknown = sorted(set(names) - set(known))
    if unknown:
        sys.exit(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return names


def labelled_sides(text: str, usage: str) -> list[tuple[str, str]]:
    """The ``label=value`` sides of a ';'-separated ``--configs`` argument; exits with a one-line message on a
    side without '=' (``usage`` shows the expected form)."""
    sides = []
    for side in filter(None, (x.strip() for x in text.split(";"))):
        label, sep, value = side.partition("=")
        if not sep:
            sys.exit(f"--configs side {side!r}: expected {usage}")
        sides.append((label.strip(), value))
    return sides


def cfg_of(text):
    from spbench.kernels import tuning

    return tuning.parse_config(text)


# --------------------------------------------------------------------------- correctness
def correctness_cases():
    cases = []
    cfgs = [
        "BLOCK_M=64,BLOCK_N=64,num_warps=4,num_stages=3,TMA=0",
        "BLOCK_M=64,BLOCK_N=32,num_warps=4,num_stages=2,TMA=1",
        "BLOCK_M=64,BLOCK_N=128,num_warps=4,num_stages=2,TMA=1",
        "BLOCK_M=64,BLOCK_N=64,num_warps=4,num_stages=3,TMA=1",
    ]
    i = 0
    for bq in (64, 128):
        for bk in (32, 64, 128):
            for causal in (False, True):
                cfg = cfgs[i % len(cfgs)]
                if bq == 128 and i % 3 == 0:
                    cfg = cfg.replace("BLOCK_M=64", "BLOCK_M=128").replace("num_warps=4", "num_warps=8")
                cases.append(dict(b=2, hq=4, hkv=2, lq=300, lk=333, d=128, dtype="bfloat16", bq=bq, bk=bk, causal=causal, cfg=cfg))
                i += 1
    for causal in (False, True):
        cases.append(dict(b=1, hq=3, hkv=1, lq=257, lk=190, d=64, dtype="float16", bq=64, bk=32, causal=causal, cfg=cfgs[i % 4]))
        cases.append(dict(b=1, hq=2, hkv=2, lq=150, lk=270, d=64, dtype="float32", bq=128, bk=64, causal=causal, cfg=cfgs[(i + 1) % 4]))
        cases.append(dict(b=2, hq=2, hkv=1, lq=200, lk=211, d=128, dtype="float16", bq=128, bk=128, causal=causal, cfg=cfgs[(i + 2) % 4], epilogue=True))
        i += 3
    cases.append(dict(b=1, hq=2, hkv=2, lq=256, lk=256, d=128, dtype="bfloat16", bq=128, bk=64, causal=False, cfg=cfgs[0], empty=True))
    cases.append(dict(b=1, hq=2, hkv=2, lq=512, lk=512, d=128, dtype="bfloat16", bq=128, bk=64, causal=True, cfg=cfgs[2], dense=True))
    # more than 32767 KV blocks: int32 block indices (GPU only: too big for the interpreter)
    if DEV == "cuda":
        cases.append(dict(b=1, hq=1, hkv=1, lq=64, lk=1_050_000, d=64, dtype="bfloat16", bq=64, bk=32, causal=False, cfg=cfgs[0]))
    return cases


def run_correctness(case):
    from spbench.kernels import tuning
    from spbench.kernels.pyramid_triton import run_plan
    from spbench.kernels.reference import pyramid_attention_reference
    from spbench.plan import Plan

    t0 = time.time()
    try:
        tuning.pin_config(case["cfg"])
        dtype = getattr(torch, case["dtype"])
        q, k, v = qkv(case["b"], case["hq"], case["hkv"], case["lq"], case["lk"], case["d"], dtype, seed=1)
        nq, nk = -(-case["lq"] // case["bq"]), -(-case["lk"] // case["bk"])
        g = torch.Generator(device=DEV).manual_seed(2)
        levels = torch.tensor([0, 1, 2, 4, 8], device=DEV)[torch.randint(0, 5, (case["b"], case["hq"], nq, nk), device=DEV, generator=g)]
        if case.get("empty"):
            levels[:, :, 0] = 0  # a query block with no active KV block
        if case.get("dense"):
            levels = torch.ones_like(levels)
        extras = {}
        if case.get("epilogue"):
            extras["row_scale"] = torch.rand(case["b"], case["hq"], nq, device=DEV, generator=g) + 0.5
            extras["compensation"] = torch.randn(case["b"], case["hq"], nq, case["d"], device=DEV, generator=g)
        plan = Plan.from_levels(levels, case["lq"], case["lk"], case["bq"], case["bk"], case["causal"], extras=extras)
        out, lse = run_plan(q, k, v, plan, return_lse=True)
        ref, rlse = pyramid_attention_reference(q, k, v, levels, case["bq"], case["bk"], case["causal"],
                                                row_scale=extras.get("row_scale"), compensation=extras.get("compensation"), return_lse=True)
        err = (out.float() - ref).abs().max().item()
        fin = torch.isfinite(rlse)
        same_inf = bool(torch.equal(fin, torch.isfinite(lse)))
        lse_err = (lse[fin] - rlse[fin]).abs().max().item() if fin.any() else 0.0
        tol = {"float32": 2e-4, "float16": 4e-3, "bfloat16": 3e-2}[case["dtype"]]
        ok = err < tol and lse_err < tol and same_inf and not out.isnan().any().item()
        if case.get("dense"):
            sd = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=case["causal"])
            err_sdpa = (out.float() - sd.float()).abs().max().item()
            ok = ok and err_sdpa < tol
        return dict(case=case, ok=bool(ok), err=err, lse_err=lse_err, same_inf=same_inf, secs=round(time.time() - t0, 1))
    except Exception as exc:  # noqa: BLE001
        return dict(case=case, ok=False, error=f"{type(exc).__name__}: {exc}"[:400], secs=round(time.time() - t0, 1))


# --------------------------------------------------------------------------- warm-up compile
def warm_variant(spec):  # noqa: D401
    """Run one (plan kind, config) at a small shape so Triton compiles it into the disk cache."""
    from spbench.kernels import tuning
    from spbench.kernels.pyramid_triton import run_plan

    t0 = time.time()
    try:
        tuning.pin_config(spec["cfg"])
        n = 2048 if DEV == "cuda" else 256
        q, k, v = qkv(1, 2, 2, n, n, spec["d"], torch.bfloat16)
        plan = make_plan(1, 2, n, n, spec["bq"], spec["bk"], spec["mix"], spec.get("causal", False))
        run_plan(q, k, v, plan)
        if DEV == "cuda":
            torch.cuda.synchronize()
        return dict(spec=spec, ok=True, secs=round(time.time() - t0, 1))
    except Exception as exc:  # noqa: BLE001
        return dict(spec=spec, ok=False, error=f"{type(exc).__name__}: {exc}"[:600], secs=round(time.time() - t0, 1))


def worker(task):
    kind, payload = task
    if DEV == "cuda":
        torch.cuda.set_device(0)
    return run_correctness(payload) if kind == "check" else warm_variant(payload)


# --------------------------------------------------------------------------- main
PSA_MIX = {1: 0.10, 2: 0.05, 8: 0.20}
# one fixed config for the per-level cost table (ratios at equal config)
LEVEL_COST_CFG = "BLOCK_M=128,BLOCK_N=64,num_warps=8,num_stages=3,TMA=1"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "executor_bench.json"))
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--no-long", "--quick", action="store_true", help="skip the 110k x 40 heads cases")
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--budget-s", type=float, default=270, help="skip the 110k cases when this much time is spent")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, few configs (CPU under TRITON_INTERPRET=1)")
    ap.add_argument("--extra", default="", help="more configs to time next to the autotune candidates, ';'-separated")
    ap.add_argument("--level-cfg", default="", help="a second config for the per-level cost table")
    args = ap.parse_args()

    import triton
    from spbench.kernels import tuning

    cands = [c.label() for c in tuning.candidates(128, 128)]
    cands += [cfg_of(x).label() for x in args.extra.split(";") if x.strip() and cfg_of(x).label() not in cands]
    level_cfgs = [LEVEL_COST_CFG] + ([args.level_cfg] if args.level_cfg else [])
    if args.smoke:
        SMOKE["on"] = True
        cands = cands[:2]
        args.no_long = True

    record = {
        "env": {
            "gpu": torch.cuda.get_device_name(0) if DEV == "cuda" else "cpu (interpreter)", "torch": torch.__version__, "triton": triton.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        },
        "candidates": cands, "correctness": [], "warm": [], "timings": {}, "autotuned": {},
    }

    def save():
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as fh:
            json.dump(record, fh, indent=1, default=str)

    t_start = time.time()
    # Phase 0+1 in worker processes: correctness, and compile every variant timed below.
    tasks = []
    if not args.no_check:
        tasks += [("check", c) for c in correctness_cases()]
    for cfg in cands:
        for bk in (64, 128):
            tasks.append(("warm", dict(d=128, bq=128, bk=bk, mix={1: 1.0}, cfg=cfg)))
        tasks.append(("warm", dict(d=128, bq=128, bk=64, mix=PSA_MIX, cfg=cfg)))
    for cfg in cands[:2]:
        tasks.append(("warm", dict(d=128, bq=128, bk=64, mix={1: 1.0}, cfg=cfg, causal=True)))
    for bk in (32, 64, 128):
        for p in (1, 2, 4, 8):
            for lcfg in level_cfgs:
                tasks.append(("warm", dict(d=128, bq=128, bk=bk, mix={p: 0.4}, cfg=lcfg)))
    ctx = mp.get_context("spawn")
    from concurrent.futures import ProcessPoolExecutor, as_completed

    try:
        with ProcessPoolExecutor(args.workers, mp_context=ctx) as pool:
            futures = [pool.submit(worker, t) for t in tasks]
            for fut in as_completed(futures):
                res = fut.result()
                if "case" in res:
                    record["correctness"].append(res)
                    c = res["case"]
                    tag = f"bq={c['bq']} bk={c['bk']} causal={c['causal']} {c['dtype']} d={c['d']} lk={c['lk']} cfg={c['cfg']}"
                    print(("PASS " if res["ok"] else "FAIL ") + tag + f" err={res.get('err')} lse={res.get('lse_err')} {res.get('error', '')}", flush=True)
                else:
                    record["warm"].append(res)
                    if not res["ok"]:
                        print("COMPILE-FAIL", res["spec"], res["error"][:300], flush=True)
    except Exception as exc:  # noqa: BLE001 - a crashed worker must not sink the timings
        print("worker pool failed:", type(exc).__name__, str(exc)[:300], flush=True)
        record["pool_error"] = f"{type(exc).__name__}: {exc}"[:500]
    n_ok = sum(r["ok"] for r in record["correctness"])
    print(f"correctness: {n_ok}/{len(record['correctness'])} passed", flush=True)
    save()
    bad_cfgs = {r["spec"]["cfg"] for r in record["warm"] if not r["ok"]}
    print(f"phase 0/1 done in {time.time() - t_start:.0f}s; failing configs: {sorted(bad_cfgs)}", flush=True)

    from torch.nn.attention import SDPBackend, sdpa_kernel
    from spbench.kernels.pool import build_pyramid
    from spbench.kernels.pyramid_triton import run_plan

    def sdpa_times(q, k, v, reps, backends=("cudnn", "flash", "efficient"), causal=False):
        table = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION}
        out = {}
        for name in backends:
            try:
                with sdpa_kernel([table[name]]):
                    out[name] = bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal), reps)[0]
            except Exception as exc:  # noqa: BLE001
                out[name] = f"unavailable: {str(exc).splitlines()[0][:120]}"
        return out

    def ours(q, k, v, plan, cfg, reps, pyramid=None):
        """Median ms with ``cfg`` pinned (None: the autotuner's choice)."""
        if cfg in bad_cfgs:
            return None
        try:
            tuning.pin_config(cfg)
            return bench(lambda: run_plan(q, k, v, plan, pyramid=pyramid), reps)[0]
        except Exception as exc:  # noqa: BLE001
            print("ERR", cfg, str(exc)[:300], flush=True)
            bad_cfgs.add(cfg)
            return None
        finally:
            tuning.pin_config(None)

    def tuned(name, q, k, v, plan, reps, pyramid=None):
        t0 = time.time()
        run_plan(q, k, v, plan, pyramid=pyramid)  # tunes on first call for a new key
        tune_s = time.time() - t0
        ms = bench(lambda: run_plan(q, k, v, plan, pyramid=pyramid), reps)[0]
        record["autotuned"][name] = {"ms": ms, "tune_s": round(tune_s, 2), **tuning.chosen_config()}
        return ms

    def best(d):
        vals = {k: v for k, v in d.items() if isinstance(v, float)}
        return min(vals.items(), key=lambda kv: kv[1]) if vals else (None, float("nan"))

    def top(d, n):
        return [c for c, _ in sorted(((c, t) for c, t in d.items() if isinstance(t, float)), key=lambda x: x[1])[:n]]

    T = record["timings"]
    # ---- 32k x 12 heads
    L, H = (32768, 12) if not args.smoke else (512, 2)
    q, k, v = qkv(1, H, H, L, L, 128, torch.bfloat16)
    flops = 4.0 * L * L * 128 * H
    T["32k_sdpa"] = sdpa_times(q, k, v, 15)
    base_name, base = best(T["32k_sdpa"])
    print(f"32k SDPA: {T['32k_sdpa']} -> baseline {base_name} {base:.3f} ms ({flops / base / 1e9:.0f} TFLOP/s)", flush=True)
    for bk in (64, 128):
        plan = make_plan(1, H, L, L, 128, bk, {1: 1.0})
        T[f"32k_dense_bk{bk}"] = {c: ours(q, k, v, plan, c, 15) for c in cands}
        T[f"32k_dense_bk{bk}_autotuned"] = tuned(f"32k_dense_bk{bk}", q, k, v, plan, 15)
        n, t = best(T[f"32k_dense_bk{bk}"])
        print(f"32k dense bk={bk}: best {t:.3f} ms = {base / t * 100:.1f}% of {base_name} [{n}]; "
              f"autotuned {T[f'32k_dense_bk{bk}_autotuned']:.3f} ms [{record['autotuned'][f'32k_dense_bk{bk}']['config']}]", flush=True)
        save()

    plan = make_plan(1, H, L, L, 128, 64, {1: 0.10})
    T["32k_sparse10"] = {c: ours(q, k, v, plan, c, 20) for c in cands}
    T["32k_sparse10_autotuned"] = tuned("32k_sparse10", q, k, v, plan, 20)
    T["32k_sparse10_density"] = plan.density
    n, t = best(T["32k_sparse10"])
    print(f"32k sparse 0.10: best {t:.3f} ms speedup {base / t:.2f}x [{n}] density {plan.density:.4f}", flush=True)
    save()

    plan = make_plan(1, H, L, L, 128, 64, PSA_MIX)
    pyr = build_pyramid(k, v)
    T["32k_pyramid_build"] = bench(lambda: build_pyramid(k, v), 15)[0]
    T["32k_psa_mix_prebuilt"] = {c: ours(q, k, v, plan, c, 20, pyramid=pyr) for c in cands}
    T["32k_psa_mix_density"] = plan.density
    n, t = best(T["32k_psa_mix_prebuilt"])
    T["32k_psa_mix_with_build"] = ours(q, k, v, plan, n, 20) if n else None
    T["32k_psa_mix_autotuned"] = tuned("32k_psa_mix", q, k, v, plan, 20, pyramid=pyr)
    print(f"32k PSA mix: best {t:.3f} ms (+build {T['32k_pyramid_build']:.3f} ms -> {T['32k_psa_mix_with_build']}) "
          f"speedup {base / t:.2f}x run-only [{n}] density {plan.density:.4f}", flush=True)
    save()

    # per-level cost: 40% of each row's blocks at one level, pyramid prebuilt, best PSA config
    for li, cfg_lv in enumerate(level_cfgs):
        cost = {}
        for bk in (32, 64, 128):
            row = {}
            for p in (1, 2, 4, 8):
                plan = make_plan(1, H, L, L, 128, bk, {p: 0.4})
                row[p] = ours(q, k, v, plan, cfg_lv, 15, pyramid=pyr)
            cost[bk] = {p: (row[p], (row[p] / row[1]) if row[p] and row[1] else None) for p in row}
            print(f"level cost bk={bk} [{cfg_lv}]: " + ", ".join(f"p{p}: {row[p]:.3f} ms (x{cost[bk][p][1]:.3f}, target <= {1.3 / p:.3f})" for p in row if row[p]), flush=True)
        suffix = "" if li == 0 else f"_alt{li}"
        T["32k_level_cost" + suffix] = cost
        T["32k_level_cost_config" + suffix] = cfg_lv
        save()

    plan = make_plan(1, H, L, L, 128, 64, {1: 1.0}, causal=True)
    T["32k_causal_sdpa"] = sdpa_times(q, k, v, 10, backends=("cudnn", "flash"), causal=True)
    T["32k_causal_dense"] = {c: ours(q, k, v, plan, c, 10) for c in cands[:2]}
    print(f"32k causal: sdpa {T['32k_causal_sdpa']} ours {T['32k_causal_dense']}", flush=True)
    save()
    del q, k, v, pyr, plan
    if DEV == "cuda":
        torch.cuda.empty_cache()

    # ---- 110k x 40 heads
    if time.time() - t_start > args.budget_s:
        print(f"skipping 110k: {time.time() - t_start:.0f}s spent", flush=True)
    elif not args.no_long:
        L, H = 110000, 40
        q, k, v = qkv(1, H, H, L, L, 128, torch.bfloat16)
        T["110k_sdpa"] = sdpa_times(q, k, v, 3, backends=("cudnn", "flash"))
        base_name, base = best(T["110k_sdpa"])
        print(f"110k SDPA: {T['110k_sdpa']}", flush=True)
        save()
        for bk in (64, 128):
            plan = make_plan(1, H, L, L, 128, bk, {1: 1.0})
            picks = top(T[f"32k_dense_bk{bk}"], 2)
            T[f"110k_dense_bk{bk}"] = {c: ours(q, k, v, plan, c, 3) for c in picks}
            if bk == 64:
                T["110k_dense_bk64_autotuned"] = tuned("110k_dense_bk64", q, k, v, plan, 3)
            del plan
            print(f"110k dense bk={bk}: {T[f'110k_dense_bk{bk}']}", flush=True)
            save()
        plan = make_plan(1, H, L, L, 128, 64, {1: 0.10})
        T["110k_sparse10"] = {c: ours(q, k, v, plan, c, 5) for c in top(T["32k_sparse10"], 2)}
        T["110k_sparse10_autotuned"] = tuned("110k_sparse10", q, k, v, plan, 5)
        T["110k_sparse10_density"] = plan.density
        print(f"110k sparse 0.10: {T['110k_sparse10']} autotuned {T['110k_sparse10_autotuned']}", flush=True)
        save()

    record["summary"] = summarize(T)
    save()
    print(f"total {time.time() - t_start:.0f}s", flush=True)
    print("SUMMARY")
    for key, value in record["summary"].items():
        print(f"  {key:<44} {value}")


def summarize(T):
    """The headline figures (targets in brackets)."""

    def best(d):
        vals = [v for v in (d or {}).values() if isinstance(v, float)]
        return min(vals) if vals else float("nan")

    out = {}
    base32 = best(T.get("32k_sdpa"))
    dense32 = min(best(T.get("32k_dense_bk64")), best(T.get("32k_dense_bk128")))
    out["32k sdpa best ms"] = round(base32, 3)
    out["32k dense ms / % of sdpa [>=85]"] = f"{dense32:.3f} / {base32 / dense32 * 100:.1f}%"
    sp = best(T.get("32k_sparse10"))
    out["32k binary 0.10 ms / speedup"] = f"{sp:.3f} / {base32 / sp:.2f}x"
    pm = best(T.get("32k_psa_mix_prebuilt"))
    wb = T.get("32k_psa_mix_with_build") or float("nan")
    out["32k psa mix ms run / +build / speedups [>=5.5]"] = f"{pm:.3f} / {wb:.3f} / {base32 / pm:.2f}x / {base32 / wb:.2f}x"
    for suffix in ("", "_alt1"):
        for bk, row in (T.get("32k_level_cost" + suffix) or {}).items():
            label = f"level cost x p, bk={bk} [<=1.3]" + (f" ({T['32k_level_cost_config' + suffix]})" if suffix else "")
            out[label] = {p: (round(v[1] * int(p), 3) if v[1] else None) for p, v in row.items()}
    for name in ("32k_dense_bk64", "32k_dense_bk128", "32k_sparse10", "32k_psa_mix_prebuilt"):
        vals = {c: t for c, t in (T.get(name) or {}).items() if isinstance(t, float)}
        if vals:
            out[f"best config {name}"] = min(vals, key=vals.get)
    if "110k_sdpa" in T:
        base = best(T["110k_sdpa"])
        dense = min(best(T.get("110k_dense_bk64")), best(T.get("110k_dense_bk128")))
        sp = best(T.get("110k_sparse10"))
        out["110k sdpa best ms"] = round(base, 1)
        out["110k dense ms / % [>=85]"] = f"{dense:.1f} / {base / dense * 100:.1f}%"
        out["110k binary 0.10 ms / vs sdpa [>=8] / vs ours"] = f"{sp:.2f} / {base / sp:.2f}x / {dense / sp:.2f}x"
    return out


if __name__ == "__main__":
    main()
