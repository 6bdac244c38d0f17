"""PSA: Pyramid Sparse Attention (multi-level block-sparse over pooled K/V)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from spbench.errors import SpbenchError
from spbench.kernels.antidiag import check_blocks
from spbench.kernels.fp8_rows import use_fp8
from spbench.kernels.psa_score import psa_importance, psa_importance_reference, sample_offsets
from spbench.method import Knob
from spbench.methods import _select as sel
from spbench.methods._planned import EXECUTOR_KNOB, SCORE_DTYPE_KNOB, SCORER_KNOB, PlannedMethod, check_fraction, check_power_of_two, score_precision, use_triton
from spbench.methods.xattention import block_scores as antidiagonal_block_scores
from spbench.plan import Plan

VARIANTS = ("generation", "understanding")
THRESHOLD_DEFAULTS = {"generation": (0.4, 0.5, 0.6, 0.8), "understanding": (0.7, 0.8, 0.9, 0.9)}
SIM_DEFAULTS = {"generation": (0.7, 0.65, 0.6), "understanding": (0.75, 0.7, 0.7)}
THRESHOLD_KNOBS = ("th1", "th2", "th4", "th8")
TOPK_KNOBS = ("topk1", "topk2", "topk4", "topk8")
SIM_KNOBS = ("sim2", "sim4", "sim8")


def adjacent_key_similarity(k: torch.Tensor, block_kv: int, max_bytes: int = 1 << 29) -> torch.Tensor:
    """Mean cosine similarity of adjacent keys at pooling 2, 4, 8, per KV block: fp32 ``[B, Hkv, NKV, 3]``.

    Pooling is repeated pairwise inside each block: at pooling p the pairs
    are the adjacent groups of p/2 keys (mean-pooled) that a level-p group
    merges, so entry 0 compares raw neighbours, entry 1 pairs of pairs,
    entry 2 pairs of quads. A pair is counted only when both groups hold a
    real key (the ragged tail); a block with no such pair gets 1 (nothing
    is lost by pooling it). ``block_kv`` must be a multiple of 8. Heads are
    processed in chunks of at most ``max_bytes`` of fp32 keys.
    """
    bsz, hkv, lk, dim = k.shape
    nkv = math.ceil(lk / block_kv)
    pad = nkv * block_kv - lk
    out = torch.empty(bsz, hkv, nkv, 3, dtype=torch.float32, device=k.device)
    real = F.pad(torch.ones(lk, device=k.device), (0, pad))  # keys per group, groups of 1
    chunk = max(1, max_bytes // max(1, 4 * bsz * (lk + pad) * dim))
    for h0 in range(0, hkv, chunk):
        sums = F.pad(k[:, h0 : h0 + chunk].float(), (0, 0, 0, pad))  # group sums; cosine ignores scale
        count = real
        for idx, p in enumerate((2, 4, 8)):
            left, right = sums[:, :, 0::2], sums[:, :, 1::2]
            both = (count[0::2] > 0) & (count[1::2] > 0)
            cos = F.cosine_similarity(left, right, dim=-1, eps=1e-12) * both
            per_block = block_kv // p
            total = cos.view(*cos.shape[:2], nkv, per_block).sum(-1)
            pairs = both.view(nkv, per_block).sum(-1)
            out[:, h0 : h0 + chunk, :, idx] = torch.where(pairs > 0, total / pairs.clamp(min=1), torch.ones_like(total))
            sums, count = left + right, count[0::2] + count[1::2]
    return out


def similarity_cap(sim: torch.Tensor, thresholds: tuple[float, float, float]) -> torch.Tensor:
    """Coarsest level each KV block may be pooled to (int8 1/2/4/8) from ``[..., 3]`` similarities.

    Level p is allowed when the similarity exceeds its threshold at p and at
    every finer pooling (merging dissimilar pairs is not undone by similar
    pairs of pairs).
    """
    ok2 = sim[..., 0] > thresholds[0]
    ok4 = ok2 & (sim[..., 1] > thresholds[1])
    ok8 = ok4 & (sim[..., 2] > thresholds[2])
    one = torch.ones_like(ok2, dtype=torch.int8)
    return torch.where(ok8, 8 * one, torch.where(ok4, 4 * one, torch.where(ok2, 2 * one, one)))


class PSA(PlannedMethod):
    """Pyramid Sparse Attention: each kept KV block gets a pooling level 1, 2, 4 or 8.

    Plan, per (batch, query head):

    1. Importance ``[NQ, NKV]`` per query block, rows summing to 1:
       * ``variant="generation"``: sampled importance
         (``spbench.kernels.psa_score``): ``q_samples`` (default block_q/4)
         query and ``k_samples`` (default block_kv/4) key positions per
         block, seeded by ``seed`` and shared by all blocks of a head;
         S_ij = max_q exp(max_k s - max over all sampled keys of s).
       * ``variant="understanding"``: XAttention's antidiagonal block
         scores with stride ``stride`` (default 16); the diagonal (KV
         blocks overlapping the query block) and the first KV column are
         forced to level 1.
       In causal mode the diagonal is forced to level 1 in both variants
       (so every query sees its own key), and KV blocks entirely after the
       query block are never selected.
       ``score_dtype`` (default ``auto``): on CUDA GPUs with fp8 tensor
       cores (sm_89+) and fp16/bf16 inputs the scoring products run in
       e4m3 with fp32 scales (per sampled query row and per KV block of
       sampled keys; per reshaped row for the antidiagonal scores),
       accumulated in fp32 (``spbench.kernels.
       fp8_rows``): half the scorer's time; ``input`` keeps the inputs'
       dtype; ``fp8`` forces it (the torch reference then scores the same
       quantized values).
    2. Levels, per query block, over the blocks ranked forced-first then by
       descending importance:
       * ``mode="threshold"``: with the exclusive cumulative share e of a
         block (mass of the blocks ranked before it), the level is 1 if
         e < th1, 2 if e < th2, 4 if e < th4, 8 if e < th8, else skipped;
         so the block crossing an interval's end belongs to that level.
         The first ceil(``min_level1`` * visible blocks) ranks are level 1.
         Defaults 0.4 / 0.5 / 0.6 / 0.8 (generation), 0.7 / 0.8 / 0.9 / 0.9
         (understanding).
       * ``mode="topk"``: fixed fractions of the visible blocks in rank
         order: ``topk1`` at level 1, then ``topk2``, ``topk4``, ``topk8``,
         rest skipped (released defaults 10% / 5% / 0% / 20%, density about
         0.15); counts error-diffused across query blocks; at least the
         forced blocks (and one block) at level 1.
    3. ``sim_cap``: per KV block, the mean cosine similarity of adjacent
       keys at pooling 2, 4, 8 (:func:`adjacent_key_similarity`, per KV
       head); a block assigned a coarser level than its similarities allow
       (``sim2``/``sim4``/``sim8``, defaults 0.7 / 0.65 / 0.6 generation,
       0.75 / 0.7 / 0.7 understanding) gets the coarsest allowed level
       instead. This only refines levels, so it raises density.
    4. Execute with all levels (a level-p block costs 1/p).

    ``budget`` (target density) replaces the mode: the ``topk*`` fractions
    are the profile, scaled by one factor x (capped at 1) so that the row's
    FLOP share sum_p (cumulative fraction_p) * (cost_p - cost_next) equals
    the budget (``_select.profile_at_budget``; host floats, no search on the
    device), then applied as in ``mode="topk"``. The profile is the shape of
    the allocation: at budget 0.15 the defaults give their own 10/5/0/20%,
    lower budgets shrink every level alike, higher ones widen them until
    every block is kept, then promote blocks toward level 1; budget 1 is
    dense. ``min_level1`` is not applied under a budget (it alone would cost
    0.06); ``sim_cap`` still applies and can only raise the density.
    Fractions under a budget are of the row's visible area
    (``_select.area_units``), so causal rows, whose forced diagonal blocks
    are partly visible, still land on the budget.
    """

    name = "psa"
    aliases = ("pyramid", "pyramid-sparse")
    summary = "pyramid sparse attention: blocks at pooling levels 1/2/4/8 by importance"
    head_dims = (64, 128)
    knobs = {
        "variant": Knob("generation", "importance estimate: generation (sampled) or understanding (antidiagonal)", VARIANTS),
        "mode": Knob("threshold", "level assignment: threshold (cumulative share) or topk (fixed fractions)", ("threshold", "topk")),
        "block_q": Knob(128, "query block size"),
        "block_kv": Knob(64, "KV block size"),
        "th1": Knob(None, "cumulative share ending level 1 (default 0.4 generation / 0.7 understanding)"),
        "th2": Knob(None, "cumulative share ending level 2 (default 0.5 / 0.8)"),
        "th4": Knob(None, "cumulative share ending level 4 (default 0.6 / 0.9)"),
        "th8": Knob(None, "cumulative share ending level 8; beyond it blocks are skipped (default 0.8 / 0.9)"),
        "min_level1": Knob(0.06, "minimum fraction of a row's blocks at level 1 (mode=threshold)"),
        "topk1": Knob(0.10, "fraction of blocks at level 1 (mode=topk; budget profile)"),
        "topk2": Knob(0.05, "fraction of blocks at level 2 (mode=topk; budget profile)"),
        "topk4": Knob(0.0, "fraction of blocks at level 4 (mode=topk; budget profile)"),
        "topk8": Knob(0.20, "fraction of blocks at level 8 (mode=topk; budget profile)"),
        "sim_cap": Knob(False, "cap each block's level by the similarity of its adjacent keys"),
        "sim2": Knob(None, "similarity needed for level 2 (default 0.7 generation / 0.75 understanding)"),
        "sim4": Knob(None, "similarity needed for level 4 (default 0.65 / 0.7)"),
        "sim8": Knob(None, "similarity needed for level 8 (default 0.6 / 0.7)"),
        "q_samples": Knob(None, "sampled queries per query block (generation; default block_q/4, a power of two)"),
        "k_samples": Knob(None, "sampled keys per KV block (generation; default block_kv/4, a power of two)"),
        "seed": Knob(0, "seed of the sampled positions (generation)"),
        "stride": Knob(16, "antidiagonal stride (understanding)"),
        "scorer": SCORER_KNOB,
        "score_dtype": SCORE_DTYPE_KNOB,
        "scratch_mb": Knob(1024, "scoring scratch memory cap (MiB); heads are scored in chunks under it"),
        "executor": EXECUTOR_KNOB,
    }

    # -- knobs --------------------------------------------------------------
    def _float_knob(self, name: str, default: float) -> float:
        value = self.params[name]
        if value is None:
            return default
        try:
            return float(value)
        except (TypeError, ValueError):
            raise SpbenchError(f"knob {name}={value!r} must be a number") from None

    def validate(self) -> None:
        p = self.params
        variant = p["variant"]
        for name in ("block_q", "block_kv"):
            if p[name] < 1:
                raise SpbenchError(f"{name} must be a positive integer, got {p[name]}")
        ths = tuple(self._float_knob(n, d) for n, d in zip(THRESHOLD_KNOBS, THRESHOLD_DEFAULTS[variant]))
        for name, value in zip(THRESHOLD_KNOBS, ths):
            check_fraction(name, value)
        if any(a > b for a, b in zip(ths, ths[1:])):
            raise SpbenchError(f"psa thresholds must be non-decreasing (th1 <= th2 <= th4 <= th8), got {', '.join(map(str, ths))}")
        fracs = tuple(float(p[n]) for n in TOPK_KNOBS)
        for name, value in zip(TOPK_KNOBS, fracs):
            check_fraction(name, value)
        if sum(fracs) > 1.0 + 1e-9:
            raise SpbenchError(f"psa level fractions topk1+topk2+topk4+topk8 must not exceed 1, got {sum(fracs):g}")
        if self.budget is not None and fracs[0] <= 0:
            raise SpbenchError("psa maps a budget through the topk fractions: topk1 must be positive")
        check_fraction("min_level1", p["min_level1"])
        sims = tuple(self._float_knob(n, d) for n, d in zip(SIM_KNOBS, SIM_DEFAULTS[variant]))
        for name, value in zip(SIM_KNOBS, sims):
            if not -1.0 <= value <= 1.0:
                raise SpbenchError(f"{name} is a cosine similarity threshold in [-1, 1], got {value}")
        if p["sim_cap"] and p["block_kv"] % 8:
            raise SpbenchError(f"sim_cap needs block_kv to be a multiple of 8, got {p['block_kv']}")
        samples = {}
        for name, block in (("q_samples", "block_q"), ("k_samples", "block_kv")):
            n = p[name] if p[name] is not None else max(1, p[block] // 4)
            if isinstance(n, float) and n.is_integer():
                n = int(n)
            if not isinstance(n, int) or not 1 <= n <= p[block]:
                raise SpbenchError(f"{name} must be an integer in [1, {block}={p[block]}], got {p[name]!r}")
            check_power_of_two(name, n)
            samples[name] = n
        if variant == "understanding":
            try:
                check_blocks(p["stride"], p["block_q"], p["block_kv"])
            except ValueError as exc:
                raise SpbenchError(f"psa understanding scorer: {exc}") from None
        if p["scratch_mb"] < 1:
            raise SpbenchError(f"scratch_mb must be at least 1, got {p['scratch_mb']}")
        self.thresholds, self.fractions, self.sim_thresholds = ths, fracs, sims
        self.samples = (samples["q_samples"], samples["k_samples"])
        self._offsets: dict[Any, tuple[torch.Tensor, torch.Tensor]] = {}
        self._level_cache: dict[Any, torch.Tensor] = {}

    # -- planning -----------------------------------------------------------
    def offsets(self, heads: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Seeded sampled offsets per query head (cached per head count and device)."""
        key = (heads, str(device))
        if key not in self._offsets:
            seed = self.params["seed"]
            q_off = sample_offsets(heads, self.params["block_q"], self.samples[0], seed, salt=1).to(device)
            k_off = sample_offsets(heads, self.params["block_kv"], self.samples[1], seed, salt=2).to(device)
            self._offsets[key] = (q_off, k_off)
        return self._offsets[key]

    def importance(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Block importance ``[B, Hq, NQ, NKV]``, rows summing to 1 (see the class docstring)."""
        p = self.params
        if p["variant"] == "understanding":
            return antidiagonal_block_scores(q, k, p["stride"], p["block_q"], p["block_kv"], self.causal, p["scale"], p["scorer"], p["scratch_mb"] << 20, p["score_dtype"])
        q_off, k_off = self.offsets(q.shape[1], q.device)
        triton_scorer = use_triton(p["scorer"], q.device)
        fp8 = use_fp8(p["score_dtype"], q, triton_scorer)
        if triton_scorer:
            return psa_importance(q, k, q_off, k_off, p["block_q"], p["block_kv"], self.causal, p["scale"], p["scratch_mb"] << 20, fp8=fp8)
        # fp8: the reference scores the same e4m3 values (per query row, per KV block of key samples)
        return psa_importance_reference(q, k, q_off, k_off, p["block_q"], p["block_kv"], self.causal, p["scale"], fp8=fp8)

    def _rank_levels_by_fractions(self, cumulative: tuple[float, ...], rows: tuple[torch.Tensor, torch.Tensor], n_visible: torch.Tensor, n_forced: torch.Tensor, nkv: int) -> torch.Tensor:
        """Rank-order levels ``[NQ, NKV]`` from cumulative per-level fractions of each row's area.

        ``rows`` = (units, deficit) from ``_select.area_units``: the bound of
        level p is ``c_p * units + deficit`` blocks (forced blocks, partly
        visible in causal mode, count at their true area), error-diffused
        across query blocks, non-decreasing over levels, at least the
        forced blocks (and one block) at level 1, at most the visible ones.
        """
        units, deficit = rows
        bounds, floor = [], n_forced.clamp(min=1)
        for c in cumulative:
            target = n_visible.double() if c >= 1.0 else c * units + deficit
            floor = torch.maximum(sel.diffuse_round(target), floor)
            bounds.append(torch.minimum(floor, n_visible))
        return sel.level_from_rank(sel.rank_positions(nkv, n_visible.device), bounds)

    def _rank_levels_by_threshold(self, ranked: torch.Tensor, n_visible: torch.Tensor, n_forced: torch.Tensor) -> torch.Tensor:
        """Rank-order levels ``[B, H, NQ, NKV]`` from cumulative-share intervals."""
        edges = sel.device_constants(self.thresholds, ranked.device)
        levels = sel.level_of_bucket(torch.bucketize(sel.exclusive_share(ranked), edges, out_int32=True, right=True))
        rank = sel.rank_positions(ranked.shape[-1], ranked.device)
        n_min = torch.maximum(torch.ceil(self.params["min_level1"] * n_visible.double()).long(), n_forced)
        levels = torch.where(rank < n_min[:, None], torch.ones_like(levels), levels)
        return torch.where(rank < n_visible[:, None], levels, torch.zeros_like(levels))

    def plan(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Plan:
        self.check_inputs(q, k, v)
        bq, bkv, causal = self.params["block_q"], self.params["block_kv"], self.causal
        lq, lk = q.shape[2], k.shape[2]
        understanding = self.params["variant"] == "understanding"
        lay = sel.layout(lq, lk, bq, bkv, causal, understanding or causal, understanding, q.device)
        by_fraction = self.budget is not None or self.params["mode"] == "topk"
        # The count rules break ties by lower KV index (a stable sort). A sort-free
        # Triton variant was tried and measured 1.3 s per plan at 110k x 40 heads on an H200.
        order, ranked = sel.rank_blocks(self.importance(q, k), lay.visible, lay.forced, not by_fraction, lay.all_visible, lay.any_forced, stable=by_fraction)
        if by_fraction:
            ranked_levels = self._fraction_levels(lq, lk, lay, q.device)
        else:
            ranked_levels = self._rank_levels_by_threshold(ranked, lay.n_visible, lay.n_forced)
        levels = sel.unsort(ranked_levels, order)
        if self.params["sim_cap"]:
            cap = similarity_cap(adjacent_key_similarity(k, bkv), self.sim_thresholds)  # [B, Hkv, NKV]
            cap = cap.repeat_interleave(q.shape[1] // k.shape[1], dim=1)[:, :, None, :]
            levels = torch.minimum(levels, cap)  # level 0 (skipped) stays 0
        return Plan.from_levels(levels, lq, lk, bq, bkv, causal, stats=self.plan_stats(score_precision=score_precision(self.params, q)))

    def _fraction_levels(self, lq: int, lk: int, lay: sel.Layout, device: torch.device) -> torch.Tensor:
        """Rank-order levels ``[NQ, NKV]`` of the budget / topk rules (positions only: cached per shape)."""
        bq, bkv, causal = self.params["block_q"], self.params["block_kv"], self.causal
        key = (lq, lk, bq, bkv, causal, self.budget, self.params["variant"], str(device))
        cached = self._level_cache.get(key)
        if cached is not None:
            return cached
        if self.budget is not None:  # fractions of the row's area, so density tracks the budget
            cumulative = sel.profile_at_budget(self.fractions, self.budget)
            rows = sel.area_units(lq, lk, bq, bkv, causal, lay.forced)
        else:  # fractions of the row's visible block count, as released
            cumulative = tuple(sum(self.fractions[: i + 1]) for i in range(4))
            rows = (lay.n_visible.double(), torch.zeros_like(lay.n_visible, dtype=torch.float64))
        levels = self._rank_levels_by_fractions(cumulative, rows, lay.n_visible, lay.n_forced, lay.visible.shape[-1])
        self._level_cache[key] = levels
        return levels
