"""Rectified SpaAttn: block-sparse attention with a rescaled sparse part and a
pooled compensation for blocks that pooling approximates well.

Per (batch, query head, query block i), with blocks of ``block`` tokens for
both queries and keys (default 128):

1. Mean-pool Q, K and V per block (ragged tail: mean of its real tokens).
2. Pooled scores over K_hat = pooled visual key blocks plus the ``text_len``
   tail tokens unpooled (HunyuanVideo-style joint attention). IPAR: each
   pooled block's logit gets +ln(m) (m = its token count), then one softmax;
   the block mass ``P_hat[i, j]`` sums the entries of block j (its pooled
   visual part and its text tokens). Without text this is
   ``softmax_j(scale * q_mean_i . k_mean_j + ln m_j)``.
3. Critical set: sort P_hat descending, keep n = max(count of the prefix
   whose cumulative mass stays <= p, top_k) blocks, top_k = (1 - drop_rate)
   * (visible blocks of the row). Forced blocks (text blocks, the causal
   diagonal, 3-D grid neighbours) are ranked first and their mass counts
   toward p; n never drops below their number.
4. GAPR: dq_i = mean over block i of |q - q_mean_i| (per dim), dk_j alike;
   gain G = |q_mean_i . k_mean_j|, error E = |dq_i . k_mean_j| + |q_mean_i . dk_j|.
   A non-critical block is *compensated* where G > E, else *dropped*.
5. ``O_i = R_i * O_sparse + sum_{compensated j} P_hat[i, j] * v_mean_j``,
   O_sparse normalised over the critical blocks, R_i the P_hat mass of the
   critical plus dropped blocks (= 1 - compensated mass). Both terms go
   through the executor's fused epilogue (``plan.extras["row_scale"]``
   ``[B, Hq, NQ]`` and ``["compensation"]`` ``[B, Hq, NQ, Dv]``, fp32).

Choices the papers leave open (documented here, exposed as knobs):

* ``drop_rate`` default 0.8; the released configurations use 0.75 to 0.85
  depending on the model (lower keeps more blocks).
* Budget mapping: with ``budget`` b and no explicit ``drop_rate``/``p``, the
  planner keeps top_k = b * visible blocks per row, measured by area (a
  causal diagonal block costs about half a block, so a causal row gets that
  half back), and disables the cumulative-p rule (p = 0), because that rule
  only ever adds blocks and would overshoot on rows with flat scores. The
  per-row top_k is error-diffused over query blocks (row counts alternate
  floor/ceil) so the mean matches b even with few blocks; a row keeps at
  least one block, so b below 1/(blocks per row) overshoots. Forced blocks
  count toward top_k, so the density exceeds b only where the forced set
  alone is larger (a small grid, many text blocks). Explicitly given
  ``drop_rate`` or ``p`` win over the budget.
* Text queries (``text_len`` > 0): every query block that holds a text token
  attends densely (all KV blocks critical, R = 1, no compensation). Key
  blocks holding any text token are always critical; in a block that mixes
  the last visual tokens with text, the visual part is pooled for scoring
  only. ``text_len`` requires self-attention and is not combined with causal.
* 3-D neighbours (``grid`` "TxHxW", visual tokens in raster order t, h, w;
  T*H*W = visual length, or the last frame partly filled): KV block j is a
  neighbour of query block i when some token of i and some token of j are
  adjacent in the 26-neighbourhood (each of |dt|, |dh|, |dw| <= 1, the token
  itself included). Neighbours are forced critical.
* Causal: scores cover the visible blocks only, the partly visible diagonal
  block is forced critical, and only blocks that every query of the row can
  see fully (strictly below the diagonal) are compensated.
* Density counts the critical blocks only. The compensation product costs
  2 * NQ * NKV * Dv FLOPs per head (``stats["compensation_flop_ratio"]``, a
  share of dense attention FLOPs), as does the planning (three pooled
  products of the same size).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from spbench.errors import SpbenchError
from spbench.kernels import rect_plan
from spbench.kernels.block_stats import block_stats
from spbench.kernels.executor import execute
from spbench.kernels.reference import attention_flops
from spbench.method import Knob, Method
from spbench.parsing import parse_grid
from spbench.plan import Plan, area_table, block_areas, density_from_area8, num_blocks

EXECUTORS = ("auto", "triton", "torch")


def grouped_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a [B, Hq, M, D] @ b[B, Hkv, N, D]^T`` per query head, GQA without repeating b."""
    bsz, hq, m, d = a.shape
    hkv, n = b.shape[1], b.shape[2]
    out = torch.matmul(a.reshape(bsz, hkv, (hq // hkv) * m, d), b.transpose(-1, -2))
    return out.view(bsz, hq, m, n)


def grouped_apply(w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``w [B, Hq, M, N] @ v[B, Hkv, N, D]`` per query head, GQA without repeating v."""
    bsz, hq, m, n = w.shape
    hkv = v.shape[1]
    out = torch.matmul(w.reshape(bsz, hkv, (hq // hkv) * m, n), v)
    return out.view(bsz, hq, m, v.shape[-1])


def block_visibility(q_len: int, kv_len: int, block: int, causal: bool, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(any key of block j visible to some query of block i, all keys visible to all queries), ``[NQ, NKV]``."""
    nq, nk = num_blocks(q_len, block), num_blocks(kv_len, block)
    if not causal:
        full = torch.ones(nq, nk, dtype=torch.bool, device=device)
        return full, full
    q_first = torch.arange(nq, device=device) * block
    q_last = torch.clamp(q_first + block, max=q_len) - 1
    k_first = torch.arange(nk, device=device) * block
    k_last = torch.clamp(k_first + block, max=kv_len) - 1
    return k_first[None, :] <= q_last[:, None], k_last[None, :] <= q_first[:, None]


def grid_neighbours(grid: tuple[int, int, int], tokens: int, block: int, nq: int, nk: int, device) -> torch.Tensor:
    """KV blocks holding a 26-neighbour of a query block's tokens, ``[NQ, NKV]`` bool.

    The first ``tokens`` positions are the cells of the grid in raster order
    (t, h, w); the last frame may be partly filled (cells past ``tokens`` are absent).
    """
    t_, h_, w_ = grid
    n = tokens
    idx = torch.arange(n, device=device)
    t, h, w = idx // (h_ * w_), (idx // w_) % h_, idx % w_
    out = torch.zeros(nq * nk, dtype=torch.bool, device=device)
    for dt in (-1, 0, 1):  # 27 vectorised passes over the tokens, not a per-block loop
        for dh in (-1, 0, 1):
            for dw in (-1, 0, 1):
                other = idx + dt * h_ * w_ + dh * w_ + dw
                ok = (t + dt >= 0) & (t + dt < t_) & (h + dh >= 0) & (h + dh < h_) & (w + dw >= 0) & (w + dw < w_) & (other < n)
                flat = (idx[ok] // block) * nk + other[ok] // block
                out[flat] = True
    return out.view(nq, nk)


def dithered_counts(target: torch.Tensor) -> torch.Tensor:
    """Integer counts whose running sum tracks the running sum of ``target`` (>= 0)."""
    cum = torch.floor(torch.cumsum(target.double(), 0) + 0.5)
    prev = torch.cat([cum.new_zeros(1), cum[:-1]])
    return (cum - prev).long()


class Rectified(Method):
    """Rectified SpaAttn (IPAR block scores, GAPR compensation); see the module docstring."""

    name = "rectified"
    aliases = ("rectified-spaattn", "spaattn")
    summary = "Rectified SpaAttn: critical blocks exact, rescaled; pooled compensation where GAPR allows"
    writes_out = True
    knobs = {
        "block": Knob(128, "query and KV block size (power of two, 16..256)"),
        "p": Knob(0.3, "cumulative P_hat mass the critical set covers at least, in [0, 1]"),
        "drop_rate": Knob(0.8, "share of blocks left out of the critical set (0.75-0.85 by model), in [0, 1)"),
        "text_len": Knob(0, "trailing text tokens (joint attention): scored unpooled, always critical, dense as queries"),
        "grid": Knob(None, "latent grid TxHxW of the visual tokens (raster order): adds 3-D neighbour blocks"),
        "executor": Knob("auto", "kernels for planning and the block-sparse run", EXECUTORS),
    }

    def __init__(self, **params: Any) -> None:
        self.explicit = frozenset(params)
        self._neighbour_cache: dict[tuple, torch.Tensor] = {}
        self._positional_cache: dict[tuple, tuple[torch.Tensor, ...]] = {}
        self._visible_pairs: dict[tuple, int] = {}
        self._forced_i8: dict[tuple, torch.Tensor] = {}
        super().__init__(**params)

    def validate(self) -> None:
        block = self.params["block"]
        if block < 16 or block > 256 or block & (block - 1):
            raise SpbenchError(f"rectified: block must be a power of two in 16..256, got {block}")
        if not 0.0 <= self.params["p"] <= 1.0:
            raise SpbenchError(f"rectified: p must be in [0, 1], got {self.params['p']}")
        if not 0.0 <= self.params["drop_rate"] < 1.0:
            raise SpbenchError(f"rectified: drop_rate must be in [0, 1), got {self.params['drop_rate']}")
        if self.params["text_len"] < 0:
            raise SpbenchError(f"rectified: text_len must be >= 0, got {self.params['text_len']}")
        if self.params["text_len"] > 0 and self.causal:
            raise SpbenchError("rectified: text_len (joint text-video attention) is bidirectional; do not combine it with causal")
        grid = self.params["grid"]
        if isinstance(grid, (tuple, list)):  # Python callers may pass (T, H, W)
            grid = "x".join(map(str, grid))
        self.grid = parse_grid(grid) if grid not in (None, "") else None

    # -- the budget mapping ---------------------------------------------------
    def keep_fraction(self) -> float:
        """Share of a row's visible blocks that top_k keeps."""
        return self.budget if self.budget_mode else 1.0 - self.params["drop_rate"]

    def row_targets(self, q_len: int, kv_len: int, visible: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
        """Blocks top_k keeps in each query block row (float, before error diffusion).

        Native rule: (1 - drop_rate) * visible blocks. Budget rule: b * (the row's
        visible area in block units) plus, for each partly visible (diagonal) block,
        the share of a block it does not cost, so that the kept FLOPs match b.
        """
        if not self.budget_mode:
            return self.keep_fraction() * visible.sum(-1).double()
        block = self.params["block"]
        areas = block_areas(q_len, kv_len, block, block, self.causal, visible.device)
        rows = torch.clamp(torch.arange(areas.shape[0], device=visible.device) * block + block, max=q_len) - torch.arange(areas.shape[0], device=visible.device) * block
        share = areas / (rows[:, None].double() * block)  # a full block pair = 1
        partial = visible & ~full
        return self.budget * share.sum(-1) + torch.where(partial, 1.0 - share, torch.zeros_like(share)).sum(-1)

    @property
    def budget_mode(self) -> bool:
        return self.budget is not None and "drop_rate" not in self.explicit

    def mass_threshold(self) -> float:
        if self.budget is not None and "p" not in self.explicit:
            return 0.0
        return float(self.params["p"])

    # -- planning ---------------------------------------------------------------
    def _neighbours(self, q_len: int, nq: int, nk: int, device) -> torch.Tensor | None:
        if self.grid is None:
            return None
        visual = q_len - self.params["text_len"]
        cells, frame = math.prod(self.grid), self.grid[1] * self.grid[2]
        if not visual <= cells < visual + frame:
            raise SpbenchError(
                f"rectified: grid {'x'.join(map(str, self.grid))} has {cells} cells but the sequence has {visual} visual tokens (only the last frame may be partly filled)"
            )
        key = (self.grid, visual, self.params["block"], nq, nk, str(device))
        if key not in self._neighbour_cache:
            self._neighbour_cache[key] = grid_neighbours(self.grid, visual, self.params["block"], nq, nk, device)
        return self._neighbour_cache[key]

    def plan(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Plan:
        self.check_inputs(q, k, v)
        bsz, hq, q_len, dim = q.shape
        kv_len = k.shape[2]
        block, text = self.params["block"], self.params["text_len"]
        backend = self.params["executor"]
        if (text > 0 or self.grid is not None) and q_len != kv_len:
            raise SpbenchError("rectified: text_len and grid need self-attention (equal query and key lengths)")
        if text >= kv_len:
            raise SpbenchError(f"rectified: text_len ({text}) must be smaller than the sequence ({kv_len})")
        scale = self.softmax_scale(dim)
        if text == 0 and self._fused(q.device):
            return self._plan_fused(q, k, v, scale)
        nq, nk = num_blocks(q_len, block), num_blocks(kv_len, block)
        vis_q, vis_k = q_len - text, kv_len - text
        nqv, nkv = num_blocks(vis_q, block), num_blocks(vis_k, block)

        # 1. pooled statistics of the visual tokens (fp32)
        qm, dq, _ = block_stats(q[:, :, :vis_q], block, True, backend)
        km, dk, kcount = block_stats(k[:, :, :vis_k], block, True, backend)
        vm, _, _ = block_stats(v[:, :, :vis_k], block, False, backend)
        if nqv < nq:  # pure-text query blocks: placeholders, they go dense below
            qm = torch.nn.functional.pad(qm, (0, 0, 0, nq - nqv))
            dq = torch.nn.functional.pad(dq, (0, 0, 0, nq - nqv))

        # 2. IPAR block logits: pooled visual blocks + ln(count), text tokens individually
        dots = grouped_matmul(qm, km)  # [B, Hq, NQ, NKv]
        logits = dots * scale + torch.log(kcount.float())
        if nk > nkv:
            logits = torch.nn.functional.pad(logits, (0, nk - nkv), value=float("-inf"))
        text_first = vis_k // block  # first KV block holding a text token
        if text > 0:
            st = grouped_matmul(qm, k[:, :, vis_k:].float()) * scale  # [B, Hq, NQ, text]
            lead = vis_k - text_first * block
            st = torch.nn.functional.pad(st, (lead, (nk - text_first) * block - lead - text), value=float("-inf"))
            text_lse = torch.logsumexp(st.view(bsz, hq, nq, nk - text_first, block), dim=-1)
            logits[..., text_first:] = torch.logaddexp(logits[..., text_first:], text_lse)
        visible, full, forced, n_keep = self._positional(q_len, kv_len, nq, nk, text_first, q.device)
        if self.causal:  # otherwise every block is visible
            logits = logits.masked_fill(~visible, float("-inf"))
        p_hat = torch.softmax(logits, dim=-1)

        # 3. critical set: forced blocks first, then by P_hat (forced and n_keep are position-only, cached)
        any_forced = self.causal or text > 0 or self.grid is not None
        rank_key = torch.where(visible, p_hat + 2.0 * forced, torch.full_like(p_hat, -1.0)) if any_forced else p_hat
        order = torch.argsort(rank_key, dim=-1, descending=True)
        p = self.mass_threshold()
        if p > 0:
            mass = torch.cumsum(torch.gather(p_hat, -1, order), dim=-1)
            n_keep = torch.maximum(n_keep, (mass <= p + 1e-6).sum(-1))  # [B, Hq, NQ]
        rank = torch.arange(nk, device=q.device)
        keep_sorted = (rank < n_keep[..., None]).expand(order.shape)
        critical = torch.zeros(order.shape, dtype=torch.bool, device=q.device).scatter(-1, order, keep_sorted)
        if text > 0:  # query blocks holding text tokens attend densely
            critical[:, :, vis_q // block :] = True
        if self.causal:
            critical &= visible

        # 4. GAPR: compensate a non-critical block only where gain > error
        gain = dots.abs()
        error = grouped_matmul(dq, km).abs() + grouped_matmul(qm, dk).abs()
        rectifiable = gain > error
        if nk > nkv:
            rectifiable = torch.nn.functional.pad(rectifiable, (0, nk - nkv), value=False)
        if text > 0:
            rectifiable[..., text_first:] = False  # a block with text is always critical anyway
        compensated = rectifiable & full & ~critical

        # 5. fused epilogue terms
        weights = torch.where(compensated, p_hat, torch.zeros((), device=q.device))
        row_scale = 1.0 - weights.sum(-1)
        compensation = grouped_apply(weights[..., :nkv].contiguous(), vm)
        levels = critical.to(torch.int8)

        vis_pairs = float(self._visible_pairs[(q_len, kv_len, str(q.device))]) * bsz * hq
        # Read in Plan.from_levels' one host sync, not here.
        deferred = {
            "critical_fraction": critical.sum().double() / vis_pairs,
            "compensated_fraction": compensated.sum().double() / vis_pairs,
            "mean_row_scale": row_scale.mean(),
        }
        stats = {
            "keep_fraction": self.keep_fraction(),
            "p": p,
            "compensation_flop_ratio": 2.0 * bsz * hq * nq * nkv * v.shape[-1] / attention_flops(bsz, hq, q_len, kv_len, dim, self.causal),
        }
        extras = {"row_scale": row_scale.float().contiguous(), "compensation": compensation.float().contiguous()}
        plan = Plan.from_levels(levels, q_len, kv_len, block, block, self.causal, extras=extras, stats=stats, deferred=deferred)
        plan.stats["dropped_fraction"] = max(0.0, 1.0 - plan.stats["critical_fraction"] - plan.stats["compensated_fraction"])
        return plan

    def _fused(self, device) -> bool:
        """Plan with the fused Triton kernels (:mod:`spbench.kernels.rect_plan`)?"""
        from spbench.kernels.executor import triton_available  # noqa: PLC0415 - as block_stats does

        backend = self.params["executor"]
        return rect_plan.triton is not None and (backend == "triton" or (backend == "auto" and triton_available(device)))

    def _plan_fused(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> Plan:
        """The planner above in ~12 launches (no text tokens): same steps, fused per query-block row.

        At 32k tokens the torch planner is host-bound (~90 small kernels), so
        the lever is launches: one pooling kernel, one matmul for the three
        block-pair products, a row kernel for P_hat and the rank key, the sort,
        a row kernel for selection / GAPR / CSR / plan sums, the compensation
        matmul, and the one host sync.
        """
        bsz, hq, q_len, _ = q.shape
        hkv, kv_len = k.shape[1], k.shape[2]
        block = self.params["block"]
        nq, nk = num_blocks(q_len, block), num_blocks(kv_len, block)
        _, _, forced, n_keep = self._positional(q_len, kv_len, nq, nk, nk, q.device)
        key = (q_len, kv_len, str(q.device))
        forced_i8 = self._forced_i8.get(key)
        if forced_i8 is None:
            forced_i8 = self._forced_i8[key] = forced.to(torch.int8).contiguous()
        any_forced = self.causal or self.grid is not None
        areas, total = area_table(q_len, kv_len, block, block, self.causal, str(q.device))

        qs, ks, vm = rect_plan.pooled_stats(q, k, v, block)
        g = hq // hkv  # GQA: query heads of a KV head share its pooled keys (no repeat)
        s = torch.matmul(qs.view(3 * bsz * hkv, g * nq, -1), ks.view(3 * bsz * hkv, nk, -1).transpose(-1, -2))
        s = s.view(3, bsz, hq, nq, nk)  # (q.k, dq.k, q.dk)
        p_hat, rank_key = rect_plan.row_scores(s, forced_i8 if any_forced else None, q_len, kv_len, block, scale, self.causal)
        order = torch.argsort(rank_key, dim=-1, descending=True)
        p = self.mass_threshold()
        weights, row_scale, counts, indices, levels, acc = rect_plan.row_select(s, p_hat, order, n_keep, areas, q_len, kv_len, block, self.causal, p)
        compensation = grouped_apply(weights, vm)

        host = acc.cpu()  # the one host sync
        width = max(int(host[0]), 1)
        n_crit, n_comp, scale_sum, area8 = host[1:].view(torch.float64).tolist()
        vis_pairs = float(self._visible_pairs[key]) * bsz * hq
        stats = {
            "keep_fraction": self.keep_fraction(),
            "p": p,
            "compensation_flop_ratio": 2.0 * bsz * hq * nq * nk * v.shape[-1] / attention_flops(bsz, hq, q_len, kv_len, q.shape[-1], self.causal),
            "critical_fraction": n_crit / vis_pairs,
            "compensated_fraction": n_comp / vis_pairs,
            "mean_row_scale": scale_sum / (bsz * hq * nq),
        }
        stats["dropped_fraction"] = max(0.0, 1.0 - stats["critical_fraction"] - stats["compensated_fraction"])
        density = density_from_area8(int(area8), total, bsz * hq)
        if width < nk:  # cut the CSR rows to the widest one (from_levels' layout)
            indices, levels = indices[..., :width].contiguous(), levels[..., :width].contiguous()
        extras = {"row_scale": row_scale, "compensation": compensation}
        return Plan(q_len, kv_len, block, block, self.causal, counts, indices, levels, extras, density, stats)

    def _positional(self, q_len: int, kv_len: int, nq: int, nk: int, text_first: int, device) -> tuple[torch.Tensor, ...]:
        """(visible, full, forced, n_keep): everything of the plan that depends on positions only, cached."""
        key = (q_len, kv_len, str(device))
        cached = self._positional_cache.get(key)
        if cached is not None:
            return cached
        text = self.params["text_len"]
        visible, full = block_visibility(q_len, kv_len, self.params["block"], self.causal, device)
        forced = visible & ~full  # the causal diagonal
        if text > 0:
            forced = forced.clone()
            forced[:, text_first:] = True
        neighbours = self._neighbours(q_len, nq, nk, device)
        if neighbours is not None:
            forced = forced | neighbours
        forced = forced & visible
        n_keep = dithered_counts(self.row_targets(q_len, kv_len, visible, full)).clamp(min=1)
        n_keep = torch.maximum(n_keep, forced.sum(-1))  # [NQ]
        self._visible_pairs[key] = int(visible.sum())
        self._positional_cache[key] = (visible, full, forced, n_keep)
        return self._positional_cache[key]

    def run(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: Plan, out: torch.Tensor | None = None) -> torch.Tensor:
        return execute(q, k, v, plan, scale=self.softmax_scale(q.shape[-1]), backend=self.params["executor"], out=out)
