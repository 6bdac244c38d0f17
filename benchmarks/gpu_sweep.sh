#!/usr/bin/env bash
# The reference kernel sweep on a GPU (issues 4, 5, 6): every block method at
# six budgets, 32k and 110k tokens x 40 heads x d128, bf16, video workload.
# Resumable: run it again with the same RUN_ID to finish a capped sweep.
set -uo pipefail
RUN_ID="${RUN_ID:-kernel-h100-v1}"
MAX_MIN="${MAX_MIN:-7}"
python3 -m spbench.cli suite kernel \
  --methods psa,block,xattention,rectified,token-sparse,token-sparse+psa \
  --budgets 0.05,0.1,0.15,0.2,0.3,0.5 --seq 32k,110k --heads 40 --head-dim 128 \
  --workload video --out results/reference --run-id "$RUN_ID" --max-minutes "$MAX_MIN"
