"""Dense baselines: SDPA (default and pinned backends) and the exact fp32 reference."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from spbench.errors import UnavailableError
from spbench.kernels.reference import exact_attention
from spbench.method import Knob, Method, check_out, copy_out
from spbench.plan import Plan


class _Dense(Method):
    sparse = False

    def plan(self, q, k, v) -> Plan:
        self.check_inputs(q, k, v)
        return Plan.dense(q.shape[2], k.shape[2], causal=self.causal)


class DenseSDPA(_Dense):
    """torch SDPA with its default backend choice."""

    name = "dense"
    aliases = ("sdpa",)
    summary = "torch SDPA, default backend choice"
    backend: ClassVar[SDPBackend | None] = None

    def run(self, q, k, v, plan, out=None) -> torch.Tensor:
        # SDPA cannot store into a given tensor: with ``out`` its result is copied there.
        check_out(q, out)
        gqa = q.shape[1] != k.shape[1]
        scale = self.params["scale"]
        if self.backend is None:
            return copy_out(F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, scale=scale, enable_gqa=gqa), out)
        with sdpa_kernel([self.backend]):
            try:
                return copy_out(F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, scale=scale, enable_gqa=gqa), out)
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise UnavailableError(f"SDPA backend {self.name!r} is unavailable for this input/device: {first}") from None


class CudnnSDPA(DenseSDPA):
    name = "cudnn"
    aliases = ("cudnn-sdpa",)
    summary = "SDPA pinned to cuDNN attention (Hopper's fastest, usually)"
    backend = SDPBackend.CUDNN_ATTENTION


class FlashSDPA(DenseSDPA):
    name = "flash"
    aliases = ("fa2", "flash-sdpa")
    summary = "SDPA pinned to its FlashAttention-2 backend"
    backend = SDPBackend.FLASH_ATTENTION


class EfficientSDPA(DenseSDPA):
    name = "efficient"
    aliases = ("mem-efficient", "xformers")
    summary = "SDPA pinned to the memory-efficient backend"
    backend = SDPBackend.EFFICIENT_ATTENTION


class Reference(_Dense):
    """Exact attention in fp32, chunked over queries (never an L x L matrix)."""

    name = "reference"
    aliases = ("exact",)
    summary = "exact fp32 attention, chunked over queries"
    knobs = {"chunk": Knob(1024, "query rows per chunk")}

    def run(self, q, k, v, plan, out=None) -> torch.Tensor:
        check_out(q, out)
        result = exact_attention(q, k, v, causal=self.causal, scale=self.params["scale"], chunk=self.params["chunk"])
        return result.to(q.dtype) if out is None else out.copy_(result)


DENSE_BACKENDS = ("cudnn", "flash", "efficient")
