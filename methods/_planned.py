"""Base class of sparse methods that plan a level map and run the shared executor."""

from __future__ import annotations

from typing import Any

import torch

from spbench.errors import SpbenchError
from spbench.kernels.executor import execute
from spbench.kernels.fp8_rows import SCORE_DTYPES, use_fp8
from spbench.method import Knob, Method
from spbench.plan import Plan

BACKENDS = ("auto", "triton", "torch")

EXECUTOR_KNOB = Knob("auto", "executor backend: auto (Triton on CUDA / under TRITON_INTERPRET=1), triton, torch (reference)", BACKENDS)
SCORE_DTYPE_KNOB = Knob(
    "auto",
    "scoring precision: auto (fp8 e4m3 with per-row / per-block scales on CUDA GPUs with fp8 tensor cores for fp16/bf16 inputs, else the input dtype), fp8, input",
    SCORE_DTYPES,
)
SCORER_KNOB = Knob("auto", "scoring kernel backend: auto (Triton on CUDA / under TRITON_INTERPRET=1), triton, torch (reference)", BACKENDS)


def use_triton(backend: str, device: torch.device) -> bool:
    """Resolve a scorer backend choice for tensors on ``device``."""
    from spbench.kernels.executor import triton_available

    if backend == "torch":
        return False
    if backend == "triton":
        return True
    return triton_available(device)


def score_precision(params: dict[str, Any], q: torch.Tensor) -> str:
    """What the scorer multiplies in for these inputs (``score_dtype`` resolved): "fp8" or q's dtype; for Plan.stats."""
    fp8 = use_fp8(params["score_dtype"], q, use_triton(params["scorer"], q.device))
    return "fp8" if fp8 else str(q.dtype).removeprefix("torch.")


def check_power_of_two(name: str, value: int) -> None:
    if value < 1 or value & (value - 1):
        raise SpbenchError(f"{name} must be a power of two, got {value}")


def check_fraction(name: str, value: Any, low_open: bool = False) -> float:
    """A knob that must lie in [0, 1] ((0, 1] with ``low_open``)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise SpbenchError(f"{name} must be a number in [0, 1], got {value!r}") from None
    if value > 1.0 or value < 0.0 or (low_open and value == 0.0):
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise SpbenchError(f"{name} must be in {interval}, got {value}")
    return value


class PlannedMethod(Method):
    """A sparse planner in front of :func:`spbench.kernels.executor.execute`."""

    writes_out = True

    def run(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: Plan, out: torch.Tensor | None = None) -> torch.Tensor:
        return execute(q, k, v, plan, scale=self.params["scale"], backend=self.params["executor"], out=out)

    def plan_stats(self, **extra: Any) -> dict[str, Any]:
        """Scalar knob values (and extras) recorded in ``Plan.stats``."""
        stats = {key: value for key, value in self.params.items() if isinstance(value, (int, float, str, bool))}
        stats["method"] = self.name
        stats.update(extra)
        return stats
