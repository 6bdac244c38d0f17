"""Test-only methods for the suite and report tests (registered by the tests, never by spbench).

``toy-sparse``: exact attention plus noise that grows as the budget shrinks,
so quality falls with the budget the way a real sparse method's does. Knobs
make it sleep (for kill tests), fail like an OOM, or emit NaN below a budget.
``toy-attention`` is the same under another name (for globs); ``toy-wrap``
composes (``toy-wrap+toy-sparse``).
"""

from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F

from spbench.method import Knob, Method
from spbench.plan import Plan

ENTRIES = {
    "toy-sparse": "suite_toy_methods:ToySparse",
    "toy-attention": "suite_toy_methods:ToyAttention",
    "toy-wrap": "suite_toy_methods:ToyWrap",
    "toy-d32": "suite_toy_methods:ToyD32",
}


def register(monkeypatch) -> None:
    """Add the toy methods to the registry for one test (monkeypatch undoes it)."""
    from spbench import registry

    for name, target in ENTRIES.items():
        monkeypatch.setitem(registry.BUILTIN, name, target)
    monkeypatch.setattr(registry, "_cache", None)


class ToySparse(Method):
    name = "toy-sparse"
    summary = "test: exact attention plus budget-dependent noise"
    knobs = {
        "sleep": Knob(0.0, "seconds to sleep in run (kill tests)"),
        "fail_below": Knob(0.0, "raise a simulated OOM below this budget"),
        "nan_below": Knob(0.0, "return NaN below this budget"),
        "noise": Knob(0.1, "noise scale at budget 0"),
    }

    def plan(self, q, k, v) -> Plan:
        self.check_inputs(q, k, v)
        return Plan(q.shape[2], k.shape[2], causal=self.causal, density=float(self.budget or 1.0))

    def run(self, q, k, v, plan) -> torch.Tensor:
        budget = float(self.budget or 1.0)
        sleep = float(self.params["sleep"])
        if sleep:
            time.sleep(sleep)
        if os.environ.get("SPBENCH_TOY_FAIL"):
            raise RuntimeError("simulated transient failure")
        if budget < self.params["fail_below"]:
            raise RuntimeError("CUDA out of memory. Tried to allocate 80.00 GiB (simulated by the toy method)")
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, enable_gqa=q.shape[1] != k.shape[1])
        gen = torch.Generator().manual_seed(1)
        out = out + (1.0 - budget) * self.params["noise"] * torch.randn(out.shape, generator=gen).to(out)
        if budget < self.params["nan_below"]:
            out[..., 0, 0] = float("nan")
        return out


class ToyAttention(ToySparse):
    name = "toy-attention"


class ToyD32(ToySparse):
    """Supports head dim 32 only: `all` must skip it on other shapes."""

    name = "toy-d32"
    head_dims = (32,)


class ToyWrap(ToySparse):
    name = "toy-wrap"

    @classmethod
    def compose(cls, inner: str, **knobs):
        from spbench.registry import get_method

        wrap = cls(**{k: v for k, v in knobs.items() if k in cls.all_knobs()})
        wrap.inner = get_method(inner, **{k: v for k, v in knobs.items() if k in ("budget", "causal", "scale")})
        return wrap
