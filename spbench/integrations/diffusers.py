"""Sparse attention in diffusers video pipelines, through attention processors.

    from spbench.integrations import diffusers as spd
    handle = spd.apply(pipe, method="psa", budget=0.15)   # or a bare transformer
    video = pipe(prompt, ...).frames[0]
    print(handle.stats())      # attention time, measured density, ...
    spd.remove(pipe)           # the original processors, the very same objects

Supported transformers (self-attention only; cross-attention stays as is):

* ``WanTransformer3DModel`` (Wan2.1, Wan2.2; Wan2.2 A14B's ``transformer``
  and ``transformer_2`` share one handle): ``blocks[i].attn1``.
* ``CogVideoXTransformer3DModel``: ``transformer_blocks[i].attn1``, joint
  attention with the text tokens *first*.
* ``HunyuanVideoTransformer3DModel``: ``transformer_blocks[i].attn`` then
  ``single_transformer_blocks[j].attn`` (layer numbers run on in that order),
  joint attention with the text tokens *last* and a key mask on text padding.

Choices (each is a knob, recorded by :meth:`SparseAttention.describe`):

* ``dense_steps`` (default 0.25): the first denoising steps run dense. A value
  in (0, 1) is a fraction of the generation's steps (rounded to the nearest
  step, so 0.25 of 50 is 12 steps), a value >= 1 a number of steps, 0 none.
  Early steps fix the layout of the video and are the most sensitive to
  attention error, which is why sparse video generation work keeps them
  dense; a quarter is our default. A bare transformer has no scheduler to ask
  for the step count: give ``total_steps`` or an integer ``dense_steps``.
* ``dense_layers`` (default 1): the first M self-attention layers always run
  dense (the first layer sees the least structured attention).
* ``reorder`` (default ``"hilbert"``): video tokens are permuted along a 3-D
  Hilbert-like curve over the latent grid before the method sees them and
  put back afterwards (:mod:`spbench.integrations.reorder`), so a block of
  consecutive tokens is a compact space-time patch. ``"none"`` keeps the
  model's row-major order; only then does a method with a ``grid`` knob
  (e.g. ``rectified``) get the grid, which it reads in row-major order.
* ``reorder_scope`` (default ``"forward"``): where the reordering happens.
  ``"forward"`` (Wan only): the video tokens are put in curve order *once per
  transformer forward*, right before the first block, and back once after
  the output projection; the rotary embedding handed to the blocks is
  permuted the same way (once per forward). Every other op of a Wan block is
  token-wise (modulation, norms, FFN, cross-attention with video queries),
  so the blocks compute the same values, only in curve order, and the
  self-attention processors do no gathers at all. Forwards that are dense
  throughout (warm-up steps) are left in the model's order, so they stay
  exactly the model's own computation. Wan2.2 TI2V's per-token timesteps
  (``timestep`` of shape ``[B, L]``) modulate by token position, so those
  forwards fall back to per-call reordering. ``"call"``: every sparse
  attention call gathers Q/K/V into curve order and its output back (the
  fallback for CogVideoX and HunyuanVideo, where text tokens share the
  sequence).
* Text tokens (joint attention): the method sees one sequence with the video
  tokens first (reordered) and the text tokens after them, whatever the
  model's own order, and a method with a ``text_len`` knob (e.g.
  ``rectified``) is told how many trailing tokens are text. Text padding
  masked out by HunyuanVideo is removed before the method sees the sequence;
  padded rows get zeros (no valid token ever attends to them).
* The step counter: a forward pre-hook on each transformer reads the
  timestep. A timestep equal to the last one is the same step (classifier-free
  guidance runs twice per step), a lower one the next step, a higher one a new
  generation (step 0). :meth:`SparseAttention.reset` forces a new generation.
* Dense calls (warm-up) use torch SDPA exactly as the models' own processors
  do with the default backend.

Measured per handle: attention time (CUDA events on GPU, recorded without
synchronising and read when :meth:`SparseAttention.stats` is called; wall
clock on CPU) of every self-attention call, dense ones included, unless
``timing=False``; FLOP-weighted density of all calls (dense calls count 1)
and of the sparse calls alone.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from spbench.errors import SpbenchError
from spbench.integrations.reorder import REORDERS, Reorderer, inverse_permutation

HANDLE_ATTR = "_spbench_sparse"
TEXT_MODES = ("joint",)
REORDER_SCOPES = ("forward", "call")


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------
class _Timer:
    """Accumulates attention time: CUDA events on GPU (read lazily), wall clock on CPU.

    Recording an event does not synchronise; the events are read (one
    synchronisation) only by :meth:`total_s`. ``enabled=False`` records
    nothing and reports None.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.cpu_s = 0.0
        self.events: list[tuple[Any, Any]] = []

    def start(self, device: torch.device):
        if not self.enabled:
            return None
        if device.type == "cuda":
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def stop(self, device: torch.device, token) -> None:
        if not self.enabled:
            return
        if device.type == "cuda":
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.events.append((token, end))
        else:
            self.cpu_s += time.perf_counter() - token

    def total_s(self) -> float | None:
        if not self.enabled:
            return None
        if self.events:
            torch.cuda.synchronize()
            self.cpu_s += sum(a.elapsed_time(b) for a, b in self.events) / 1000.0
            self.events.clear()
        return self.cpu_s


# ---------------------------------------------------------------------------
# Model adapters: which modules are self-attention, what the latent grid is
# ---------------------------------------------------------------------------
def _arg(args: tuple, kwargs: dict, name: str, index: int):
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else None


def _with_arg(args: tuple, kwargs: dict, name: str, index: int, value) -> tuple[tuple, dict]:
    """(args, kwargs) with argument ``name`` (positional ``index``) replaced."""
    if name in kwargs or len(args) <= index:
        return args, {**kwargs, name: value}
    return args[:index] + (value,) + args[index + 1 :], kwargs


def _size(value) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (int(value),)


class _Adapter:
    kind = ""
    # Whether the once-per-forward reordering (reorder_scope="forward") is implemented.
    forward_reorder = False

    def install_forward_reorder(self, handle: "SparseAttention", transformer) -> list[Any]:
        raise NotImplementedError

    def forward_eligible(self, args: tuple, kwargs: dict) -> bool:
        return self.forward_reorder

    def modules(self, transformer) -> list[tuple[str, torch.nn.Module]]:
        raise NotImplementedError

    def grid(self, transformer, hidden_states: torch.Tensor) -> tuple[int, int, int]:
        raise NotImplementedError

    def processor(self, handle: "SparseAttention", layer: int, original) -> Any:
        raise NotImplementedError


class _WanAdapter(_Adapter):
    kind = "wan"

    def modules(self, transformer):
        return [(f"blocks.{i}.attn1", block.attn1) for i, block in enumerate(transformer.blocks)]

    def grid(self, transformer, hidden_states):
        _, _, frames, height, width = hidden_states.shape  # [B, C, F, H, W]
        p_t, p_h, p_w = _size(transformer.config.patch_size)
        return frames // p_t, height // p_h, width // p_w

    def processor(self, handle, layer, original):
        return WanSparseProcessor(handle, layer, original)

    forward_reorder = True

    def install_forward_reorder(self, handle, transformer):
        """Hooks that run a Wan forward's blocks on curve-ordered tokens.

        Block 0's input (the patch embeddings, row-major) is gathered into
        curve order; every block gets the rotary embedding permuted the same
        way (computed once per forward); ``proj_out``'s output (the last
        token-wise op before unpatchify) is gathered back. Blocks take
        (hidden_states, encoder_hidden_states, temb, rotary_emb).
        """
        hooks = []

        def block_pre(module, args, kwargs, first: bool):
            order = handle._forward_order
            if order is None:
                return None
            if first:
                rope = _arg(args, kwargs, "rotary_emb", 3)
                if not order.can_permute(rope):
                    handle._forward_order = None  # an unknown rotary layout: this forward reorders per call
                    return None
                hidden = _arg(args, kwargs, "hidden_states", 0)
                args, kwargs = _with_arg(args, kwargs, "hidden_states", 0, order.to_curve(hidden, dim=1))
                order.entered = True
            elif not order.entered:
                return None
            rope = _arg(args, kwargs, "rotary_emb", 3)
            if rope is not None:
                args, kwargs = _with_arg(args, kwargs, "rotary_emb", 3, order.rope(rope))
            return args, kwargs

        for i, block in enumerate(transformer.blocks):
            hooks.append(block.register_forward_pre_hook(lambda m, a, k, _f=(i == 0): block_pre(m, a, k, _f), with_kwargs=True))

        def proj_out_post(module, args, output):
            order = handle._forward_order
            if order is None or not order.entered:
                return None
            order.entered = False  # tokens are back in the model's order
            return order.to_model(output, dim=1)

        hooks.append(transformer.proj_out.register_forward_hook(proj_out_post))
        return hooks

    def forward_eligible(self, args, kwargs) -> bool:
        # Wan2.2 TI2V: per-token timesteps [B, L] modulate by position (also after the blocks).
        timestep = _arg(args, kwargs, "timestep", 1)
        return not (isinstance(timestep, torch.Tensor) and timestep.ndim > 1)


class _CogVideoXAdapter(_Adapter):
    kind = "cogvideox"

    def modules(self, transformer):
        return [(f"transformer_blocks.{i}.attn1", block.attn1) for i, block in enumerate(transformer.transformer_blocks)]

    def grid(self, transformer, hidden_states):
        _, frames, _, height, width = hidden_states.shape  # [B, F, C, H, W]
        p = int(transformer.config.patch_size)
        p_t = transformer.config.patch_size_t
        return (frames // p_t if p_t else frames), height // p, width // p

    def processor(self, handle, layer, original):
        return CogVideoXSparseProcessor(handle, layer, original)


class _HunyuanAdapter(_Adapter):
    kind = "hunyuanvideo"

    def modules(self, transformer):
        double = [(f"transformer_blocks.{i}.attn", b.attn) for i, b in enumerate(transformer.transformer_blocks)]
        single = [(f"single_transformer_blocks.{i}.attn", b.attn) for i, b in enumerate(transformer.single_transformer_blocks)]
        return double + single

    def grid(self, transformer, hidden_states):
        _, _, frames, height, width = hidden_states.shape  # [B, C, F, H, W]
        p, p_t = int(transformer.config.patch_size), int(transformer.config.patch_size_t)
        return frames // p_t, height // p, width // p

    def processor(self, handle, layer, original):
        return HunyuanSparseProcessor(handle, layer, original)


ADAPTERS: dict[str, _Adapter] = {
    "WanTransformer3DModel": _WanAdapter(),
    "CogVideoXTransformer3DModel": _CogVideoXAdapter(),
    "HunyuanVideoTransformer3DModel": _HunyuanAdapter(),
}


def adapter_for(transformer) -> _Adapter:
    for cls in type(transformer).__mro__:
        if cls.__name__ in ADAPTERS:
            return ADAPTERS[cls.__name__]
    supported = ", ".join(ADAPTERS)
    raise SpbenchError(f"spbench has no attention integration for {type(transformer).__name__} (supported: {supported})")


class ForwardOrder:
    """One transformer forward whose blocks see the video tokens in curve order.

    ``perm`` / ``inverse`` index the sequence dimension (``perm[i]`` is the
    model's position of the i-th curve token). ``entered`` is True between the
    first block's input gather and the output gather: only then are the
    tokens a processor sees in curve order.
    """

    def __init__(self, perm: torch.Tensor, inverse: torch.Tensor) -> None:
        self.perm = perm
        self.inverse = inverse
        self.video_len = perm.numel()
        self.entered = False
        self._rope_key: Any = None
        self._rope: Any = None

    def to_curve(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return x.index_select(dim, self.perm)

    def to_model(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return x.index_select(dim, self.inverse)

    def _seq_dim(self, t) -> int | None:
        if not isinstance(t, torch.Tensor):
            return None
        dims = [d for d in range(t.ndim) if t.shape[d] == self.video_len]
        return dims[0] if len(dims) == 1 else None

    def can_permute(self, rope) -> bool:
        if rope is None:
            return True
        parts = rope if isinstance(rope, (tuple, list)) else (rope,)
        return all(self._seq_dim(t) is not None for t in parts)

    def rope(self, rope):
        """The rotary embedding in curve order, computed once per forward.

        The model computes it once and hands the same object to every block;
        a different object (another forward) is permuted afresh.
        """
        if self._rope_key is not rope:
            parts = rope if isinstance(rope, (tuple, list)) else (rope,)
            permuted = tuple(t.index_select(self._seq_dim(t), self.perm) for t in parts)
            self._rope_key = rope
            self._rope = type(rope)(permuted) if isinstance(rope, (tuple, list)) else permuted[0]
        return self._rope


# ---------------------------------------------------------------------------
# The handle: configuration, step tracking, accounting
# ---------------------------------------------------------------------------
@dataclass
class CallInfo:
    """What a capture callback learns about one self-attention call."""

    layer: int
    step: int
    call: int  # forward pass within the step (0 = conditional pass with CFG in Wan)
    grid: tuple[int, int, int] | None
    text_len: int
    text_position: str  # "none", "first" or "last" (the model's own order)
    transformer: int  # index of the transformer in the pipeline (Wan2.2 A14B has two)


@dataclass
class _Stats:
    calls: int = 0
    sparse_calls: int = 0
    dense_calls: int = 0
    work: float = 0.0  # sum of dense FLOP weights of all calls
    planned: float = 0.0  # sum of weight * density
    sparse_work: float = 0.0
    sparse_planned: float = 0.0
    timer: _Timer = field(default_factory=_Timer)
    forward_reorders: int = 0  # forwards whose blocks ran in curve order


class SparseAttention:
    """One application of a method to a pipeline or a transformer (see :func:`apply`)."""

    def __init__(
        self,
        method: str,
        budget: float | None,
        knobs: dict[str, Any],
        dense_steps: float,
        dense_layers: int,
        reorder: str,
        total_steps: int | None,
        text: str,
        reorder_scope: str = "forward",
        timing: bool = True,
    ) -> None:
        from spbench.registry import get_method

        if reorder not in REORDERS:
            raise SpbenchError(f"reorder must be one of {', '.join(REORDERS)}, got {reorder!r}")
        if reorder_scope not in REORDER_SCOPES:
            raise SpbenchError(f"reorder_scope must be one of {', '.join(REORDER_SCOPES)}, got {reorder_scope!r}")
        if text not in TEXT_MODES:
            raise SpbenchError(f"text must be one of {', '.join(TEXT_MODES)}, got {text!r}")
        try:
            dense_steps = float(dense_steps)
        except (TypeError, ValueError):
            raise SpbenchError(f"dense_steps must be a number (a fraction < 1 or a step count), got {dense_steps!r}") from None
        if dense_steps < 0 or (dense_steps >= 1 and not dense_steps.is_integer()):
            raise SpbenchError(f"dense_steps must be 0, a fraction in (0, 1) or a whole number of steps, got {dense_steps}")
        if int(dense_layers) != dense_layers or dense_layers < 0:
            raise SpbenchError(f"dense_layers must be a non-negative integer, got {dense_layers!r}")
        if total_steps is not None and int(total_steps) <= 0:
            raise SpbenchError(f"total_steps must be positive, got {total_steps!r}")
        self.method_name = method
        self.budget = budget
        self.knobs = dict(knobs)
        self.dense_steps = dense_steps
        self.dense_layers = int(dense_layers)
        self.reorder = reorder
        self.reorder_scope = reorder_scope
        self.timing = bool(timing)
        self.total_steps = int(total_steps) if total_steps is not None else None
        self.text = text
        self.base_method = get_method(method, **({"budget": budget} if budget is not None else {}), **self.knobs)
        self._methods: dict[tuple, Any] = {}
        self._reorderers: dict[tuple, Reorderer] = {}
        self._orders: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.transformers: list[torch.nn.Module] = []
        self.pipeline = None
        self._originals: list[tuple[torch.nn.Module, Any]] = []
        self._hooks: list[Any] = []
        self.capture: Callable[[CallInfo, torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None
        self.step = -1
        self.call_in_step = 0
        self._last_t: float | None = None
        self.grid: tuple[int, int, int] | None = None
        self.current_transformer = 0
        self._dense_steps_resolved: int | None = None
        self._forward_order: ForwardOrder | None = None
        self.num_layers = 0  # self-attention layers per transformer (set by apply)
        self.reset_stats()

    # -- what gets recorded ---------------------------------------------------
    def describe(self) -> dict[str, Any]:
        params = {k: v for k, v in self.base_method.describe().items() if k not in ("method", "budget")}
        return {
            "method": self.base_method.name,
            "budget": self.budget,
            "params": params,
            "dense_steps": self.dense_steps,
            "dense_layers": self.dense_layers,
            "reorder": self.reorder,
            "reorder_scope": self.reorder_scope,
            "text": self.text,
        }

    def reset_stats(self) -> None:
        self._stats = _Stats(timer=_Timer(self.timing))

    def reset(self) -> None:
        """Start a new generation: step counter to its start, statistics cleared."""
        self.step = -1
        self.call_in_step = 0
        self._last_t = None
        self.reset_stats()

    def stats(self) -> dict[str, Any]:
        """Accounting of the current generation.

        ``attention_s``: time in self-attention (all calls); ``dense_calls``:
        warm-up calls run with SDPA; ``sparse_calls``: calls that ran the
        method; ``density``: FLOP-weighted over all calls (warm-up counts 1);
        ``sparse_density``: over the method's calls only; ``forward_reorders``:
        transformer forwards whose blocks ran in curve order (``attention_s``
        is None with ``timing=False``).
        """
        s = self._stats
        return {
            "attention_s": s.timer.total_s(),
            "attention_calls": s.calls,
            "sparse_calls": s.sparse_calls,
            "dense_calls": s.dense_calls,
            "density": s.planned / s.work if s.work else None,
            "sparse_density": s.sparse_planned / s.sparse_work if s.sparse_work else None,
            "steps": self.step + 1,
            "dense_steps_run": self._dense_steps_resolved,
            "forward_reorders": s.forward_reorders,
        }

    # -- step tracking ----------------------------------------------------------
    def _resolve_dense_steps(self) -> int:
        value = self.dense_steps
        if value == 0:
            return 0
        if value >= 1:
            return int(value)
        total = self.total_steps
        if total is None and self.pipeline is not None:
            total = getattr(self.pipeline, "_num_timesteps", None)
            if not total:
                timesteps = getattr(getattr(self.pipeline, "scheduler", None), "timesteps", None)
                total = len(timesteps) if timesteps is not None else None
        if not total:
            raise SpbenchError(
                f"dense_steps={value} is a fraction of the denoising steps, but their number is unknown: pass total_steps=N or a whole number of dense steps"
            )
        return int(math.floor(value * int(total) + 0.5))

    def _pre_forward(self, transformer_index: int, adapter: _Adapter, transformer, args, kwargs) -> None:
        hidden = _arg(args, kwargs, "hidden_states", 0)
        timestep = _arg(args, kwargs, "timestep", 1)
        self.current_transformer = transformer_index
        self.grid = adapter.grid(transformer, hidden) if hidden is not None else None
        t = float(timestep.max()) if isinstance(timestep, torch.Tensor) else (float(timestep) if timestep is not None else None)
        if t is None or self._last_t is None or t > self._last_t:
            if self._last_t is not None and t is not None and t > self._last_t:
                self.reset_stats()  # a new generation begins
            self.step, self.call_in_step = 0, 0
            self._dense_steps_resolved = self._resolve_dense_steps()
        elif t < self._last_t:
            self.step += 1
            self.call_in_step = 0
        else:
            self.call_in_step += 1
        if self.step < 0:
            self.step = 0
        self._last_t = t
        self._forward_order = None
        if self._forward_reorder_wanted(adapter, args, kwargs):
            self.begin_forward_order(hidden.device)

    def _forward_reorder_wanted(self, adapter: _Adapter, args, kwargs) -> bool:
        if self.reorder == "none" or self.reorder_scope != "forward" or not adapter.forward_reorder or self.grid is None:
            return False
        if not adapter.forward_eligible(args, kwargs):
            return False
        # A forward that is dense throughout (warm-up step) stays the model's own computation.
        return any(not self.is_dense(layer) for layer in range(self.num_layers))

    def begin_forward_order(self, device) -> ForwardOrder:
        """Mark the coming blocks as running on curve-ordered tokens (the hooks gather)."""
        video_len = math.prod(self.grid)
        perm, inverse = self._reorderer(self.grid, video_len).indices(video_len, torch.device(device))
        self._forward_order = ForwardOrder(perm, inverse)
        self._stats.forward_reorders += 1
        return self._forward_order

    def tokens_in_curve_order(self) -> bool:
        """True while the processors see video tokens already in curve order."""
        return self._forward_order is not None and self._forward_order.entered

    def is_dense(self, layer: int) -> bool:
        if layer < self.dense_layers:
            return True
        if self._dense_steps_resolved is None:
            self._dense_steps_resolved = self._resolve_dense_steps()
        return max(self.step, 0) < self._dense_steps_resolved

    # -- the attention itself ---------------------------------------------------
    def method_for(self, text_len: int, grid) -> Any:
        """The method instance for this call (text_len / grid passed where the method takes them)."""
        from spbench.registry import get_method

        knobs = self.base_method.all_knobs()
        extra: dict[str, Any] = {}
        if "text_len" in knobs and "text_len" not in self.knobs:
            extra["text_len"] = int(text_len)
        if "grid" in knobs and "grid" not in self.knobs and self.reorder == "none" and grid is not None:
            extra["grid"] = "x".join(map(str, grid))
        if not extra or all(self.base_method.params.get(k) == v for k, v in extra.items()):
            return self.base_method
        key = tuple(sorted(extra.items()))
        if key not in self._methods:
            budget = {"budget": self.budget} if self.budget is not None else {}
            self._methods[key] = get_method(self.method_name, **budget, **self.knobs, **extra)
        return self._methods[key]

    def _reorderer(self, grid, video_len: int) -> Reorderer | None:
        if self.reorder == "none":
            return None
        if grid is None or math.prod(grid) != video_len:
            shown = "unknown" if grid is None else "x".join(map(str, grid))
            raise SpbenchError(f"reorder={self.reorder}: latent grid {shown} does not match the {video_len} video tokens of this attention call")
        key = (self.reorder, tuple(grid))
        if key not in self._reorderers:
            self._reorderers[key] = Reorderer(self.reorder, grid)
        return self._reorderers[key]

    def sequence_order(self, total: int, text_len: int, text_first: bool, device) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(forward, inverse) index of the sequence the method sees, or None when it is the model's own.

        One gather does both jobs: video tokens in curve order, then text.
        """
        video_len = total - text_len
        reorderer = self._reorderer(self.grid, video_len)
        if reorderer is None and not (text_len and text_first):
            return None
        key = (total, text_len, text_first, str(device), self.reorder, self.grid)
        if key not in self._orders:
            video = reorderer.indices(video_len, device)[0] if reorderer is not None else torch.arange(video_len, device=device)
            if text_len and text_first:
                fwd = torch.cat([video + text_len, torch.arange(text_len, device=device)])
            else:
                fwd = torch.cat([video, torch.arange(video_len, total, device=device)])
            self._orders[key] = (fwd, inverse_permutation(fwd))
        return self._orders[key]

    def attend(
        self,
        layer: int,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        text_len: int = 0,
        text_first: bool = False,
        key_valid: torch.Tensor | None = None,
        dense_mask: torch.Tensor | None = None,
        layout: str = "bhsd",
    ) -> torch.Tensor:
        """Self-attention over ``[B, H, L, D]`` tensors (video and any text tokens).

        ``text_len`` text tokens sit first (``text_first``) or last in the
        sequence. ``key_valid`` ``[B, L]`` marks keys that exist (text padding
        False); ``dense_mask`` is the model's own SDPA mask for dense calls.
        The output is ``[B, H, L, D]``, or ``[B, L, H, D]`` with
        ``layout="bshd"`` (what diffusers processors flatten; the inverse
        reordering then gathers straight into it, saving a copy).
        """
        stats = self._stats
        upstream = text_len == 0 and self.tokens_in_curve_order()
        if self.capture is not None:
            position = "none" if not text_len else ("first" if text_first else "last")
            info = CallInfo(layer, max(self.step, 0), self.call_in_step, self.grid, int(text_len), position, self.current_transformer)
            if upstream:  # captures are in the model's own token order
                self.capture(info, *(self._forward_order.to_model(t, dim=2) for t in (q, k, v)))
            else:
                self.capture(info, q, k, v)
        weight = float(q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2])
        token = stats.timer.start(q.device)
        if self.is_dense(layer):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=dense_mask, dropout_p=0.0, is_causal=False)
            out = out.transpose(1, 2) if layout == "bshd" else out
            density = 1.0
            stats.dense_calls += 1
        else:
            out, density = self._sparse(q, k, v, text_len, text_first, key_valid, layout == "bshd", upstream)
            stats.sparse_calls += 1
            stats.sparse_work += weight
            stats.sparse_planned += weight * density
        stats.timer.stop(q.device, token)
        stats.calls += 1
        stats.work += weight
        stats.planned += weight * density
        return out

    def _sparse(self, q, k, v, text_len: int, text_first: bool, key_valid, bshd: bool, upstream: bool = False) -> tuple[torch.Tensor, float]:
        # upstream: the tokens are already in curve order (reorder_scope="forward"):
        # no gathers, and no copies either, since the kernels read strided Q/K/V.
        order = None if upstream else self.sequence_order(q.shape[2], text_len, text_first, q.device)
        if upstream:
            pass
        elif order is not None:
            # index_select on the (possibly transposed) views also makes them contiguous.
            q, k, v = (t.index_select(2, order[0]) for t in (q, k, v))
            if key_valid is not None:
                key_valid = key_valid.index_select(1, order[0])
        else:
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        if key_valid is not None and bool(key_valid.all()):
            key_valid = None
        if key_valid is None:
            method = self.method_for(text_len, self.grid)
            plan = method.plan(q, k, v)
            out = method.run(q, k, v, plan)
            density = float(plan.density)
        else:
            out, density = self._sparse_masked(q, k, v, text_len, key_valid)
        # Back to the model's order, gathering straight into the layout the caller wants.
        seq_dim = 1 if bshd else 2
        x = out.transpose(1, 2) if bshd else out
        if order is not None:
            x = x.index_select(seq_dim, order[1])
        return x, density

    def _sparse_masked(self, q, k, v, text_len: int, key_valid: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Drop masked (padding) tokens per batch element; their rows get zeros."""
        video_len = q.shape[2] - text_len
        out = torch.zeros_like(q)
        densities = []
        for b in range(q.shape[0]):
            keep = torch.nonzero(key_valid[b], as_tuple=False).flatten()
            if keep.numel() < video_len or not bool((keep[:video_len] == torch.arange(video_len, device=keep.device)).all()):
                raise SpbenchError("a key mask may only mask text tokens, not video tokens")
            method = self.method_for(keep.numel() - video_len, self.grid)
            qb, kb, vb = (t[b : b + 1].index_select(2, keep).contiguous() for t in (q, k, v))
            plan = method.plan(qb, kb, vb)
            out[b : b + 1].index_copy_(2, keep, method.run(qb, kb, vb, plan).to(out.dtype))
            densities.append(float(plan.density))
        return out, sum(densities) / len(densities)


# ---------------------------------------------------------------------------
# Processors: the models' own projections, then SparseAttention.attend
# ---------------------------------------------------------------------------
class _SparseProcessorBase:
    def __init__(self, handle: SparseAttention, layer: int, original: Any) -> None:
        self.handle = handle
        self.layer = layer
        self.original = original


class WanSparseProcessor(_SparseProcessorBase):
    """Wan self-attention (``attn1``): as diffusers' WanAttnProcessor, attention through spbench."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None, **kwargs):
        if encoder_hidden_states is not None or attention_mask is not None or kwargs:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb, **kwargs)
        query, key, value = _wan_qkv(attn, hidden_states)
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        query = query.unflatten(2, (attn.heads, -1))
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query = _wan_rotary(query, *rotary_emb)
            key = _wan_rotary(key, *rotary_emb)
        # [B, L, H, D] -> [B, H, L, D] for spbench, and back. Q and K come out of
        # the rotary embedding already [B, H, L, D]-contiguous (no copy); V stays a
        # strided view, which the kernels read in place.
        out = self.handle.attend(self.layer, query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), layout="bshd")
        out = out.flatten(2, 3).type_as(query)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)


def _wan_qkv(attn, hidden_states: torch.Tensor):
    """Wan's self-attention projections (fused or not), as diffusers computes them."""
    if getattr(attn, "fused_projections", False) and hasattr(attn, "to_qkv"):
        return attn.to_qkv(hidden_states).chunk(3, dim=-1)
    return attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)


def _wan_rotary(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's interleaved rotary embedding on ``[B, L, H, D]`` (same arithmetic as diffusers).

    The result is a ``[B, L, H, D]`` view of ``[B, H, L, D]``-contiguous
    storage: the layout spbench's methods read best, written for free by the
    copy the embedding makes anyway.
    """
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    bsz, seq, heads, dim = x.shape
    out = torch.empty(bsz, heads, seq, dim, dtype=x.dtype, device=x.device).transpose(1, 2)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class CogVideoXSparseProcessor(_SparseProcessorBase):
    """CogVideoX joint attention (text first), as diffusers' CogVideoXAttnProcessor2_0."""

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, image_rotary_emb=None):
        if attention_mask is not None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        from diffusers.models.embeddings import apply_rotary_emb

        text_len = encoder_hidden_states.size(1)
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        batch = hidden_states.shape[0]
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:
            query[:, :, text_len:] = apply_rotary_emb(query[:, :, text_len:], image_rotary_emb)
            if not attn.is_cross_attention:
                key[:, :, text_len:] = apply_rotary_emb(key[:, :, text_len:], image_rotary_emb)
        out = self.handle.attend(self.layer, query, key, value, text_len=text_len, text_first=True, layout="bshd")
        out = out.reshape(batch, -1, attn.heads * head_dim)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        encoder_out, out = out.split([text_len, out.size(1) - text_len], dim=1)
        return out, encoder_out


class HunyuanSparseProcessor(_SparseProcessorBase):
    """HunyuanVideo joint attention (text last, padding masked), as diffusers' HunyuanVideoAttnProcessor2_0."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.embeddings import apply_rotary_emb

        text_len = encoder_hidden_states.shape[1] if encoder_hidden_states is not None else 0
        concat_first = attn.add_q_proj is None and encoder_hidden_states is not None
        if concat_first:
            hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)
        query = attn.to_q(hidden_states).unflatten(2, (attn.heads, -1))
        key = attn.to_k(hidden_states).unflatten(2, (attn.heads, -1))
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:
            if concat_first:
                query = torch.cat([apply_rotary_emb(query[:, :-text_len], image_rotary_emb, sequence_dim=1), query[:, -text_len:]], dim=1)
                key = torch.cat([apply_rotary_emb(key[:, :-text_len], image_rotary_emb, sequence_dim=1), key[:, -text_len:]], dim=1)
            else:
                query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
                key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        if attn.add_q_proj is not None and encoder_hidden_states is not None:
            eq = attn.add_q_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            ek = attn.add_k_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            ev = attn.add_v_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            if attn.norm_added_q is not None:
                eq = attn.norm_added_q(eq)
            if attn.norm_added_k is not None:
                ek = attn.norm_added_k(ek)
            query, key, value = torch.cat([query, eq], dim=1), torch.cat([key, ek], dim=1), torch.cat([value, ev], dim=1)
        key_valid = None
        if attention_mask is not None:
            mask = attention_mask
            valid = mask if mask.dtype == torch.bool else torch.isfinite(mask) & (mask > -1e4)
            key_valid = valid.reshape(valid.shape[0], -1)[:, -key.shape[1] :].expand(query.shape[0], -1)
        out = self.handle.attend(
            self.layer,
            query.transpose(1, 2),
            key.transpose(1, 2),
            value.transpose(1, 2),
            text_len=text_len,
            text_first=False,
            key_valid=key_valid,
            dense_mask=attention_mask,
            layout="bshd",
        )
        out = out.flatten(2, 3).to(query.dtype)
        if encoder_hidden_states is not None:
            out, encoder_out = out[:, :-text_len], out[:, -text_len:]
            if getattr(attn, "to_out", None) is not None:
                out = attn.to_out[0](out)
                out = attn.to_out[1](out)
            if getattr(attn, "to_add_out", None) is not None:
                encoder_out = attn.to_add_out(encoder_out)
            return out, encoder_out
        return out


# ---------------------------------------------------------------------------
# apply / remove
# ---------------------------------------------------------------------------
def _transformers_of(target) -> tuple[list[torch.nn.Module], Any]:
    """(transformers, pipeline or None) of a pipeline or a bare transformer."""
    if isinstance(target, torch.nn.Module) and not hasattr(target, "components"):
        return [target], None
    found = [getattr(target, name) for name in ("transformer", "transformer_2") if getattr(target, name, None) is not None]
    if not found:
        raise SpbenchError(f"{type(target).__name__} has no transformer to attach sparse attention to")
    return found, target


def apply(
    target,
    method: str = "psa",
    budget: float | None = None,
    *,
    dense_steps: float = 0.25,
    dense_layers: int = 1,
    reorder: str = "hilbert",
    total_steps: int | None = None,
    text: str = "joint",
    reorder_scope: str = "forward",
    timing: bool = True,
    **knobs: Any,
) -> SparseAttention:
    """Attach ``method`` to the self-attention of a pipeline's transformer(s) or of a bare transformer.

    Returns the handle (also stored on each transformer) whose ``stats()``
    gives attention time and measured density, and ``describe()`` the knobs
    for records. Applying twice replaces the first application.
    ``reorder_scope="forward"`` reorders once per transformer forward where
    the model's adapter implements it (Wan), per attention call elsewhere;
    ``"call"`` always per call. ``timing=False`` skips the attention timer.
    """
    transformers, pipeline = _transformers_of(target)
    adapters = [adapter_for(t) for t in transformers]
    if pipeline is None and 0 < float(dense_steps) < 1 and total_steps is None:
        raise SpbenchError(
            f"dense_steps={dense_steps} is a fraction of the denoising steps, which a bare transformer does not know: pass total_steps=N or a whole number of dense steps"
        )
    remove(target)
    handle = SparseAttention(method, budget, knobs, dense_steps, dense_layers, reorder, total_steps, text, reorder_scope, timing)
    handle.pipeline = pipeline
    handle.transformers = transformers
    layer_offset = 0
    for index, (transformer, adapter) in enumerate(zip(transformers, adapters)):
        modules = adapter.modules(transformer)
        handle.num_layers = max(handle.num_layers, len(modules))
        for layer, (_, module) in enumerate(modules):
            original = module.processor
            handle._originals.append((module, original))
            module.set_processor(adapter.processor(handle, layer, original))

        def hook(mod, args, kwargs, _i=index, _a=adapter):
            handle._pre_forward(_i, _a, mod, args, kwargs)

        def done(mod, args, output):
            handle._forward_order = None

        handle._hooks.append(transformer.register_forward_pre_hook(hook, with_kwargs=True))
        if reorder != "none" and reorder_scope == "forward" and adapter.forward_reorder:
            handle._hooks.extend(adapter.install_forward_reorder(handle, transformer))
        handle._hooks.append(transformer.register_forward_hook(done))
        setattr(transformer, HANDLE_ATTR, handle)
        layer_offset += len(modules)
    return handle


def get_handle(target) -> SparseAttention | None:
    transformers, _ = _transformers_of(target)
    for transformer in transformers:
        handle = getattr(transformer, HANDLE_ATTR, None)
        if handle is not None:
            return handle
    return None


def remove(target) -> bool:
    """Restore the original processors (the same objects) and drop the hooks; True if anything was attached."""
    transformers, _ = _transformers_of(target)
    removed = False
    for transformer in transformers:
        handle = getattr(transformer, HANDLE_ATTR, None)
        if handle is None:
            continue
        for module, original in handle._originals:
            module.set_processor(original)
        for hook in handle._hooks:
            hook.remove()
        handle._originals.clear()
        handle._hooks.clear()
        handle._forward_order = None
        for t in handle.transformers:
            if getattr(t, HANDLE_ATTR, None) is handle:
                delattr(t, HANDLE_ATTR)
        removed = True
    return removed
