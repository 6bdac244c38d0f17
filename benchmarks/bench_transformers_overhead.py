"""Overhead of spbench's transformers attention function, outside the attention itself.

    python benchmarks/bench_transformers_overhead.py --methods xattention,psa,block --budget 0.35 \\
        --out results/transformers_overhead.json

What is timed, per method, at a Qwen2.5-VL-7B video prefill shape (default:
batch 1, 32k tokens, 28 query heads, 4 KV heads, head dim 128, bf16):

* ``method``: ``m.run(q, k, v, m.plan(q, k, v))``, the method alone, on the
  same strided Q/K/V views a transformers attention layer passes (projections
  viewed as [B, L, H, D] and transposed to [B, H, L, D]);
* ``wrapper``: the attention function :func:`spbench.integrations.transformers.apply`
  registers, called exactly as a decoder layer calls it
  (``fn(module, q, k, v, None, scaling=..., sliding_window=None, position_ids=None)``)
  with a module stub, inside an open prefill record (so its CUDA events and
  statistics are paid; the record is opened and closed outside the timed
  region, as one forward's record spans all its layers), and again with
  ``timing=False``;
* ``transpose_path`` (timing on): the wrapper forced onto its old output path,
  ``method.run(...)`` then ``.transpose(1, 2).contiguous()``, instead of the
  method storing into the ``[B, L, H, D]`` buffer (``run(..., out=)``): the
  before/after of that change in one process;
* ``overhead = (wrapper - method) / method``; the target is below 5%. Two
  estimates: the difference of the medians, and the median of the paired
  per-repeat differences ``wrapper_i - method_i`` (with their 25-75%
  range), so the noise of single samples is visible;
* ``transpose``: the [B, H, L, D] -> [B, L, H, D] copy of the output alone,
  which transformers' own SDPA path pays too;
* ``dense``: transformers' SDPA attention function at the same shape, and
  torch SDPA pinned to cuDNN (the fastest dense backend on Hopper), for
  the speedup column (``cudnn / wrapper``).

Within each repeat the calls run back to back (CUDA events, L2 flushed
before each call), in an order that alternates between repeats so drift and
order effects hit both equally. No model weights are needed; lmms-eval is
not used. With ``--out`` the JSON is rewritten after every method, so a run
cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _map_checkout_packages() -> None:
    """Without an install, make the repo's kernels/, methods/, suites/ importable as spbench.* ."""
    import importlib.util

    import spbench

    for sub in ("kernels", "methods", "suites"):
        name = f"spbench.{sub}"
        if importlib.util.find_spec(name) is not None or not os.path.isdir(os.path.join(ROOT, sub)):
            continue
        spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, sub, "__init__.py"), submodule_search_locations=[os.path.join(ROOT, sub)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        setattr(spbench, sub, module)
        spec.loader.exec_module(module)


_map_checkout_packages()

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class _Config:
    """The attributes the attention function and the backbone lookup read."""

    def __init__(self, heads: int, kv_heads: int, head_dim: int):
        self.hidden_size = heads * head_dim
        self.num_attention_heads = heads
        self.num_key_value_heads = kv_heads
        self.head_dim = head_dim
        self._attn_implementation_internal = "sdpa"

    @property
    def _attn_implementation(self):
        return self._attn_implementation_internal

    @_attn_implementation.setter
    def _attn_implementation(self, value):
        self._attn_implementation_internal = value


class AttentionStub(torch.nn.Module):
    """What a transformers decoder attention layer exposes to the attention function."""

    def __init__(self, config: _Config, layer_idx: int = 0):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.is_causal = True
        self.head_dim = config.head_dim
        self.scaling = config.head_dim**-0.5
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads


class BackboneStub(torch.nn.Module):
    """A 'language model' with one attention layer, enough for ``apply`` to find and hook."""

    def __init__(self, config: _Config):
        super().__init__()
        self.config = config
        self.layers = torch.nn.ModuleList([AttentionStub(config)])


def flush_l2(buf: torch.Tensor | None) -> None:
    if buf is not None:
        buf.zero_()


def make_inputs(args, device):
    dtype = DTYPES[args.dtype]
    gen = torch.Generator(device=device).manual_seed(args.seed)
    b, l, h, hk, d = args.batch, args.seq, args.heads, args.kv_heads, args.head_dim
    # Projections come out as [B, L, H*D]; the layer views and transposes them (strided, not copied).
    q = torch.randn(b, l, h * d, generator=gen, device=device, dtype=dtype).view(b, l, h, d).transpose(1, 2)
    k = torch.randn(b, l, hk * d, generator=gen, device=device, dtype=dtype).view(b, l, hk, d).transpose(1, 2)
    v = torch.randn(b, l, hk * d, generator=gen, device=device, dtype=dtype).view(b, l, hk, d).transpose(1, 2)
    return q, k, v


def timed(fn, device, flush_buf, before=None, after=None):
    """One call's time in ms (CUDA events on the GPU, wall clock on the CPU).

    ``before`` / ``after`` run outside the timed region (after waits for the call)."""
    if before is not None:
        before()
    if device.type == "cuda":
        flush_l2(flush_buf)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        ms = start.elapsed_time(end)
    else:
        t0 = time.perf_counter()
        fn()
        ms = (time.perf_counter() - t0) * 1e3
    if after is not None:
        after()
    return ms


def quantile(values, q):
    """Linear-interpolated quantile of a non-empty list."""
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def overhead_row(m_ms, w_ms):
    """Difference of medians and median of paired differences, in ms and % of the method."""
    med_m, med_w = statistics.median(m_ms), statistics.median(w_ms)
    diffs = [w - m for w, m in zip(w_ms, m_ms)]
    paired = statistics.median(diffs)
    pct = (lambda ms: 100.0 * ms / med_m if med_m > 0 else None)
    return {
        "method_ms": med_m,
        "wrapper_ms": med_w,
        "overhead_ms": med_w - med_m,
        "overhead_pct": pct(med_w - med_m),
        "paired_overhead_ms": paired,
        "paired_overhead_pct": pct(paired),
        "paired_overhead_ms_p25_p75": [quantile(diffs, 0.25), quantile(diffs, 0.75)],
        "method_ms_all": m_ms,
        "wrapper_ms_all": w_ms,
    }


def measure_method(name, args, knobs, inputs, device, flush_buf):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from spbench.integrations import transformers as sp

    q, k, v = inputs
    config = _Config(args.heads, args.kv_heads, args.head_dim)
    backbone = BackboneStub(config)
    layer = backbone.layers[0]
    budget = None if name in ("dense", "cudnn", "flash", "efficient") else args.budget
    rows = {}
    variants = (("timing_on", True, False), ("timing_off", False, False), ("transpose_path", True, True))
    for key, timing, transpose_path in variants:
        handle = sp.apply(backbone, name, budget=budget, timing=timing, **knobs)
        if transpose_path:
            if not handle.method.writes_out:
                sp.remove(backbone)
                continue  # the same path as timing_on
            handle._output_buffer = lambda query: None  # the pre-out= path: run, then transpose copy
        fn = ALL_ATTENTION_FUNCTIONS[handle.key]
        method = handle.method

        def call_method():
            return method.run(q, k, v, method.plan(q, k, v))

        def open_record():
            # As inside the backbone's prefill forward: a record is open.
            handle._active = sp._Active(q.shape[0], q.shape[2], q.device, timing, None, handle._events)

        def close_record():
            handle._active.finish()
            handle._active = None

        def call_wrapper():
            return fn(layer, q, k, v, None, scaling=layer.scaling, sliding_window=None, position_ids=None)

        for _ in range(args.warmup):
            call_method()
            open_record()
            call_wrapper()
            close_record()
        m_ms, w_ms = [], []
        for i in range(args.repeats):
            pair = [lambda: m_ms.append(timed(call_method, device, flush_buf)),
                    lambda: w_ms.append(timed(call_wrapper, device, flush_buf, open_record, close_record))]
            for step in (pair if i % 2 == 0 else pair[::-1]):
                step()
        open_record()
        wrapped = call_wrapper()[0]
        close_record()
        if key == "timing_on":  # the two outputs agree (same kernels; only the output layout differs)
            direct = call_method()
            rows["max_abs_diff_vs_method"] = float((wrapped.transpose(1, 2).float() - direct.float()).abs().max())
            rows["density"] = float(method.plan(q, k, v).density)
            rows["params"] = dict(method.params)
            rows["writes_out"] = bool(method.writes_out)
        sp.remove(backbone)
        rows[key] = overhead_row(m_ms, w_ms)
    return rows


def cudnn_ms(q, k, v, scale, median_of):
    """torch SDPA pinned to cuDNN (GQA through enable_gqa, else K/V repeated beforehand, untimed)."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    group = q.shape[1] // k.shape[1]

    def call(kk, vv, gqa):
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            return F.scaled_dot_product_attention(q, kk, vv, is_causal=True, scale=scale, enable_gqa=gqa)

    try:
        call(k, v, group > 1)
        return median_of(lambda: call(k, v, group > 1)), "enable_gqa"
    except RuntimeError:
        kk, vv = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        try:
            call(kk, vv, False)
        except RuntimeError as exc:
            return None, f"unavailable: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        return median_of(lambda: call(kk, vv, False)), "repeated K/V"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default="dense", help="comma list of spbench method names")
    p.add_argument("--budget", type=float, default=0.35)
    p.add_argument("--param", action="append", default=[], help="knob=value for every method, or method.knob=value (repeatable)")
    p.add_argument("--seq", type=int, default=32768)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=28)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--repeats", type=int, default=100, help="paired repeats per variant (the overhead is ~1%% of a call: many are needed)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="write every figure as JSON here")
    args = p.parse_args(argv)

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from spbench.parsing import parse_list
    from spbench.suites.kernel import method_params, parse_params_items

    device = torch.device(args.device)
    names = parse_list(args.methods)
    per_method = method_params(parse_params_items(args.param), names)
    flush_buf = torch.empty(256 * 2**20 // 4, dtype=torch.float32, device=device) if device.type == "cuda" else None
    inputs = make_inputs(args, device)
    q, k, v = inputs
    layer = AttentionStub(_Config(args.heads, args.kv_heads, args.head_dim))

    def median_of(fn):
        for _ in range(args.warmup):
            fn()
        return statistics.median(timed(fn, device, flush_buf) for _ in range(args.repeats))

    out_bhld = torch.empty_like(q.transpose(1, 2).contiguous()).transpose(1, 2)  # [B, H, L, D] view, as methods return
    reference = {
        "dense_sdpa_ms": median_of(lambda: sdpa_attention_forward(layer, q, k, v, None, scaling=layer.scaling)),
        "transpose_ms": median_of(lambda: out_bhld.contiguous().transpose(1, 2).contiguous()),
    }
    if device.type == "cuda":
        reference["cudnn_ms"], reference["cudnn_gqa"] = cudnn_ms(q, k, v, layer.scaling, median_of)
    results = {}
    for name in names:
        try:
            results[name] = measure_method(name, args, per_method[name], inputs, device, flush_buf)
        except Exception as exc:  # one method failing must not lose the others' numbers
            results[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
        if args.out:
            write_json(args, device, reference, results)
        print(f"done {name}", flush=True)

    print(f"\nshape: B={args.batch} L={args.seq} Hq={args.heads} Hkv={args.kv_heads} d={args.head_dim} {args.dtype} on {device}"
          f" ({torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or 'cpu'}), {args.repeats} paired repeats")  # fmt: skip
    print(f"dense SDPA (transformers' sdpa_attention_forward): {reference['dense_sdpa_ms']:.3f} ms; cuDNN SDPA: "
          f"{_fmt(reference.get('cudnn_ms'))} ms; output transpose copy alone: {reference['transpose_ms']:.3f} ms")  # fmt: skip
    print("overhead: difference of medians / median of paired differences, % of the method's median\n")
    header = f"{'method':<14}{'density':>8}{'method ms':>11}{'wrapper ms':>12}{'timing on':>18}{'timing off':>18}{'old transpose':>18}{'vs cuDNN':>10}"
    print(header)
    print("-" * len(header))
    base = reference.get("cudnn_ms") or reference["dense_sdpa_ms"]
    for name, row in results.items():
        if "error" in row:
            print(f"{name:<14}  error: {row['error']}")
            continue
        on = row["timing_on"]
        cells = [_pair(row.get(key)) for key in ("timing_on", "timing_off", "transpose_path")]
        speedup = base / on["wrapper_ms"] if on["wrapper_ms"] > 0 else float("nan")
        worst = max(on["overhead_pct"], on["paired_overhead_pct"])
        flag = "" if worst < 5.0 else "  (over 5%)"
        print(f"{name:<14}{row['density']:>8.3f}{on['method_ms']:>11.3f}{on['wrapper_ms']:>12.3f}{cells[0]:>18}{cells[1]:>18}{cells[2]:>18}{speedup:>9.2f}x{flag}")
    if args.out:
        print(f"\nwrote {args.out}")
    return 0


def _fmt(x):
    return "n/a" if x is None else f"{x:.3f}"


def _pair(row):
    if row is None:
        return "-"
    return f"{row['overhead_pct']:.2f}/{row['paired_overhead_pct']:.2f}%"


def write_json(args, device, reference, results):
    import transformers

    payload = {
        "command": " ".join(sys.argv),
        "shape": {k: getattr(args, k) for k in ("batch", "seq", "heads", "kv_heads", "head_dim", "dtype")},
        "budget": args.budget,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()},
        "repeats": args.repeats,
        "warmup": args.warmup,
        "reference": reference,
        "methods": results,
    }
    try:
        import triton

        payload["versions"]["triton"] = triton.__version__
    except ImportError:
        pass
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(payload, f, indent=1, default=str)

if __name__ == "__main__":
    sys.exit(main())
