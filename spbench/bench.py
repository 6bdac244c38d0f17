"""One kernel-benchmark cell: build a workload, plan, run, time, compare.

Used by ``spbench kernel`` (one cell) and ``spbench suite kernel`` (many).
A cell never raises for a failure of the method under test: errors and
out-of-memory are returned as a record with ``status="failed"`` and the
reason, NaN/Inf outputs as ``status="invalid"``. Bad input (unknown method,
bad knob, shape too large for the CPU) raises :class:`SpbenchError` before
any work, so the CLI can print one line and exit 2.
"""

from __future__ import annotations

import gc
import math
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from spbench.errors import SpbenchError, UnavailableError
from spbench.kernels.reference import attention_flops
from spbench.metrics import quality_vs_exact
from spbench.registry import canonical_name, get_class, get_method
from spbench.results import cell_key
from spbench.timing import Timing, time_fn

DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}
DENSE_BACKENDS = ("cudnn", "flash", "efficient")
#: The CPU path computes real attention; above this many (query, key, head) triples it would take minutes.
CPU_MAX_WORK = 2**31


@dataclass
class KernelCell:
    """Everything that defines one kernel measurement."""

    method: str
    seq: int
    budget: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    workload: str = "video"
    kv_seq: int | None = None
    batch: int = 1
    heads: int = 40
    kv_heads: int | None = None
    head_dim: int = 128
    dtype: str = "bf16"
    causal: bool = False
    device: str = "cuda"
    grid: tuple[int, int, int] | None = None
    seed: int = 0
    repeats: int = 10
    warmup: int = 3
    error_rows: int = 256

    def __post_init__(self) -> None:
        self.kv_heads = self.kv_heads or self.heads
        self.kv_seq = self.kv_seq or self.seq
        if self.grid is not None:
            self.grid = tuple(self.grid)  # type: ignore[assignment]

    def shape_key(self) -> dict[str, Any]:
        """What identifies the workload and shape (the dense baseline is shared by it)."""
        return {k: getattr(self, k) for k in ("workload", "seq", "kv_seq", "batch", "heads", "kv_heads", "head_dim", "dtype", "causal", "device", "grid", "seed")}

    def key(self) -> str:
        config = asdict(self)
        config.pop("repeats"), config.pop("warmup")
        return cell_key(config)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UnavailableError("--device cuda was asked for but no CUDA GPU is visible (use --device cpu)")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise SpbenchError(f"unknown device {name!r}: use auto, cpu or cuda[:N]")
    return torch.device(name)


def validate(cell: KernelCell) -> None:
    """Reject bad input with one line, before any work."""
    if cell.dtype not in DTYPES:
        raise SpbenchError(f"unknown dtype {cell.dtype!r}: use bf16, fp16 or fp32")
    for name in ("batch", "heads", "kv_heads", "head_dim", "repeats"):
        if getattr(cell, name) <= 0:
            raise SpbenchError(f"--{name.replace('_', '-')} must be positive")
    if cell.heads % cell.kv_heads:
        raise SpbenchError(f"--heads ({cell.heads}) must be a multiple of --kv-heads ({cell.kv_heads})")
    if cell.budget is not None and not 0.0 < cell.budget <= 1.0:
        raise SpbenchError(f"budget must be in (0, 1], got {cell.budget}")
    cls = get_class(cell.method.partition("+")[0])
    if cls.head_dims is not None and cell.head_dim not in cls.head_dims:
        raise SpbenchError(f"method {cls.name!r} supports head dims {', '.join(map(str, cls.head_dims))}, got {cell.head_dim}")
    if not (cell.workload in ("random", "video") or cell.workload.startswith("trace:")):
        raise SpbenchError(f"unknown workload {cell.workload!r}: use random, video or trace:PATH")
    if cell.device == "cpu":
        work = cell.batch * cell.heads * cell.seq * cell.kv_seq
        if work > CPU_MAX_WORK:
            raise SpbenchError(
                f"shape too large for the CPU path ({cell.batch}x{cell.heads} heads x {cell.seq} x {cell.kv_seq}); "
                "use --device cuda, or e.g. --seq 4k --heads 4 on the CPU"
            )


def make_inputs(cell: KernelCell, device: torch.device):
    from spbench.workloads import make_qkv

    q, k, v = make_qkv(cell.workload, cell.batch, cell.heads, cell.kv_heads, cell.seq, cell.head_dim, DTYPES[cell.dtype], device, cell.seed, cell.grid, kv_seq=cell.kv_seq)
    return q, k, v


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return "out of memory: " + str(exc).strip().splitlines()[0][:200]
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}".rstrip(": ")


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _peak_reset(device: torch.device) -> int:
    if device.type != "cuda":
        return 0
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def _peak_mb(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def time_dense(q, k, v, cell: KernelCell, device: torch.device) -> dict[str, Any]:
    """Time every dense SDPA backend available here; report each and the fastest."""
    flops = attention_flops(cell.batch, cell.heads, cell.seq, cell.kv_seq, cell.head_dim, cell.causal)
    names = DENSE_BACKENDS if device.type == "cuda" else ("dense",)
    backends: dict[str, Any] = {}
    for name in names:
        method = get_method(name, causal=cell.causal)
        plan = method.plan(q, k, v)
        try:
            base = _peak_reset(device)
            timing = time_fn(lambda: method.run(q, k, v, plan), device, cell.repeats, cell.warmup)
            peak = _peak_mb(device)
            backends[name] = {"ms": timing.median_ms, "iqr_ms": timing.iqr_ms, "tflops": flops / timing.median_ms / 1e9, "peak_mem_mb": peak, "extra_mem_mb": None if peak is None else peak - base / 2**20}
        except Exception as exc:  # an unavailable backend is a fact to record, not a failure
            backends[name] = {"error": _describe_error(exc)}
        _free(device)
    timed = {n: b for n, b in backends.items() if "ms" in b}
    if not timed:
        raise UnavailableError("no dense SDPA backend ran on this device: " + "; ".join(f"{n}: {b['error']}" for n, b in backends.items()))
    fastest = min(timed, key=lambda n: timed[n]["ms"])
    return {"backends": backends, "fastest": fastest, "ms": timed[fastest]["ms"], "tflops": timed[fastest]["tflops"], "peak_mem_mb": timed[fastest]["peak_mem_mb"]}


def dense_baseline(cell: KernelCell, inputs, device: torch.device, dense_cache: dict[str, Any] | None = None) -> dict[str, Any]:
    """The dense timing of the cell's shape (from ``dense_cache`` when already measured).

    Raises like :func:`time_dense`; the suite calls it first on each shape to
    learn the fastest backend before recording the baseline cell.
    """
    shape = str(sorted(cell.shape_key().items()))
    if dense_cache is not None and shape in dense_cache:
        return dense_cache[shape]
    q, k, v = inputs
    dense = time_dense(q, k, v, cell, device)
    if cell.workload == "video":
        from spbench.workloads import block_mass_concentration

        dense["block_mass_top10"] = block_mass_concentration(q, k, causal=cell.causal, seed=cell.seed)
    if dense_cache is not None:
        dense_cache[shape] = dense
    return dense


def _run_recording_executor(method, q, k, v, plan, record: dict[str, Any]):
    """``method.run`` once more; which executor kernel (Triton / Gluon) and launch config ran goes to ``record["executor"]``."""
    from spbench.kernels import tuning  # noqa: PLC0415

    tuning.forget_last()
    out = method.run(q, k, v, plan)
    launched = tuning.chosen_config()  # empty: no pyramid-kernel launch (dense, torch reference executor)
    record["executor"] = {key: launched[key] for key in ("kernel", "config", "source") if key in launched} or None
    return out


def run_cell(cell: KernelCell, dense_cache: dict[str, Any] | None = None, inputs=None) -> dict[str, Any]:
    """Measure one cell and return its record (see module docstring)."""
    validate(cell)
    device = resolve_device(cell.device)
    method_name = canonical_name(cell.method.partition("+")[0]) + ("+" + cell.method.partition("+")[2] if "+" in cell.method else "")
    knobs = dict(cell.params)
    if cell.budget is not None:
        knobs["budget"] = cell.budget
    method = get_method(method_name, causal=cell.causal, **knobs)  # bad knobs raise SpbenchError here
    record: dict[str, Any] = {
        "suite": "kernel",
        "cell_key": cell.key(),
        **{k: v for k, v in asdict(cell).items() if k not in ("params",)},
        "method": method_name,
        "params": {k: v for k, v in method.params.items() if k not in ("budget", "causal")},
        "status": "ok",
        "error": None,
        "started": time.time(),
    }
    record["grid"] = list(cell.grid) if cell.grid else None
    flops = attention_flops(cell.batch, cell.heads, cell.seq, cell.kv_seq, cell.head_dim, cell.causal)
    try:
        q, k, v = inputs if inputs is not None else make_inputs(cell, device)
        if cell.workload == "video" and cell.grid is None:
            from spbench.workloads import grid_for_seq

            record["grid"] = list(grid_for_seq(cell.seq))
        dense = dense_baseline(cell, (q, k, v), device, dense_cache)
        record["dense_backend"] = dense["fastest"]
        record["dense_ms"] = dense["ms"]
        record["dense_tflops"] = dense["tflops"]
        record["dense_peak_mem_mb"] = dense["peak_mem_mb"]
        record["dense_backends"] = dense["backends"]
        record["block_mass_top10"] = dense.get("block_mass_top10")

        base = _peak_reset(device)
        plan_holder: dict[str, Any] = {}

        def do_plan():
            plan_holder["plan"] = method.plan(q, k, v)

        plan_t: Timing = time_fn(do_plan, device, cell.repeats, cell.warmup)
        plan = plan_holder["plan"]
        run_t: Timing = time_fn(lambda: method.run(q, k, v, plan), device, cell.repeats, cell.warmup)
        out = _run_recording_executor(method, q, k, v, plan, record)
        record["peak_mem_mb"] = _peak_mb(device)
        record["extra_mem_mb"] = None if record["peak_mem_mb"] is None else record["peak_mem_mb"] - base / 2**20
        record.update(
            plan_ms=plan_t.median_ms,
            plan_iqr_ms=plan_t.iqr_ms,
            run_ms=run_t.median_ms,
            run_iqr_ms=run_t.iqr_ms,
            run_min_ms=run_t.min_ms,
            run_max_ms=run_t.max_ms,
            clock=run_t.clock,
            total_ms=plan_t.median_ms + run_t.median_ms,
        )
        record["density"] = float(plan.density)
        record["plan_stats"] = plan.summary()
        record["speedup_run"] = dense["ms"] / run_t.median_ms
        record["speedup_total"] = dense["ms"] / (plan_t.median_ms + run_t.median_ms)
        record["plan_share"] = plan_t.median_ms / dense["ms"]
        record["tflops_effective"] = flops / run_t.median_ms / 1e9  # dense-equivalent FLOPs per second
        record["tflops_actual"] = flops * plan.density / run_t.median_ms / 1e9
        if not bool(torch.isfinite(out).all()):
            record["status"] = "invalid"
            record["error"] = "output contains NaN or Inf"
        record.update(quality_vs_exact(q, k, v, out, cell.causal, method.params.get("scale"), cell.error_rows, cell.seed))
        if not all(math.isfinite(record[m]) for m in ("rel_l2", "cosine", "max_abs")):
            record["status"] = "invalid"
            record["error"] = record["error"] or "error metrics are not finite"
        del out, plan, plan_holder
    except SpbenchError as exc:
        record.update(status="failed", error=str(exc), error_kind="unavailable" if isinstance(exc, UnavailableError) else "input")
    except Exception as exc:  # the method under test failed: record why, keep going
        record.update(status="failed", error=_describe_error(exc), error_kind="runtime", traceback=traceback.format_exc(limit=6)[-2000:])
    finally:
        _free(device)
    record["finished"] = time.time()
    return record
