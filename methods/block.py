"""Binary block-sparse attention scored by mean-pooled blocks (the classic baseline)."""

from __future__ import annotations

import torch

from spbench.errors import SpbenchError
from spbench.method import Knob
from spbench.methods import _select as sel
from spbench.methods._planned import EXECUTOR_KNOB, PlannedMethod, check_fraction
from spbench.plan import Plan


class BlockSparse(PlannedMethod):
    """Block-sparse attention with blocks chosen from mean-pooled Q and K.

    Plan, per (batch, query head):

    1. Mean-pool Q in blocks of ``block_q`` and K in blocks of ``block_kv``
       (a ragged tail block averages the rows it has).
    2. Block score = softmax over visible KV blocks of q_mean . k_mean * scale,
       per query block (GQA: a query head uses its KV head's means).
    3. Keep, per query block:
       * ``mode="topk"``: the ``round(topk * visible blocks)`` best;
       * ``mode="cdf"``: the smallest set, best first, whose score reaches
         ``tau`` (the block crossing ``tau`` is kept).
       Forced blocks are ranked first and count toward both: the diagonal
       (``keep_diagonal``, forced on when causal; the KV blocks overlapping
       the query block's positions) and the first KV block (``sink``).
       Causal: a KV block entirely after the query block is never selected.
    4. Execute with levels {0, 1}.

    ``budget`` (target density) replaces step 3's knobs: each query block
    keeps its forced blocks plus the best others until the kept area is
    ``budget`` of its visible area, counts error-diffused across query
    blocks (``_select.budget_counts``); budget 1 keeps every visible block.

    ``smooth_k`` subtracts K's sequence mean (per head) from the K block
    means before scoring, as SpargeAttn does. Note that for this score it
    shifts every logit of a row by the same q_mean . k_bar, so the row
    softmax, and hence the selection, is unchanged up to rounding; it is
    kept as a knob so runs can record it and so scores match pipelines
    that smooth K for other reasons.
    """

    name = "block"
    aliases = ("block-sparse", "blocksparse")
    summary = "binary block-sparse, blocks scored by mean-pooled Q/K (top-k or cdf)"
    head_dims = (64, 128)
    knobs = {
        "block_q": Knob(128, "query block size"),
        "block_kv": Knob(64, "KV block size"),
        "mode": Knob("topk", "selection rule: topk (fixed fraction) or cdf (score mass tau)", ("topk", "cdf")),
        "topk": Knob(0.2, "fraction of visible KV blocks kept per query block (mode=topk)"),
        "tau": Knob(0.9, "score mass to reach per query block (mode=cdf)"),
        "keep_diagonal": Knob(True, "always keep the KV blocks overlapping the query block (forced on when causal)"),
        "sink": Knob(False, "always keep the first KV block"),
        "smooth_k": Knob(False, "subtract K's sequence mean before scoring"),
        "executor": EXECUTOR_KNOB,
    }

    def validate(self) -> None:
        for name in ("block_q", "block_kv"):
            if self.params[name] < 1:
                raise SpbenchError(f"{name} must be a positive integer, got {self.params[name]}")
        check_fraction("topk", self.params["topk"], low_open=True)
        check_fraction("tau", self.params["tau"], low_open=True)

    def block_scores(self, q: torch.Tensor, k: torch.Tensor, visible: torch.Tensor | None) -> torch.Tensor:
        """Softmax over visible KV blocks of the block-mean logits, fp32 ``[B, Hq, NQ, NKV]``.

        ``visible`` None means every block is visible (no mask pass).
        """
        bsz, hq, _, dim = q.shape
        hkv = k.shape[1]
        q_mean = sel.block_means(q, self.params["block_q"])
        k_mean = sel.block_means(k, self.params["block_kv"])
        if self.params["smooth_k"]:
            k_mean = k_mean - k.mean(2, keepdim=True, dtype=torch.float32)
        nq, nkv = q_mean.shape[2], k_mean.shape[2]
        # GQA: the query heads of one KV head form one matmul (no K repeat).
        logits = torch.matmul(q_mean.view(bsz, hkv, (hq // hkv) * nq, dim), k_mean.transpose(-1, -2))
        logits = logits.view(bsz, hq, nq, nkv).mul_(self.softmax_scale(dim))
        if visible is not None:
            logits = logits.masked_fill_(~visible, float("-inf"))
        return torch.softmax(logits, dim=-1)

    def plan(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Plan:
        self.check_inputs(q, k, v)
        bq, bkv, causal = self.params["block_q"], self.params["block_kv"], self.causal
        lq, lk = q.shape[2], k.shape[2]
        diagonal, sink = self.params["keep_diagonal"] or causal, self.params["sink"]
        lay = sel.layout(lq, lk, bq, bkv, causal, diagonal, sink, q.device)
        scores = self.block_scores(q, k, None if lay.all_visible else lay.visible)
        by_mass = self.budget is None and self.params["mode"] != "topk"
        order, ranked = sel.rank_blocks(scores, lay.visible, lay.forced, by_mass, lay.all_visible, lay.any_forced)
        if self.budget is not None:
            keep = sel.budget_keep(self.budget, lq, lk, bq, bkv, causal, diagonal, sink, q.device)
        elif self.params["mode"] == "topk":
            counts = torch.round(self.params["topk"] * lay.n_visible.double()).long()
            counts = torch.minimum(torch.maximum(counts, lay.n_forced.clamp(min=1)), lay.n_visible)
            keep = sel.keep_by_count(counts, lay.visible.shape[-1]).to(torch.int8)
        else:
            keep = sel.keep_by_mass(ranked, self.params["tau"], lay.n_forced, lay.n_visible).to(torch.int8)
        levels = sel.unsort(keep, order)
        return Plan.from_levels(levels, lq, lk, bq, bkv, causal, stats=self.plan_stats())
