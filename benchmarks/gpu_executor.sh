#!/usr/bin/env bash
# Executor measurements (issue 3) through `spbench kernel --method levels`,
# plus the integrations' overhead benchmarks (issues 7, 8). All on one GPU.
set -uo pipefail
SB="python3 -m spbench.cli"
OUT_ROOT="${OUT_ROOT:-results/reference}"
RUN="${RUN_ID:-executor-h100-v1}"
common="--workload random --out $OUT_ROOT --run-id $RUN --json"
# Dense mode (every block level 1) vs the fastest SDPA backend.
$SB kernel -m levels -p mix=1:1.0 --seq 32k --heads 12 $common > /dev/null
$SB kernel -m levels -p mix=1:1.0 --seq 110k --heads 40 $common > /dev/null
# Binary sparse at density 0.10, blocks spread at random over each row.
$SB kernel -m levels -p mix=1:0.10 --seq 110k --heads 40 $common > /dev/null
# Pyramid mix at density 0.15 (the released PSA kernel: 2.44x on this shape).
$SB kernel -m levels -p mix=1:0.10,2:0.05,8:0.20 --seq 32k --heads 12 $common > /dev/null
$SB kernel -m levels -p mix=1:0.10,2:0.05,8:0.20 --seq 32768 --heads 12 $common > /dev/null
# Time vs sequence length at fixed density 0.10.
$SB suite kernel -m levels --budgets 0.1 --seq 8k,16k,32k,64k,128k --heads 12 --workload random \
  --out "$OUT_ROOT" --run-id "$RUN-seqscan" --max-minutes 4
# Integration overheads outside attention.
python3 benchmarks/bench_diffusers_overhead.py --methods psa,block,xattention,rectified --budget 0.15 --out "$OUT_ROOT/diffusers_overhead_wan14b_720p.json"
python3 benchmarks/bench_transformers_overhead.py --methods xattention,psa,block,rectified,token-sparse --budget 0.35 --seq 32768 --heads 28 --kv-heads 4 --head-dim 128 --dtype bf16 --out "$OUT_ROOT/transformers_overhead_qwen7b_32k.json"
