"""Launch configurations of the pyramid kernel: candidates, autotuning, pinning.

A config is the compute tile (``BLOCK_M`` query rows, ``BLOCK_N`` key rows),
``num_warps`` and ``num_stages``. The tile is decoupled from the plan's
logical blocks: ``BLOCK_M`` must divide ``block_q`` (a query block may be
split over programs), ``BLOCK_N`` is free (a tile may hold several small
pooled blocks, or part of a large one).

Selection, first match wins:

1. a pinned config: :func:`pin_config` or the environment variable
   ``SPBENCH_PYRAMID_CONFIG="BLOCK_M=128,BLOCK_N=64,num_warps=8,num_stages=3"``
   (fields left out take the default's value) - for reproducible benchmarks;
2. under ``TRITON_INTERPRET=1``: one small config (tuning there is far too slow);
3. on CUDA: the fastest candidate for the shape key, timed once with CUDA
   events on the real call and cached for the process (``tuned_configs()``).

The key is (head dim, dtype, causal, block_q, block_kv, levels present,
epilogue/lse flags, a power-of-two sequence-length bucket, dense-or-sparse).
Every length >= 64Ki shares one bucket (tuning at 110k then serves 128k);
a plan with more than half its possible entries active counts as dense-like
(long runs of adjacent blocks favour wide tiles). Tuning times each
candidate three times on the real call, once per key and process: about
0.5 s at 32k x 12 heads, about 15 s at 110k x 40 heads; pin a config to
skip it.

:func:`chosen_config` reports the config of the last launch and where it
came from, for run records (``spbench kernel``).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

from spbench.errors import SpbenchError

ENV_VAR = "SPBENCH_PYRAMID_CONFIG"


@dataclass(frozen=True)
class KernelConfig:
    BLOCK_M: int = 128
    BLOCK_N: int = 64
    num_warps: int = 8
    num_stages: int = 3
    #: 1: load contiguous K/V tiles (a level whose block holds >= BLOCK_N
    #: pooled rows) with TMA tensor descriptors instead of pointer loads
    TMA: int = 0
    #: tile rows for the pooled levels 2/4/8 (0: same as BLOCK_N); pooled
    #: tiles gather rows of several blocks, which needs more registers
    BLOCK_NP: int = 0

    def fits(self, block_q: int) -> bool:
        return self.BLOCK_M <= block_q and block_q % self.BLOCK_M == 0

    def label(self) -> str:
        return f"BLOCK_M={self.BLOCK_M},BLOCK_N={self.BLOCK_N},num_warps={self.num_warps},num_stages={self.num_stages},TMA={self.TMA},BLOCK_NP={self.BLOCK_NP}"


DEFAULT = KernelConfig(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3, TMA=1)  # best dense config measured on H100
INTERPRETER = KernelConfig(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=1, TMA=0)

# Hopper-oriented candidates (H100: 228 KB smem, wgmma wants BLOCK_M = 64*k
# per warpgroup). 128x128 tiles need 8 warps for the fp32 accumulators;
# BLOCK_M=64 with 4 warps fits two CTAs per SM, which overlaps one CTA's
# softmax with the other's MMAs. TMA loads only apply to contiguous tiles.
_CANDIDATES: dict[int, tuple[KernelConfig, ...]] = {
    128: (
        KernelConfig(128, 128, 8, 2, 1),
        KernelConfig(128, 128, 8, 3, 1),
        KernelConfig(128, 128, 8, 2, 1, BLOCK_NP=64),
        KernelConfig(128, 128, 8, 3, 0, BLOCK_NP=64),
        KernelConfig(128, 64, 8, 3, 1),
        KernelConfig(128, 64, 8, 3, 0),
        KernelConfig(128, 64, 8, 4, 1),
        KernelConfig(64, 64, 4, 2, 1),
        KernelConfig(64, 64, 4, 3, 1),
        KernelConfig(64, 64, 4, 2, 0),
    ),
    64: (
        KernelConfig(128, 128, 8, 3, 1),
        KernelConfig(128, 128, 4, 3, 1),
        KernelConfig(128, 64, 4, 3, 1),
        KernelConfig(128, 64, 4, 4, 0),
        KernelConfig(64, 64, 4, 4, 1),
        KernelConfig(64, 128, 4, 3, 1),
    ),
}
_pinned: KernelConfig | None = None
_tuned: dict[tuple, KernelConfig] = {}
_last: dict[str, Any] = {}


def parse_config(text: str) -> KernelConfig:
    """Parse ``"BLOCK_N=64,num_warps=8"`` (missing fields from the default)."""
    fields: dict[str, int] = {}
    names = {f.lower(): f for f in asdict(DEFAULT)}
    for item in text.split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        key = names.get(name.strip().lower())
        if not sep or key is None:
            raise SpbenchError(f"malformed {ENV_VAR} item {item!r}: expected one of {', '.join(names.values())} = integer")
        try:
            fields[key] = int(value)
        except ValueError:
            raise SpbenchError(f"{ENV_VAR} item {item!r} needs an integer value") from None
    return _checked(replace(DEFAULT, **fields))


def _checked(cfg: KernelConfig) -> KernelConfig:
    for name in ("BLOCK_M", "BLOCK_N", "BLOCK_NP"):
        value = getattr(cfg, name)
        if value not in (16, 32, 64, 128, 256) and not (name == "BLOCK_NP" and value == 0):
            raise SpbenchError(f"{name}={value} must be one of 16, 32, 64, 128, 256")
    if cfg.num_warps not in (1, 2, 4, 8, 16) or not 1 <= cfg.num_stages <= 8 or cfg.TMA not in (0, 1):
        raise SpbenchError(f"bad num_warps/num_stages in {cfg.label()}")
    return cfg


def pin_config(config: KernelConfig | str | None = None, **fields: int) -> KernelConfig | None:
    """Pin one config for every launch (``None`` and no fields: unpin)."""
    global _pinned
    if isinstance(config, str):
        config = parse_config(config)
    if config is None and not fields:
        _pinned = None
        return None
    _pinned = _checked(replace(config or DEFAULT, **fields))
    return _pinned


def pinned_config() -> KernelConfig | None:
    if _pinned is not None:
        return _pinned
    text = os.environ.get(ENV_VAR, "").strip()
    return parse_config(text) if text else None


def candidates(head_dim: int, block_q: int) -> list[KernelConfig]:
    pool = _CANDIDATES.get(head_dim) or _CANDIDATES[128 if head_dim > 64 else 64]
    return [c for c in pool if c.fits(block_q)] or [KernelConfig(block_q, 64, 4, 3)]


def length_bucket(length: int) -> int:
    # 2**16 = 64Ki and beyond share one bucket: there K/V of one head outgrow
    # the 50 MB L2, which changes the best tile (measured: BLOCK_M=64 wins at
    # 32k, BLOCK_M=128 at 110k).
    return min(max(length, 1).bit_length(), 17)


def select(key: tuple, head_dim: int, block_q: int, interpret: bool, time_fn: Callable[[KernelConfig], float]) -> KernelConfig:
    """Pick the config for a launch; ``time_fn(cfg)`` runs it once and returns ms."""
    pinned = pinned_config()
    if pinned is not None:
        if not pinned.fits(block_q):
            raise SpbenchError(f"pinned BLOCK_M={pinned.BLOCK_M} must divide block_q={block_q}")
        return _record(pinned, "pinned", key)
    if interpret:
        cfg = INTERPRETER if INTERPRETER.fits(block_q) else replace(INTERPRETER, BLOCK_M=block_q)
        return _record(cfg, "interpreter", key)
    if key in _tuned:
        return _record(_tuned[key], "tuned", key)
    timings: dict[KernelConfig, float] = {}
    for cfg in candidates(head_dim, block_q):
        try:
            time_fn(cfg)  # compile and warm up
            timings[cfg] = min(time_fn(cfg) for _ in range(2))
        except Exception as exc:  # a config may not compile (smem): skip it  # noqa: BLE001
            if "out of resource" not in str(exc).lower() and "shared memory" not in str(exc).lower():
                raise
    if not timings:
        raise SpbenchError("no pyramid kernel config fits this device")
    best = min(timings, key=timings.get)
    _tuned[key] = best
    _last_timings[key] = {c.label(): round(t, 4) for c, t in timings.items()}
    return _record(best, "tuned", key)


_last_timings: dict[tuple, dict[str, float]] = {}


def _record(cfg: KernelConfig, source: str, key: tuple) -> KernelConfig:
    _last.clear()
    _last.update({"config": cfg.label(), "source": source, "kernel": "triton", "key": list(map(str, key)), **asdict(cfg)})
    if key in _last_timings:
        _last["tuning_ms"] = _last_timings[key]
    return cfg


def record_launch(label: str, source: str, **fields: Any) -> None:
    """Record a launch made outside :func:`select` (the Gluon path) for :func:`chosen_config`."""
    _last.clear()
    _last.update({"config": label, "source": source, **fields})


def chosen_config() -> dict[str, Any]:
    """The config of the last launch: fields, ``source`` (pinned/tuned/interpreter) and key."""
    return dict(_last)


def forget_last() -> None:
    """Clear :func:`chosen_config` (so a caller can tell whether its call launched the executor at all)."""
    _last.clear()


def tuned_configs() -> dict[tuple, KernelConfig]:
    return dict(_tuned)


def clear_tuning() -> None:
    _tuned.clear()
    _last_timings.clear()


def log2_int(p: int) -> int:
    return int(math.log2(p))
