"""spbench attention inside transformers models: sparse prefill, dense decode.

::

    from spbench.integrations import transformers as sp
    handle = sp.apply(model, method="xattention", budget=0.35)   # knobs as keywords
    model.generate(**inputs)
    print(handle.summary())      # prefill latency, attention share, density
    sp.remove(model)             # exactly the original attention implementation again

How it hooks in (transformers >= 4.54, the versions with ``AttentionMaskInterface``):

* An attention function is registered with ``AttentionInterface`` under a
  fresh key (``spbench_sparse_<n>``, never a method name, so no string
  check in transformers mistakes it for flash attention) and the language
  backbone's config(s) are switched to that key. Only the backbone: the
  vision tower of a VLM keeps its own implementation.
* SDPA's mask function (``sdpa_mask``) is registered under the same key with
  ``AttentionMaskInterface``. Without it transformers would build *no* mask
  for an unknown key and padding would be silently dropped. With it the mask
  is ``None`` exactly when attention is plain causal with no padding, and a
  tensor otherwise.
* Sparse path: a call is sparse when it is a prefill of a causal layer with
  no mask: ``q_len == kv_len > 1``, ``attention_mask is None``, no sliding
  window / softcap / position bias / dropout, the layer's softmax scale is
  the one the method was built with, and the head dim is one the method
  supports. Q, K, V go to ``method.plan`` then ``method.run`` as they come
  from the layer, ``[batch, heads, seq, head_dim]`` with K/V at the KV head
  count (GQA is never expanded here). A method with ``writes_out`` (the
  planned methods, rectified, token-sparse) stores its output straight into
  a ``[batch, seq, heads, head_dim]`` buffer, the layout transformers wants,
  through ``run(..., out=buffer.transpose(1, 2))``: no transpose copy. Other
  methods' outputs are transposed and made contiguous (SDPA's own path does
  the same; free when the output already has that layout).
* Every other call is dense, through transformers' own SDPA attention
  function: decode steps (``q_len == 1``), continuations over a cache
  (``q_len != kv_len``), and prefills with a mask. The latter are counted as
  dense fallbacks, with their reason, in the statistics.
* Padding: a padded batch (``batch > 1`` with padding) arrives with a mask
  and therefore runs **dense** in prefill (reason ``"mask"``); results stay
  correct, the statistics say how many prefill calls were dense. Run batch 1
  (or unpadded batches) to measure a sparse method.
* When the model's original implementation was ``eager`` or a flash
  attention, dense calls still go through SDPA (the mask format of the
  registered key is SDPA's); outputs equal the original up to float rounding.
  With the usual ``sdpa`` they are bit-identical.

Statistics (``handle.records``, ``handle.summary()``): one record per forward
of the backbone with more than one new token (a prefill): tokens, backbone
forward time (``prefill_s``), the forward of the model given to ``apply``
(``prefill_total_s``, with a VLM's vision encoder), attention time (plan +
run of every attention call in that forward, sparse or dense), plan time,
and the density of the attention work (FLOP-weighted over calls; dense calls
count 1). On CUDA, attention time comes from CUDA events and the forward is
bracketed by ``torch.cuda.synchronize`` (prefill only; decode steps are not
timed and not synchronised). ``timing=False`` turns all timing off.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

from spbench.errors import SpbenchError, UnavailableError
from spbench.method import Method

ATTRIBUTE = "_spbench_attention"
KEY_PREFIX = "spbench_sparse_"
_counter = itertools.count()


# -- transformers glue ----------------------------------------------------------


def _interfaces():
    """(AttentionInterface, AttentionMaskInterface, sdpa_attention_forward, sdpa_mask) or a clear error."""
    try:
        from transformers import AttentionInterface
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
    except ImportError as exc:
        raise UnavailableError(f"the transformers integration needs transformers with AttentionInterface ({exc})") from None
    try:
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError:
        raise UnavailableError(
            "this transformers has no AttentionMaskInterface (added in 4.53): a custom attention function would get no "
            "causal/padding mask; install transformers>=4.54"
        ) from None
    return AttentionInterface, AttentionMaskInterface, sdpa_attention_forward, sdpa_mask


def find_language_backbone(model: torch.nn.Module) -> torch.nn.Module:
    """The decoder stack whose attention becomes sparse (the language model of a VLM)."""
    candidates: list[torch.nn.Module] = []
    get_decoder = getattr(model, "get_decoder", None)
    if callable(get_decoder):
        try:
            found = get_decoder()
        except Exception:  # some models raise for a missing rule; try the names below
            found = None
        if isinstance(found, torch.nn.Module):
            candidates.append(found)
    for path in ("model.language_model", "language_model", "model.text_model", "model", ""):
        obj: Any = model
        for part in filter(None, path.split(".")):
            obj = getattr(obj, part, None)
        if isinstance(obj, torch.nn.Module):
            candidates.append(obj)
    for module in candidates:
        layers = getattr(module, "layers", None)
        if isinstance(layers, torch.nn.ModuleList) and len(layers) and hasattr(module, "config"):
            return module
    raise SpbenchError(f"cannot find the language backbone of {type(model).__name__} (a module with .layers and .config)")


def _configs_under(module: torch.nn.Module) -> list[Any]:
    """Every distinct config object used by modules of ``module`` (identity, not equality)."""
    seen: dict[int, Any] = {}
    for sub in module.modules():
        cfg = getattr(sub, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation") and id(cfg) not in seen:
            seen[id(cfg)] = cfg
    return list(seen.values())


def _get_impl(config: Any) -> Any:
    return config.__dict__.get("_attn_implementation_internal", getattr(config, "_attn_implementation", None))


def _set_impl(config: Any, value: Any) -> None:
    # The internal attribute where there is one, so the setter does not recurse into sub-configs.
    if "_attn_implementation_internal" in vars(config):
        config._attn_implementation_internal = value
    else:
        config._attn_implementation = value


def _seq_len(args: tuple, kwargs: dict) -> tuple[int, int, torch.device | None]:
    """(batch, new tokens, device) of a forward call, from inputs_embeds / input_ids."""
    for name in ("inputs_embeds", "input_ids"):
        t = kwargs.get(name)
        if isinstance(t, torch.Tensor) and t.dim() >= 2:
            return t.shape[0], t.shape[1], t.device
    if args and isinstance(args[0], torch.Tensor) and args[0].dim() >= 2:
        return args[0].shape[0], args[0].shape[1], args[0].device
    return 0, 0, None


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


# -- statistics -------------------------------------------------------------------


@dataclass
class PrefillRecord:
    """One prefill forward of the language backbone."""

    batch: int
    tokens: int
    prefill_s: float | None = None
    prefill_total_s: float | None = None
    attention_s: float | None = None
    plan_s: float | None = None
    density: float | None = None
    sparse_calls: int = 0
    dense_calls: int = 0
    fallbacks: dict[str, int] = field(default_factory=dict)
    tag: Any = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _EventPool:
    """CUDA timing events reused across calls: a fresh event costs a driver call on first record."""

    def __init__(self) -> None:
        self.free: list[Any] = []

    def record(self) -> Any:
        event = self.free.pop() if self.free else torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def give_back(self, events: list[Any]) -> None:
        self.free.extend(e for e in events if e is not None)


class _Active:
    """Bookkeeping for the prefill forward in flight.

    Per attention call only events are recorded (no host sync); they are read
    once, in :meth:`finish`, after the one synchronize of the forward.
    """

    def __init__(self, batch: int, tokens: int, device: torch.device | None, timing: bool, tag: Any, events: _EventPool | None = None):
        self.record = PrefillRecord(batch=batch, tokens=tokens, tag=tag)
        self.device = device
        self.cuda = timing and device is not None and device.type == "cuda"
        self.timing = timing
        self.events = events if events is not None else _EventPool()
        self.t0 = time.perf_counter()
        self.marks: list[tuple[Any, Any, Any]] = []  # (start, after plan, end) per attention call
        self.flops = 0.0
        self.flops_density = 0.0

    def mark(self) -> Any:
        if not self.timing:
            return None
        if self.cuda:
            return self.events.record()
        return time.perf_counter()

    def finish(self) -> PrefillRecord:
        rec = self.record
        if self.timing:
            _sync(self.device)
            rec.prefill_s = time.perf_counter() - self.t0
            attn = plan = 0.0
            for start, mid, end in self.marks:
                if self.cuda:
                    attn += start.elapsed_time(end) / 1e3
                    plan += start.elapsed_time(mid) / 1e3 if mid is not None else 0.0
                    self.events.give_back([start, mid, end])
                else:
                    attn += end - start
                    plan += (mid - start) if mid is not None else 0.0
            rec.attention_s, rec.plan_s = attn, plan
            self.marks.clear()
        rec.density = self.flops_density / self.flops if self.flops > 0 else None
        return rec


# -- the attention function ------------------------------------------------------------


class SparseAttention:
    """The state behind one :func:`apply`: method, registered key, hooks, statistics."""

    def __init__(self, model: torch.nn.Module, method: Method, method_name: str, timing: bool = True):
        attn_iface, mask_iface, sdpa_forward, sdpa_mask = _interfaces()
        self.model = model
        self.method = method
        self.method_name = method_name
        self.timing = timing
        self.backbone = find_language_backbone(model)
        self.key = f"{KEY_PREFIX}{next(_counter)}"
        self.records: list[PrefillRecord] = []
        self.tag: Any = None  # copied into each record (e.g. the document id being answered)
        self._dense: Callable = sdpa_forward
        self._attn_iface, self._mask_iface = attn_iface, mask_iface
        self._active: _Active | None = None
        self._outer: tuple[float, int, torch.device | None] | None = None
        self._hooks: list[Any] = []
        self._originals: list[tuple[Any, Any]] = []
        self._sdpa_mask = sdpa_mask
        self._events = _EventPool()
        self.head_dim, self.scale = self._layer_geometry()

    # geometry of the backbone's attention layers
    def _layer_geometry(self) -> tuple[int | None, float | None]:
        cfg = self.backbone.config
        head_dim = getattr(cfg, "head_dim", None) or (cfg.hidden_size // cfg.num_attention_heads)
        scales = {float(m.scaling) for m in self.backbone.modules() if hasattr(m, "scaling") and hasattr(m, "is_causal")}
        return int(head_dim), (scales.pop() if len(scales) == 1 else None)

    # -- install / uninstall --------------------------------------------------------
    def install(self) -> None:
        self._attn_iface.register(self.key, self.attention)
        self._mask_iface.register(self.key, self._sdpa_mask)
        for cfg in _configs_under(self.backbone):
            self._originals.append((cfg, _get_impl(cfg)))
            _set_impl(cfg, self.key)
        self._hooks.append(self.backbone.register_forward_pre_hook(self._backbone_pre, with_kwargs=True))
        self._hooks.append(self.backbone.register_forward_hook(self._backbone_post, with_kwargs=True))
        if self.model is not self.backbone:
            self._hooks.append(self.model.register_forward_pre_hook(self._outer_pre, with_kwargs=True))
            self._hooks.append(self.model.register_forward_hook(self._outer_post, with_kwargs=True))

    def uninstall(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        for cfg, value in reversed(self._originals):
            _set_impl(cfg, value)
        self._originals.clear()
        self._attn_iface._global_mapping.pop(self.key, None)
        self._mask_iface._global_mapping.pop(self.key, None)
        self._active = None

    # -- hooks ----------------------------------------------------------------------
    def _backbone_pre(self, module, args, kwargs) -> None:
        batch, tokens, device = _seq_len(args, kwargs)
        self._active = None
        if tokens > 1:
            if self.timing:
                _sync(device)
            self._active = _Active(batch, tokens, device, self.timing, self.tag, self._events)

    def _backbone_post(self, module, args, kwargs, output) -> None:
        active, self._active = self._active, None
        if active is not None:
            self.records.append(active.finish())

    def _outer_pre(self, module, args, kwargs) -> None:
        batch, tokens, device = _seq_len(args, kwargs)
        self._outer = None
        if tokens > 1 and self.timing:
            _sync(device)
            self._outer = (time.perf_counter(), len(self.records), device)

    def _outer_post(self, module, args, kwargs, output) -> None:
        outer, self._outer = self._outer, None
        if outer is not None:
            start, count, device = outer
            _sync(device)
            if len(self.records) > count:
                self.records[-1].prefill_total_s = time.perf_counter() - start

    # -- the function transformers calls ------------------------------------------------
    def sparse_blocker(self, module, query, key, attention_mask, dropout, scaling, is_causal, kwargs) -> str | None:
        """Why this call must be dense (None: it can be sparse)."""
        q_len, kv_len = query.shape[2], key.shape[2]
        if q_len == 1:
            return "decode"
        if q_len != kv_len:
            return "cache"
        if attention_mask is not None:
            return "mask"
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        if not causal:
            return "non-causal"
        if dropout:
            return "dropout"
        for name in ("sliding_window", "softcap", "position_bias", "cache"):
            if kwargs.get(name) is not None:
                return name
        if kwargs.get("output_attentions"):
            return "output_attentions"
        if scaling is not None and self.scale is not None and not math.isclose(float(scaling), self.scale, rel_tol=1e-6):
            return "scale"
        if self.method.head_dims is not None and query.shape[-1] not in self.method.head_dims:
            return "head_dim"
        return None

    def attention(self, module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
        active = self._active
        reason = self.sparse_blocker(module, query, key, attention_mask, dropout, scaling, is_causal, kwargs)
        if reason is not None:
            if active is None or reason == "decode":
                return self._dense(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs)
            start = active.mark()
            out = self._dense(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs)
            if active.timing:
                active.marks.append((start, None, active.mark()))
            rec = active.record
            rec.dense_calls += 1
            rec.fallbacks[reason] = rec.fallbacks.get(reason, 0) + 1
            flops = float(query.shape[0] * query.shape[1] * query.shape[2] * key.shape[2])
            active.flops += flops
            active.flops_density += flops
            return out
        # Allocated before the plan: the plan ends in a host sync, and after it
        # every host-side step delays the executor's launch.
        buf = self._output_buffer(query)
        if active is None:  # a prefill outside the hooked backbone forward (should not happen)
            return self._run(query, key, value, self.method.plan(query, key, value), buf), None
        start = active.mark()
        plan = self.method.plan(query, key, value)
        mid = active.mark()
        out = self._run(query, key, value, plan, buf)
        end = active.mark()
        if active.timing:
            active.marks.append((start, mid, end))
        active.record.sparse_calls += 1
        flops = float(query.shape[0] * query.shape[1] * query.shape[2] * key.shape[2])
        active.flops += flops
        active.flops_density += flops * float(plan.density)
        return out, None

    def _output_buffer(self, query: torch.Tensor) -> torch.Tensor | None:
        """``[B, L, H, D]``, the layout transformers wants, for a method that stores into ``out``."""
        if not self.method.writes_out:
            return None
        bsz, heads, length, dim = query.shape
        return torch.empty(bsz, length, heads, dim, dtype=query.dtype, device=query.device)

    def _run(self, query, key, value, plan, buf: torch.Tensor | None) -> torch.Tensor:
        """The method's output as a contiguous ``[B, L, H, D]``."""
        if buf is None:  # the method returns its own [B, H, L, D]: one transpose copy (as SDPA's path)
            return self.method.run(query, key, value, plan).transpose(1, 2).contiguous()
        self.method.run_into(query, key, value, plan, buf.transpose(1, 2))  # no copy: stored in place
        return buf

    # -- reading the statistics -----------------------------------------------------------
    def reset(self) -> None:
        self.records.clear()

    def summary(self, records: list[PrefillRecord] | None = None) -> dict[str, Any]:
        return summarize(self.records if records is None else records)

    def describe(self) -> dict[str, Any]:
        """The method and every resolved knob (what a record or a cache identity needs)."""
        return {"method": self.method_name, "params": dict(self.method.params)}


def summarize(records: list[PrefillRecord] | list[dict[str, Any]]) -> dict[str, Any]:
    """Means per prefill, the attention share of prefill time, and the token-weighted density."""
    rows = [r.to_dict() if isinstance(r, PrefillRecord) else r for r in records]
    out: dict[str, Any] = {"prefills": len(rows)}
    if not rows:
        return out

    def mean(key: str) -> float | None:
        vals = [r[key] for r in rows if r.get(key) is not None]
        return sum(vals) / len(vals) if vals else None

    for key in ("tokens", "prefill_s", "prefill_total_s", "attention_s", "plan_s"):
        out[key] = mean(key)
    timed = [r for r in rows if r.get("prefill_s") and r.get("attention_s") is not None]
    out["attention_share"] = sum(r["attention_s"] for r in timed) / sum(r["prefill_s"] for r in timed) if timed else None
    # Density weighted by each prefill's attention FLOPs (~ tokens^2), as one sweep-wide FLOP ratio.
    weighted = [(r["density"], float(r["batch"]) * float(r["tokens"]) ** 2) for r in rows if r.get("density") is not None]
    total = sum(w for _, w in weighted)
    out["density"] = sum(d * w for d, w in weighted) / total if total > 0 else None
    out["sparse_calls"] = sum(r.get("sparse_calls", 0) for r in rows)
    out["dense_calls"] = sum(r.get("dense_calls", 0) for r in rows)
    fallbacks: dict[str, int] = {}
    for r in rows:
        for reason, n in (r.get("fallbacks") or {}).items():
            fallbacks[reason] = fallbacks.get(reason, 0) + n
    out["fallbacks"] = fallbacks
    return out


# -- public API --------------------------------------------------------------------------


def _build_method(method: str | Method, budget: float | None, knobs: dict[str, Any], scale: float | None) -> tuple[Method, str]:
    if isinstance(method, Method):
        if budget is not None or knobs:
            raise SpbenchError("pass budget and knobs to the method itself when giving a Method instance")
        if not method.causal:
            raise SpbenchError(f"method {method.name!r} must be built with causal=True for a decoder backbone")
        return method, method.name
    from spbench.registry import get_method

    if "causal" in knobs and not knobs["causal"]:
        raise SpbenchError("the language backbone is causal; causal=False is not allowed here")
    knobs = {k: v for k, v in knobs.items() if k != "causal"}
    if scale is not None and "scale" not in knobs:
        knobs["scale"] = scale
    params = {"budget": budget} if budget is not None else {}
    return get_method(method, causal=True, **params, **knobs), str(method)


def apply(model: torch.nn.Module, method: str | Method = "xattention", budget: float | None = None, *, timing: bool = True, **knobs: Any) -> SparseAttention:
    """Make ``model``'s language backbone use ``method`` in prefill (dense in decode).

    ``method`` is a registered name (``spbench methods``) or a Method built
    with ``causal=True``; ``budget`` and ``knobs`` go to the method. Applying
    to a model that already has spbench attention replaces it. Returns the
    handle whose ``records`` / ``summary()`` hold the prefill statistics.
    """
    if getattr(model, ATTRIBUTE, None) is not None:
        remove(model)
    _interfaces()
    backbone = find_language_backbone(model)
    scales = {float(m.scaling) for m in backbone.modules() if hasattr(m, "scaling") and hasattr(m, "is_causal")}
    scale = scales.pop() if len(scales) == 1 else None
    built, name = _build_method(method, budget, knobs, scale)
    state = SparseAttention(model, built, name, timing=timing)
    if built.head_dims is not None and state.head_dim not in built.head_dims:
        dims = ", ".join(map(str, built.head_dims))
        raise SpbenchError(f"method {built.name!r} supports head dims {dims}; this model's language backbone has head dim {state.head_dim}")
    state.install()
    setattr(model, ATTRIBUTE, state)
    return state


def remove(model: torch.nn.Module) -> None:
    """Undo :func:`apply`: the original attention implementation, hooks and registrations."""
    state = getattr(model, ATTRIBUTE, None)
    if state is None:
        return
    state.uninstall()
    delattr(model, ATTRIBUTE)


def get_state(model: torch.nn.Module) -> SparseAttention | None:
    """The handle of an applied model, or None."""
    return getattr(model, ATTRIBUTE, None)
