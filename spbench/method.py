"""The method interface every attention method implements.

A method is a planner in front of a shared executor::

    m = spbench.get_method("psa", budget=0.15)
    plan = m.plan(q, k, v)      # cheap estimate: which work to do
    out = m.run(q, k, v, plan)  # the attention itself
    out = m(q, k, v)            # both
    m.run(q, k, v, plan, out=buf)   # written into buf ([B, H, L, D], any strides)

Tensors are ``[batch, heads, seq, head_dim]``; K/V may have fewer heads than
Q (GQA, Hq a multiple of Hkv) and are never repeated in memory.

Subclasses declare ``name``, ``aliases``, ``summary`` and ``knobs`` (their
native parameters with defaults) and implement ``plan`` and ``run``.
``run(..., out=None)``: with ``out`` (q's shape and dtype, any strides) the
result is written into it and ``out`` is returned. A method whose kernel
stores there directly (no extra copy) sets ``writes_out = True``; callers
that care about the copy (the transformers integration) only pass ``out``
to those. Methods written before ``out`` existed (``run(q, k, v, plan)``)
keep working: callers go through :meth:`Method.run_into` or check
``writes_out``. Every
method also takes the common knobs ``budget`` (target density in (0, 1]),
``causal`` and ``scale``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from spbench.errors import SpbenchError
from spbench.plan import Plan


@dataclass(frozen=True)
class Knob:
    """One tunable parameter of a method: its default and what it means."""

    default: Any
    help: str = ""
    choices: tuple[Any, ...] | None = None


COMMON_KNOBS: dict[str, Knob] = {
    "budget": Knob(None, "target density in (0, 1]; mapped to the method's native knobs"),
    "causal": Knob(False, "causal (top-left aligned) masking"),
    "scale": Knob(None, "softmax scale; default 1/sqrt(head_dim)"),
}


def _coerce(name: str, value: Any, knob: Knob) -> Any:
    """Coerce a knob value to the type of its default, with a clear error."""
    default = knob.default
    if value is None or default is None:
        return value
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                    raise ValueError
                value = value.lower() in ("true", "1", "yes", "on")
            return bool(value)
        if isinstance(default, int) and not isinstance(value, bool):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if isinstance(default, float):
            return float(value)
    except (TypeError, ValueError):
        raise SpbenchError(f"knob {name}={value!r} must be a {type(default).__name__}") from None
    if knob.choices is not None and value not in knob.choices:
        raise SpbenchError(f"knob {name}={value!r} must be one of {', '.join(map(str, knob.choices))}")
    return value


class Method:
    """Base class of every attention method (dense or sparse)."""

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    summary: ClassVar[str] = ""
    sparse: ClassVar[bool] = True
    #: included in ``--methods all``; False for synthetic probes (``levels``) whose quality means nothing
    in_all: ClassVar[bool] = True
    knobs: ClassVar[dict[str, Knob]] = {}
    #: head dims the method supports; None means any.
    head_dims: ClassVar[tuple[int, ...] | None] = None
    #: run(..., out=) stores the result straight into ``out`` (no temporary + copy)
    writes_out: ClassVar[bool] = False

    def __init__(self, **params: Any) -> None:
        known = self.all_knobs()
        unknown = [key for key in params if key not in known]
        if unknown:
            close = difflib.get_close_matches(unknown[0], list(known), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else f" (knobs: {', '.join(sorted(known))})"
            raise SpbenchError(f"method {self.name!r} has no knob {unknown[0]!r}{hint}")
        self.params: dict[str, Any] = {key: knob.default for key, knob in known.items()}
        for key, value in params.items():
            self.params[key] = _coerce(key, value, known[key])
        budget = self.params["budget"]
        if budget is not None:
            budget = float(budget)
            if not 0.0 < budget <= 1.0:
                raise SpbenchError(f"budget must be in (0, 1], got {budget}")
            self.params["budget"] = budget
        self.validate()

    # -- declared interface -------------------------------------------------
    @classmethod
    def all_knobs(cls) -> dict[str, Knob]:
        return {**COMMON_KNOBS, **cls.knobs}

    def validate(self) -> None:
        """Check knob values; raise SpbenchError with a one-line message."""

    def plan(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Plan:
        raise NotImplementedError

    def run(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: Plan, out: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def run_into(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: Plan, out: torch.Tensor) -> torch.Tensor:
        """``run`` writing into ``out`` for any method (old ``run`` signatures included); returns ``out``."""
        check_out(q, out)
        if self.writes_out:
            result = self.run(q, k, v, plan, out=out)
            if result is out:
                return out
        else:
            result = self.run(q, k, v, plan)
        return out.copy_(result)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.run(q, k, v, self.plan(q, k, v))

    # -- helpers ------------------------------------------------------------
    @property
    def budget(self) -> float | None:
        return self.params["budget"]

    @property
    def causal(self) -> bool:
        return bool(self.params["causal"])

    def softmax_scale(self, head_dim: int) -> float:
        scale = self.params["scale"]
        return float(scale) if scale is not None else head_dim**-0.5

    def check_inputs(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        check_qkv(q, k, v)
        if self.head_dims is not None and q.shape[-1] not in self.head_dims:
            dims = ", ".join(map(str, self.head_dims))
            raise SpbenchError(f"method {self.name!r} supports head dims {dims}, got {q.shape[-1]}")

    def describe(self) -> dict[str, Any]:
        """Name and every knob value, for result records."""
        return {"method": self.name, **self.params}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


def check_out(q: torch.Tensor, out: torch.Tensor | None) -> None:
    """``out`` (if given) must have q's shape, dtype and device (any strides)."""
    if out is None:
        return
    if not isinstance(out, torch.Tensor):
        raise SpbenchError(f"out must be a tensor, got {type(out).__name__}")
    if tuple(out.shape) != tuple(q.shape) or out.dtype != q.dtype or out.device != q.device:
        raise SpbenchError(f"out must be {tuple(q.shape)} {q.dtype} on {q.device}, got {tuple(out.shape)} {out.dtype} on {out.device}")


def copy_out(result: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """``result``, or ``result`` copied into ``out`` (for methods whose kernel cannot store into it)."""
    return result if out is None else out.copy_(result)


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Validate the [batch, heads, seq, head_dim] layout and GQA head counts."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise SpbenchError(f"{name} must be [batch, heads, seq, head_dim], got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise SpbenchError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if k.shape != v.shape:
        raise SpbenchError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
        raise SpbenchError(f"q {tuple(q.shape)} and k {tuple(k.shape)} differ in batch or head_dim")
    if q.shape[1] % k.shape[1] != 0:
        raise SpbenchError(f"query heads ({q.shape[1]}) must be a multiple of KV heads ({k.shape[1]})")
