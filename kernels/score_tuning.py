"""Launch configs of the scoring kernels (psa_score, antidiag): candidates and a per-shape autotune.

A config is a small dict of tile sizes / flags passed to the kernel as
constexprs plus ``num_warps`` and ``num_stages``. On CUDA the first call of
a shape key times every candidate on the real launch (CUDA events, best of
two after a warm-up that also compiles) and caches the fastest for the
process; later calls reuse it without any timing or host sync. Under
``TRITON_INTERPRET=1`` (and on the CPU) the caller's single small config is
used: tuning there would be far too slow and means nothing.

:func:`scorer_configs` lists what was chosen (and the timings), for run
records and benchmark reports.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from spbench.timing import event_ms

Config = dict[str, int]

_tuned: dict[tuple, Config] = {}
_timings: dict[tuple, dict[str, float]] = {}


def label(cfg: Config) -> str:
    return ",".join(f"{k}={v}" for k, v in cfg.items())


def _too_big(exc: Exception) -> bool:
    text = str(exc).lower()
    return "out of resource" in text or "shared memory" in text or "registers" in text


def pick(kernel: str, key: tuple, candidates: list[Config], launch: Callable[[Config], Any], device: torch.device) -> Config:
    """The fastest of ``candidates`` for ``(kernel, key)``; ``launch(cfg)`` runs the real kernel once.

    A candidate that does not fit the device (shared memory, registers) is
    skipped; any other error is raised. With one candidate nothing is timed.
    """
    full = (kernel, *key)
    if full in _tuned:
        return _tuned[full]
    if len(candidates) == 1:
        _tuned[full] = candidates[0]
        return candidates[0]
    timings: dict[str, float] = {}
    by_label: dict[str, Config] = {}
    for cfg in candidates:
        try:
            launch(cfg)  # compile + warm up
            timings[label(cfg)] = min(event_ms(lambda cfg=cfg: launch(cfg), device) for _ in range(2))
            by_label[label(cfg)] = cfg
        except Exception as exc:  # noqa: BLE001 - a config may not fit: skip it
            if not _too_big(exc):
                raise
    if not timings:
        raise RuntimeError(f"no {kernel} launch config fits this device")
    best = by_label[min(timings, key=timings.get)]
    _tuned[full] = best
    _timings[full] = {k: round(v, 4) for k, v in timings.items()}
    return best


def scorer_configs() -> dict[str, dict[str, Any]]:
    """Chosen config and candidate timings (ms) per tuned key, as printable strings."""
    return {" ".join(map(str, key)): {"config": label(cfg), "timings_ms": _timings.get(key, {})} for key, cfg in _tuned.items()}


def clear() -> None:
    _tuned.clear()
    _timings.clear()
