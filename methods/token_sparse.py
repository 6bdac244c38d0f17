"""Token Sparse Attention: keep the tokens that matter, run any inner method on them.

1. Score every key with an observation window of W queries (``window``,
   default 128): the last W queries when causal, W evenly spaced queries
   (``round(linspace(0, L-1, W))``) when bidirectional. ``s[key]`` = mean over
   the window queries of their exact softmax probability on the key
   (Triton kernel ``spbench.kernels.token_score``: two passes, no L x L).
2. Smooth along the sequence with a moving average (``smooth``, default 7,
   stride 1; borders average their real neighbours only).
3. Coverage: average over heads, normalise to sum 1, sort ascending and drop
   the lightest keys whose cumulative mass stays below ``coverage`` (default
   0.005). That gives the kept count K (the largest K over the batch, so every
   row has the same length), floored at ``min_tokens`` (default 1024). A
   sequence of at most ``min_tokens`` tokens is not touched: the inner method
   runs on the full sequence.
4. Selection per KV head: each KV head keeps its own top-K keys by its
   (smoothed) score, the window positions forced in (they count toward K),
   indices sorted ascending so the causal order survives compaction. The
   score of a KV head is the mean over its query heads (GQA), so K and V
   are gathered once per KV head and every query head of a group uses its
   group's indices for its query rows.
5. Gather Q, K, V rows, run the inner method on the compacted sequence
   (causal masking in compacted order equals the original masking restricted
   to the kept tokens), scatter the output back; unselected query rows get
   zeros (in a transformer the residual stream carries them).

Budget mapping (``budget`` b given and ``coverage`` not given explicitly):
keeping a fraction f of the tokens for both queries and keys costs f^2 of
the full attention (non-causal exactly; causal up to the diagonal), times the
inner plan's own density d_in on the compacted sequence. So

* dense inner: f = sqrt(b);
* sparse inner: the inner gets budget b_in = b ** budget_split (default 0.75)
  unless ``inner.budget`` is given, and the outer keeps f = sqrt(b / b_in).
  The default gives most of the sparsity to the inner kernel and drops few
  tokens, as the paper pairs a light token drop with a sparse kernel.

In budget mode ``min_tokens`` is only a floor when given explicitly (else the
floor is the window), so the budget is reachable at short lengths. With
``coverage`` given explicitly the outer follows coverage and a sparse inner
gets the whole budget b.

Knob routing for ``token-sparse+M`` (``spbench.get_method("token-sparse+psa",
budget=0.1, inner_tau=0.9)`` or ``--param inner.tau=0.9``): knobs named
``inner.X`` or ``inner_X`` go to the inner method as ``X``; ``causal`` and
``scale`` are passed on to it; every other knob is the outer's.

``plan.density`` is the combined density: inner FLOPs on the compacted
sequence over dense FLOPs on the full one = d_in * pairs(K) / pairs(L).
``plan.extras`` holds ``token_indices`` ``[B, Hkv, K]`` (None when skipped),
``inner_plan`` and ``inner_method``. With a sparse inner, ``plan`` has to
gather the compacted tensors to plan the inner method; it stashes them in
``plan.extras["compact"]`` and the first ``run`` on the same tensors reuses
and releases them instead of gathering again.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from spbench.errors import SpbenchError
from spbench.kernels.reference import sum_causal_pairs
from spbench.kernels.token_score import score_flops, smooth_scores, window_key_scores, window_positions
from spbench.method import Knob, Method, check_out
from spbench.plan import Plan

EXECUTORS = ("auto", "triton", "torch")
INNER_PREFIXES = ("inner.", "inner_")


def split_inner_knobs(knobs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split knobs into (outer, inner): ``inner.X`` / ``inner_X`` go to the inner as ``X``."""
    outer, inner = {}, {}
    for key, value in knobs.items():
        prefix = next((p for p in INNER_PREFIXES if key.startswith(p)), None)
        if prefix is None:
            outer[key] = value
        else:
            inner[key[len(prefix) :]] = value
    return outer, inner


def visible_pairs(length: int, causal: bool) -> int:
    return sum_causal_pairs(length, length) if causal else length * length


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[b, h, index[b, h // (H / Hi), :], :]``: rows of each head, index per head group."""
    heads = x.shape[1]
    if index.shape[1] != heads:
        index = index.repeat_interleave(heads // index.shape[1], dim=1)
    return torch.gather(x, 2, index[..., None].expand(-1, -1, -1, x.shape[-1]))


def scatter_rows(out_compact: torch.Tensor, index: torch.Tensor, length: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse of :func:`gather_rows` into a zero tensor of ``length`` rows (``out``, any strides, if given)."""
    bsz, heads, _, dim = out_compact.shape
    if index.shape[1] != heads:
        index = index.repeat_interleave(heads // index.shape[1], dim=1)
    out = out_compact.new_zeros(bsz, heads, length, dim) if out is None else out.zero_()
    return out.scatter_(2, index[..., None].expand(-1, -1, -1, dim), out_compact)


def _identity(*tensors: torch.Tensor) -> tuple:
    return tuple((t.data_ptr(), tuple(t.shape), t.stride(), t._version) for t in tensors)


class TokenSparse(Method):
    """Token Sparse Attention around an inner method; see the module docstring."""

    name = "token-sparse"
    aliases = ("tokensparse", "token-sparse-attention")
    summary = "Token Sparse Attention: drop low-score tokens, run an inner method (dense by default) on the rest"
    writes_out = True  # the scatter back stores into ``out``
    knobs = {
        "inner": Knob("dense", "inner method run on the compacted sequence (name, or a Method instance from Python)"),
        "window": Knob(128, "observation window: last W queries (causal) or W evenly spaced ones"),
        "smooth": Knob(7, "moving-average width over key scores (odd; 1 = off)"),
        "coverage": Knob(0.005, "mass of the lightest keys that may be dropped, in [0, 1)"),
        "min_tokens": Knob(1024, "keep at least this many tokens; sequences this short are left whole"),
        "budget_split": Knob(0.75, "with a sparse inner and a budget b: inner budget = b ** budget_split, in (0, 1]"),
        "executor": Knob("auto", "kernels for scoring; also passed to an inner method that has this knob", EXECUTORS),
    }

    def __init__(self, **params: Any) -> None:
        outer, inner_knobs = split_inner_knobs(params)
        self.explicit = frozenset(outer)
        super().__init__(**outer)
        self.inner = self._build_inner(inner_knobs)

    @classmethod
    def compose(cls, inner_name: str, **knobs: Any) -> "TokenSparse":
        """``token-sparse+M``: M (itself possibly composed) as the inner method."""
        if "inner" in knobs and knobs["inner"] != inner_name:
            raise SpbenchError(f"token-sparse+{inner_name}: the inner method is already named; drop inner={knobs['inner']!r}")
        return cls(**{**knobs, "inner": inner_name})

    def validate(self) -> None:
        if not 0.0 <= self.params["coverage"] < 1.0:
            raise SpbenchError(f"token-sparse: coverage must be in [0, 1), got {self.params['coverage']}")
        if self.params["min_tokens"] < 0:
            raise SpbenchError(f"token-sparse: min_tokens must be >= 0, got {self.params['min_tokens']}")
        if self.params["window"] < 1:
            raise SpbenchError(f"token-sparse: window must be >= 1, got {self.params['window']}")
        smooth = self.params["smooth"]
        if smooth < 1 or smooth % 2 == 0:
            raise SpbenchError(f"token-sparse: smooth must be an odd width >= 1, got {smooth}")
        if not 0.0 < self.params["budget_split"] <= 1.0:
            raise SpbenchError(f"token-sparse: budget_split must be in (0, 1], got {self.params['budget_split']}")
        inner = self.params["inner"]
        if not isinstance(inner, (str, Method)):
            raise SpbenchError(f"token-sparse: inner must be a method name, got {inner!r}")

    def _build_inner(self, knobs: dict[str, Any]) -> Method:
        from spbench.registry import get_class, get_method  # noqa: PLC0415 - the registry imports methods

        inner = self.params["inner"]
        if isinstance(inner, Method):
            if knobs:
                raise SpbenchError("token-sparse: inner.* knobs need an inner method name, not an instance")
            if inner.causal != self.causal:
                raise SpbenchError("token-sparse: the inner method's causal flag differs from the outer one")
            return inner
        head = inner.partition("+")[0]
        accepted = get_class(head).all_knobs() if "+" not in inner else None
        for key in ("causal", "scale"):
            if key in knobs and knobs[key] != self.params[key]:
                raise SpbenchError(f"token-sparse: inner.{key} must match the outer {key}")
            knobs[key] = self.params[key]
        if "executor" not in knobs and (accepted is None or "executor" in accepted) and "executor" in self.explicit:
            knobs["executor"] = self.params["executor"]
        budget = self.budget
        if budget is not None and "budget" not in knobs and get_class(head).sparse:
            # With coverage fixed the outer has no budget to meet: the inner gets all of it.
            knobs["budget"] = budget if "coverage" in self.explicit else budget ** self.params["budget_split"]
        return get_method(inner, **knobs)

    # -- descriptions -------------------------------------------------------------
    @property
    def full_name(self) -> str:
        """``token-sparse`` with the dense inner, else ``token-sparse+<inner>``."""
        return self.name if self.inner_name == "dense" else f"{self.name}+{self.inner_name}"

    @property
    def inner_name(self) -> str:
        describe = self.inner.describe()
        return str(describe.get("method", self.inner.name))

    def describe(self) -> dict[str, Any]:
        info = {"method": self.full_name, **{k: v for k, v in self.params.items() if k != "inner"}}
        for key, value in self.inner.describe().items():
            if key != "method":
                info[f"inner.{key}"] = value
        info["inner"] = self.inner_name
        return info

    # -- planning ---------------------------------------------------------------------
    def inner_density_target(self) -> float:
        """The inner plan's expected density, for the budget mapping."""
        if not self.inner.sparse:
            return 1.0
        return self.inner.budget if self.inner.budget is not None else 1.0

    def kept_count(self, scores: torch.Tensor, length: int, window: int) -> tuple[int, str]:
        """K (tokens kept per head) and the rule that set it."""
        explicit_floor = "min_tokens" in self.explicit
        if self.budget is not None and "coverage" not in self.explicit:
            fraction = min(1.0, math.sqrt(self.budget / max(self.inner_density_target(), 1e-9)))
            kept, rule = math.ceil(fraction * length), "budget"
            floor = self.params["min_tokens"] if explicit_floor else 0
        else:
            mass = scores.mean(1)  # [B, L]: head average
            mass = mass / mass.sum(-1, keepdim=True).clamp(min=1e-30)
            cum = torch.cumsum(torch.sort(mass, dim=-1).values, dim=-1)
            dropped = int((cum < self.params["coverage"]).sum(-1).min())
            kept, rule = length - dropped, "coverage"
            floor = self.params["min_tokens"]
        kept = max(kept, floor, window)
        if kept > length or kept < 1:
            kept = length
        return kept, (rule if kept > max(floor, window) else "floor")

    def plan(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Plan:
        self.check_inputs(q, k, v)
        bsz, hq, length, dim = q.shape
        if k.shape[2] != length:
            raise SpbenchError(f"token-sparse keeps the same tokens as queries and keys: needs self-attention, got {length} queries and {k.shape[2]} keys")
        budget_mode = self.budget is not None and "coverage" not in self.explicit
        floor = self.params["min_tokens"] if (not budget_mode or "min_tokens" in self.explicit) else 0
        if length <= floor:
            return self._plan_whole(q, k, v, "short")

        pos = window_positions(length, self.params["window"], self.causal, q.device)
        scores = window_key_scores(q, k, pos, self.causal, self.softmax_scale(dim), backend=self.params["executor"])
        scores = smooth_scores(scores, self.params["smooth"])  # [B, Hkv, L]
        kept, rule = self.kept_count(scores, length, pos.numel())
        if kept >= length:
            return self._plan_whole(q, k, v, rule)

        # Per KV head top-K with the window forced in, then ascending positions.
        # (A segmented sort, not topk: K is most of L, where sorting is the fast path on GPUs.)
        ranked = scores.index_fill(-1, pos, float("inf"))
        index = torch.sort(ranked, dim=-1, descending=True, stable=True).indices[..., :kept]
        index = torch.sort(index, dim=-1).values  # [B, Hkv, K]

        if self.inner.sparse:
            qc, kc, vc = gather_rows(q, index), gather_rows(k, index), gather_rows(v, index)
            inner_plan = self.inner.plan(qc, kc, vc)
            compact = (_identity(q, k, v), (qc, kc, vc))
        else:  # dense inner methods plan from shapes only: no gather needed here
            inner_plan = self.inner.plan(q.narrow(2, 0, kept), k.narrow(2, 0, kept), v.narrow(2, 0, kept))
            compact = None
        ratio = visible_pairs(kept, self.causal) / visible_pairs(length, self.causal)
        inner_density = inner_plan.density
        plan = Plan(q_len=length, kv_len=length, causal=self.causal)
        plan.density = inner_density * ratio
        plan.extras = {"token_indices": index, "inner_plan": inner_plan, "inner_method": self.inner_name}
        if compact is not None:
            plan.extras["compact"] = compact
        plan.stats = {
            "kept_tokens": kept,
            "kept_fraction": kept / length,
            "keep_rule": rule,
            "inner_density": inner_density,
            "score_flop_ratio": score_flops(bsz, hq, pos.numel(), length, dim) / (4.0 * visible_pairs(length, self.causal) * dim * bsz * hq),
        }
        return plan

    def _plan_whole(self, q, k, v, rule: str) -> Plan:
        inner_plan = self.inner.plan(q, k, v)
        plan = Plan(q_len=q.shape[2], kv_len=k.shape[2], causal=self.causal, density=inner_plan.density)
        plan.extras = {"token_indices": None, "inner_plan": inner_plan, "inner_method": self.inner_name}
        plan.stats = {"kept_tokens": q.shape[2], "kept_fraction": 1.0, "keep_rule": rule, "inner_density": inner_plan.density}
        return plan

    def run(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: Plan, out: torch.Tensor | None = None) -> torch.Tensor:
        check_out(q, out)
        index = plan.extras.get("token_indices")
        inner_plan = plan.extras["inner_plan"]
        if index is None:
            return self.inner.run(q, k, v, inner_plan) if out is None else self.inner.run_into(q, k, v, inner_plan, out)
        compact = plan.extras.get("compact")
        if compact is not None and compact[0] == _identity(q, k, v):
            qc, kc, vc = plan.extras.pop("compact")[1]
        else:
            qc, kc, vc = gather_rows(q, index), gather_rows(k, index), gather_rows(v, index)
        # The compacted output is a temporary either way; only the scatter targets ``out``.
        return scatter_rows(self.inner.run(qc, kc, vc, inner_plan), index, q.shape[2], out)
