"""``levels``: a planner-free method for measuring the executor.

It draws a seeded random level map with a given share of blocks at each
level and runs the shared pyramid executor on it. Nothing is scored, so
plan time is near zero and run time is the executor alone; quality numbers
of this method mean nothing (the map ignores the data).

Knobs and the choices behind them:

* ``mix`` ``"1:0.10,2:0.05,8:0.20"``: per query-block row, the fraction of
  the row's candidate KV blocks given each level; the rest are skipped.
  Per-row counts use cumulative rounding (``round(cum_fraction * n)``), so
  they never exceed the row. Default (no ``mix``, no ``budget``): the
  released PSA top-k mix above, density about 0.15.
* ``budget`` without ``mix``: level-1 blocks only, at that fraction.
  ``budget`` with ``mix``: the mix's proportions are scaled so that
  sum(fraction_p / p) = budget (an error if that needs more than the row).
* ``spread``: ``random`` places each row's blocks uniformly at random
  (blocks spread over the row; the hard case for contiguity), ``band``
  places them as one contiguous circular run from a random offset, levels
  in ascending order (the easy case).
* ``seed``: one generator on the tensors' device; the map is drawn with
  vectorised torch (no Python loop over blocks).
* Causal: a row's candidates are only the KV blocks that some query of the
  query block can see (start <= the block's last query), so fractions are of
  the visible blocks. Plan.density (area-weighted: the diagonal block
  counts its visible half) is the authoritative density and is what
  reports use; it is a little below sum(fraction_p / p) in causal mode.
* The executor's level-grouped schedule is built in ``plan()``; the K/V
  pyramid (pooled levels) is built in ``run()``, so run time includes the
  pooling pass a real method would pay.
"""

from __future__ import annotations

import torch

from spbench.methods._planned import EXECUTOR_KNOB, PlannedMethod, use_triton
from spbench.errors import SpbenchError
from spbench.method import Knob
from spbench.plan import LEVELS, Plan, num_blocks

DEFAULT_MIX = "1:0.10,2:0.05,8:0.20"


def parse_mix(text: str) -> dict[int, float]:
    """``"1:0.10,2:0.05,8:0.20"`` -> {1: 0.1, 2: 0.05, 8: 0.2} (checked)."""
    mix: dict[int, float] = {}
    for item in str(text).split(","):
        if not item.strip():
            continue
        level, sep, frac = item.partition(":")
        try:
            p, f = int(level), float(frac)
        except ValueError:
            p, f = -1, -1.0
        if not sep or p not in LEVELS or not 0.0 <= f <= 1.0:
            raise SpbenchError(f"malformed mix item {item.strip()!r}: expected level:fraction with level in 1,2,4,8 and fraction in [0, 1]")
        if p in mix:
            raise SpbenchError(f"mix gives level {p} twice")
        mix[p] = f
    if not mix:
        raise SpbenchError("mix is empty: expected e.g. 1:0.10,2:0.05,8:0.20")
    if sum(mix.values()) > 1.0 + 1e-9:
        raise SpbenchError(f"mix fractions add up to {sum(mix.values()):.3f} > 1")
    return mix


def mix_density(mix: dict[int, float]) -> float:
    return sum(f / p for p, f in mix.items())


def random_level_map(
    batch: int, heads: int, q_len: int, kv_len: int, block_q: int, block_kv: int,
    mix: dict[int, float], causal: bool, seed: int, device, spread: str = "random",
) -> torch.Tensor:
    """A seeded level map ``[B, H, NQ, NKV]`` (int8) with ``mix`` per row."""
    nq, nk = num_blocks(q_len, block_q), num_blocks(kv_len, block_kv)
    gen = torch.Generator(device=device).manual_seed(int(seed))
    kb = torch.arange(nk, device=device)
    if causal:
        q_last = torch.clamp((torch.arange(nq, device=device) + 1) * block_q, max=q_len) - 1
        n_vis = torch.clamp(q_last // block_kv + 1, max=nk)  # visible blocks form a prefix
    else:
        n_vis = torch.full((nq,), nk, device=device, dtype=torch.long)
    visible = kb[None, :] < n_vis[:, None]  # [NQ, NKV]
    shape = (batch, heads, nq, nk)
    if spread == "random":
        keys = torch.rand(shape, generator=gen, device=device)
        keys = torch.where(visible, keys, torch.full_like(keys, 2.0))
        order = keys.argsort(-1)
        rank = torch.empty_like(order).scatter_(-1, order, kb.expand(shape).contiguous())
    else:  # band: a circular run over the visible prefix from a random offset
        offset = (torch.rand((batch, heads, nq, 1), generator=gen, device=device) * n_vis[:, None]).long()
        rank = torch.where(visible, (kb - offset) % n_vis[:, None], torch.full_like(kb, nk).expand(shape))
    levels = torch.zeros(shape, dtype=torch.int8, device=device)
    cum = 0.0
    lo = torch.zeros_like(n_vis)
    for p in LEVELS:  # at most four levels: vectorised over every row
        if p not in mix:
            continue
        cum += mix[p]
        hi = torch.round(cum * n_vis.double()).long()
        pick = (rank >= lo[:, None]) & (rank < hi[:, None])
        levels = torch.where(pick, torch.full_like(levels, p), levels)
        lo = hi
    return levels


class Levels(PlannedMethod):
    """Seeded random level maps at a chosen mix: the executor on its own."""

    name = "levels"
    aliases = ("random-levels",)
    summary = "planner-free random level map (mix of levels per row) for measuring the executor"
    in_all = False  # its quality is meaningless: name it explicitly to sweep it
    knobs = {
        "mix": Knob(None, f"level:fraction of each row's blocks, e.g. {DEFAULT_MIX} (default when no budget)"),
        "seed": Knob(0, "seed of the random level map"),
        "block_q": Knob(128, "query block size", (64, 128)),
        "block_kv": Knob(64, "KV block size", (32, 64, 128)),
        "spread": Knob("random", "random: blocks anywhere in the row; band: one contiguous run", ("random", "band")),
        "executor": EXECUTOR_KNOB,
    }

    def validate(self) -> None:
        for name in ("block_q", "block_kv"):
            if self.params[name] not in self.knobs[name].choices:
                choices = ", ".join(map(str, self.knobs[name].choices))
                raise SpbenchError(f"knob {name}={self.params[name]} must be one of {choices}")
        self.mix = self.resolve_mix()

    def resolve_mix(self) -> dict[int, float]:
        text, budget = self.params["mix"], self.budget
        if text is None:
            return {1: budget} if budget is not None else parse_mix(DEFAULT_MIX)
        mix = parse_mix(text)
        if budget is None:
            return mix
        base = mix_density(mix)
        if base <= 0:
            raise SpbenchError("mix has no active blocks, so it cannot be scaled to a budget")
        scaled = {p: f * budget / base for p, f in mix.items()}
        if sum(scaled.values()) > 1.0 + 1e-9:
            raise SpbenchError(f"mix {text!r} cannot reach budget {budget}: it would need {sum(scaled.values()):.2f} of every row")
        return scaled

    def plan(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Plan:
        self.check_inputs(q, k, v)
        bq, bk = self.params["block_q"], self.params["block_kv"]
        levels = random_level_map(
            q.shape[0], q.shape[1], q.shape[2], k.shape[2], bq, bk, self.mix, self.causal,
            self.params["seed"], q.device, self.params["spread"],
        )
        mix_text = ",".join(f"{p}:{f:.4g}" for p, f in sorted(self.mix.items()))
        plan = Plan.from_levels(levels, q.shape[2], k.shape[2], bq, bk, self.causal, stats=self.plan_stats(resolved_mix=mix_text, mix_density=mix_density(self.mix)))
        if use_triton(self.params["executor"], q.device):
            from spbench.kernels.schedule import schedule_for  # noqa: PLC0415

            schedule_for(plan)  # the executor's work list is planning work
        return plan

