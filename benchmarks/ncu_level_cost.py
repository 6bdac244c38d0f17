"""Level cost at locked clocks: one-level plans (40% of the blocks, 32k x 12, bf16, d128) timed by Nsight Compute.

    ncu --kernel-name regex:_gluon_fwd --metrics gpu__time_duration.sum --csv --page raw \\
        python3 benchmarks/ncu_level_cost.py > ncu.csv
    python3 benchmarks/ncu_level_cost.py --table ncu.csv

ncu locks the clocks (1.35 GHz on the H200 of sessions 16-17), so every kernel runs at the same clock, unlike
event timings where the clocks fall under sustained load and a level's time depends on what ran before it.
Each (block_kv, level, interleaved tiles) case is launched REPEATS times after a warm-up call (also profiled);
``--table`` reads ncu's CSV and prints the median per case and level cost x p relative to level 1.
"""

from __future__ import annotations

import csv
import itertools
import os
import statistics
import sys

LEVELS = (1, 2, 4, 8)
BLOCK_KVS = (64, 128)
ILV = (True, False)
REPEATS = 3


def cases():
    return list(itertools.product(BLOCK_KVS, LEVELS, ILV))


def run() -> None:
    import torch  # noqa: PLC0415

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_executor import make_plan, qkv  # noqa: PLC0415

    from spbench.kernels.pool import build_pyramid  # noqa: PLC0415
    from spbench.kernels.pyramid_gluon import run_plan_gluon  # noqa: PLC0415

    L, H = 32768, 12
    q, k, v = qkv(1, H, H, L, L, 128, torch.bfloat16)
    pyr = build_pyramid(k, v)
    for bk, p, ilv in cases():
        plan = make_plan(1, H, L, L, 128, bk, {p: 0.4})
        for _ in range(1 + REPEATS):
            run_plan_gluon(q, k, v, plan, pyramid=pyr, ilv=ilv)
        torch.cuda.synchronize()


def table(path: str) -> None:
    with open(path) as fh:  # ncu's raw page: a header, a row of units, one row per profiled launch
        rows = list(csv.DictReader(line for line in fh if line.startswith('"')))
    metric = "gpu__time_duration.sum"
    unit = next((r[metric] for r in rows if not r["ID"]), "?")
    times = [float(r[metric].replace(",", "")) for r in rows if r["ID"] and r["Kernel Name"] == "_gluon_fwd"]
    per = 1 + REPEATS
    if len(times) != per * len(cases()):
        sys.exit(f"{path}: {len(times)} _gluon_fwd launches, expected {per * len(cases())}")
    med = {case: statistics.median(times[i * per + 1:(i + 1) * per]) for i, case in enumerate(cases())}
    print(f"median of {REPEATS} launches ({unit}); x p = time(p) * p / time(1)")
    for bk, ilv in itertools.product(BLOCK_KVS, ILV):
        base = med[bk, 1, ilv]
        print(f"block_kv {bk} {'interleaved' if ilv else 'nvmma':11s} " + "  ".join(
            f"p{p} {med[bk, p, ilv]:.0f} (x p {med[bk, p, ilv] * p / base:.3f})" for p in LEVELS))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--table":
        table(sys.argv[2])
    else:
        run()
