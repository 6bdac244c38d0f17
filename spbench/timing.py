"""Timing: CUDA events with warm-up and L2 flushes on the GPU, wall clock on the CPU."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

_L2_FLUSH_BYTES = 256 * 2**20  # larger than any current GPU's L2 (H100: 50 MB)
_flush_buffers: dict[torch.device, torch.Tensor] = {}


@dataclass
class Timing:
    """Median and spread (min, max, inter-quartile range) of repeated runs, in ms."""

    median_ms: float
    min_ms: float
    max_ms: float
    iqr_ms: float
    repeats: int
    clock: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def flush_l2(device: torch.device) -> None:
    """Overwrite a buffer larger than L2 so the next kernel starts cold."""
    buf = _flush_buffers.get(device)
    if buf is None:
        buf = _flush_buffers[device] = torch.empty(_L2_FLUSH_BYTES // 4, dtype=torch.float32, device=device)
    buf.zero_()


def summarize(samples: list[float], clock: str) -> Timing:
    ordered = sorted(samples)
    if len(ordered) >= 4:
        quart = statistics.quantiles(ordered, n=4)
        iqr = quart[2] - quart[0]
    else:
        iqr = ordered[-1] - ordered[0]
    return Timing(statistics.median(ordered), ordered[0], ordered[-1], iqr, len(ordered), clock)


def event_ms(fn: Callable[[], Any], device: torch.device) -> float:
    """One call of ``fn()`` between two CUDA events on ``device``'s current stream (waits for it): ms.

    For autotuners picking a launch config; benchmarks use :func:`time_fn`.
    """
    stream = torch.cuda.current_stream(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record(stream)
    fn()
    end.record(stream)
    end.synchronize()
    return start.elapsed_time(end)


def time_fn(fn: Callable[[], Any], device: torch.device | str, repeats: int = 10, warmup: int = 3, flush: bool = True) -> Timing:
    """Time ``fn()`` ``repeats`` times after ``warmup`` calls.

    On CUDA each repeat is bracketed by CUDA events, with L2 flushed before
    it (outside the events). On the CPU the wall clock is used.
    """
    device = torch.device(device)
    for _ in range(max(0, warmup)):
        fn()
    samples: list[float] = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
        for i in range(repeats):
            if flush:
                flush_l2(device)
            starts[i].record()
            fn()
            ends[i].record()
        torch.cuda.synchronize(device)
        samples = [s.elapsed_time(e) for s, e in zip(starts, ends)]
        return summarize(samples, "cuda-events")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return summarize(samples, "wall")
