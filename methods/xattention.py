"""XAttention: block-sparse attention selected by antidiagonal scoring."""

from __future__ import annotations

import torch

from spbench.errors import SpbenchError
from spbench.kernels.antidiag import antidiagonal_scores, antidiagonal_scores_reference, check_blocks
from spbench.kernels.fp8_rows import fp8_values, use_fp8
from spbench.method import Knob
from spbench.methods import _select as sel
from spbench.methods._planned import EXECUTOR_KNOB, SCORE_DTYPE_KNOB, SCORER_KNOB, PlannedMethod, check_fraction, score_precision, use_triton
from spbench.plan import Plan


def block_scores(q, k, stride, block_q, block_kv, causal, scale, scorer="auto", max_scratch_bytes=1 << 30, score_dtype="auto") -> torch.Tensor:
    """Antidiagonal block scores ``[B, Hq, NQ, NKV]`` (rows sum to 1) with the chosen backend and precision."""
    triton_scorer = use_triton(scorer, q.device)
    fp8 = use_fp8(score_dtype, q, triton_scorer)
    if triton_scorer:
        return antidiagonal_scores(q, k, stride, block_q, block_kv, causal, scale, max_scratch_bytes, fp8=fp8)
    if fp8:  # the reference scores the same per-reshaped-row e4m3 values
        q, k = fp8_values(q, stride), fp8_values(k, stride)
    return antidiagonal_scores_reference(q, k, stride, block_q, block_kv, causal, scale)


class XAttention(PlannedMethod):
    """XAttention (antidiagonal scoring), executed with levels {0, 1}.

    Plan, per (batch, query head):

    1. Block scores from ``spbench.kernels.antidiag`` (see its docstring for
       the exact definition, ragged lengths and causal masking): the
       antidiagonal sums of every ``stride`` x ``stride`` tile of Q K^T,
       scaled by scale/stride, softmaxed per reshaped row in fp32, summed
       per ``block_q`` x ``block_kv`` block; each block row sums to 1.
    2. Per query block, rank the blocks: forced blocks first (they count
       toward the mass), then by descending score; keep the smallest prefix
       whose mass reaches ``tau`` (the block crossing ``tau`` is kept).
       Forced: in causal mode the diagonal (KV blocks overlapping the query
       block) and the first KV block; otherwise ``keep_diagonal`` / ``sink``
       (both off by default, as in the video-generation setting).
       A KV block entirely after the query block is never selected.
    3. Execute with levels {0, 1}.

    ``score_dtype`` (default ``auto``): on CUDA GPUs with fp8 tensor cores
    (sm_89+) and fp16/bf16 inputs the antidiagonal products run in e4m3,
    one fp32 scale per reshaped row (the S rows it concatenates), with
    fp32 accumulation (``spbench.kernels.fp8_rows``): about half the
    scoring time; ``input`` keeps the inputs' dtype; ``fp8`` forces it
    (the torch reference then scores the same quantized values).

    ``budget`` replaces ``tau``: each query block keeps its forced blocks
    plus the best others until the kept area is ``budget`` of its visible
    area (``_select.budget_counts``, error-diffused across query blocks);
    budget 1 keeps every visible block.

    Cost: the scoring pass is a (Lq/S) x (Lk/S) product of depth S*d, i.e.
    1/S of the Q K^T FLOPs, done by one Triton launch plus one small
    reduction launch per head chunk (scratch bounded by ``scratch_mb``).
    """

    name = "xattention"
    aliases = ("antidiagonal", "xattn")
    summary = "block-sparse, blocks chosen by antidiagonal scoring (XAttention)"
    head_dims = (64, 128)
    knobs = {
        "block_q": Knob(128, "query block size (a power-of-two multiple of stride)"),
        "block_kv": Knob(128, "KV block size (a power-of-two multiple of stride)"),
        "stride": Knob(8, "antidiagonal stride S (8; 16 for long video understanding)"),
        "tau": Knob(0.9, "score mass kept per query block (0.95 is common for video generation)"),
        "keep_diagonal": Knob(False, "always keep the KV blocks overlapping the query block (forced on when causal)"),
        "sink": Knob(False, "always keep the first KV block (forced on when causal)"),
        "scorer": SCORER_KNOB,
        "score_dtype": SCORE_DTYPE_KNOB,
        "scratch_mb": Knob(1024, "scoring scratch memory cap (MiB); heads are scored in chunks under it"),
        "executor": EXECUTOR_KNOB,
    }

    def validate(self) -> None:
        try:
            check_blocks(self.params["stride"], self.params["block_q"], self.params["block_kv"])
        except ValueError as exc:
            raise SpbenchError(f"xattention: {exc}") from None
        check_fraction("tau", self.params["tau"], low_open=True)
        if self.params["scratch_mb"] < 1:
            raise SpbenchError(f"scratch_mb must be at least 1, got {self.params['scratch_mb']}")

    def scores(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        p = self.params
        return block_scores(q, k, p["stride"], p["block_q"], p["block_kv"], self.causal, p["scale"], p["scorer"], p["scratch_mb"] << 20, p["score_dtype"])

    def plan(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Plan:
        self.check_inputs(q, k, v)
        bq, bkv, causal = self.params["block_q"], self.params["block_kv"], self.causal
        lq, lk = q.shape[2], k.shape[2]
        diagonal, sink = self.params["keep_diagonal"] or causal, self.params["sink"] or causal
        lay = sel.layout(lq, lk, bq, bkv, causal, diagonal, sink, q.device)
        by_count = self.budget is not None
        order, ranked = sel.rank_blocks(self.scores(q, k), lay.visible, lay.forced, not by_count, lay.all_visible, lay.any_forced)
        if by_count:
            keep = sel.budget_keep(self.budget, lq, lk, bq, bkv, causal, diagonal, sink, q.device)
        else:
            keep = sel.keep_by_mass(ranked, self.params["tau"], lay.n_forced, lay.n_visible).to(torch.int8)
        levels = sel.unsort(keep, order)
        return Plan.from_levels(levels, lq, lk, bq, bkv, causal, stats=self.plan_stats(score_precision=score_precision(self.params, q)))
