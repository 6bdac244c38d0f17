"""The experimental Gluon (sm_90) level-1 path: CPU compile check, support rules, GPU numerics.

* CPU: the kernel compiles for sm_90 with triton's real compiler + ptxas
  (in a child process without TRITON_INTERPRET), is warp-specialized, and
  spills at most a few scalars; skipped when triton lacks the Gluon Hopper
  API. The ``kernel=`` / ``SPBENCH_EXECUTOR_KERNEL`` switch of ``run_plan``.
* GPU (CUDA sm_90 only): outputs and LSE against the PyTorch reference over
  the supported set (levels 1/2/4/8 mixed, block_kv 64/128, tile 64/128,
  2 stages, bf16/fp16, d 64/128, ragged lengths, empty rows, GQA,
  block_q 256, epilogue), and ``run_plan``'s dispatch.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from spbench.errors import SpbenchError
from spbench.kernels import gluon_attn
from spbench.plan import Plan

needs_gluon = pytest.mark.skipif(not gluon_attn.HAVE_GLUON, reason="triton lacks the Gluon Hopper API")
on_hopper = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9
needs_sm90 = pytest.mark.skipif(not (on_hopper and gluon_attn.HAVE_GLUON), reason="needs a CUDA sm_90 GPU and Gluon")

_CHILD = r"""
import importlib.util, json, os, re, subprocess, sys, tempfile
import triton
# the kernel module by path: it imports only triton, so any Python with triton can compile it
spec = importlib.util.spec_from_file_location("gluon_attn_sm90", sys.argv[2])
gluon_attn = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = gluon_attn
spec.loader.exec_module(gluon_attn)
tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
out = []
for cfg in json.loads(sys.argv[1]):
    kernel = gluon_attn.compile_sm90(**cfg)
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(kernel.asm["cubin"])
    dump = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True, check=True).stdout
    sass = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True, check=True).stdout
    os.unlink(f.name)
    res = {k: int(v) for k, v in re.findall(r"(REG|STACK|SHARED):(\d+)", dump)}
    ptx = kernel.asm["ptx"]
    res["wait_group"] = ptx.count("wgmma.wait_group")
    res["depbar"] = sass.count("WARPGROUP.DEPBAR")
    res["setmaxnreg"] = sorted({int(x) for x in re.findall(r"setmaxnreg\.\w+\.sync\.aligned\.u32\s+(\d+)", ptx)})
    res["wgmma"] = ptx.count("wgmma.mma_async")
    res["tma"] = len(re.findall(r"cp\.async\.bulk\.tensor\.\w+\.shared::\w+\.global", ptx))  # loads
    res["tma_store"] = len(re.findall(r"cp\.async\.bulk\.tensor\.\w+\.global\.shared", ptx))
    res["st_global_16"] = len(re.findall(r"st\.global[.\w]*\.b16", ptx))
    res["shared"] = kernel.metadata.shared
    out.append(res)
print("RESULT " + json.dumps(out))
"""


#: a Python whose triton is the GPU machine's (3.6; .ci/run makes one): its compiler rejected a kernel that
#: triton 3.8 compiled (a runtime branch on a constant, session 16), so the kernel is compiled with both
DEVICE_TRITON_ENV = "SPBENCH_DEVICE_TRITON_PYTHON"


def _compilers():
    device = os.environ.get(DEVICE_TRITON_ENV)
    if not device and os.environ.get("CI") == "true":
        device = "missing"  # CI must compile with the GPU machine's triton too: fail, don't skip
    return [pytest.param(sys.executable, id="this-triton"),
            pytest.param(device, id="device-triton", marks=[] if device else pytest.mark.skip(reason=f"{DEVICE_TRITON_ENV} not set"))]


@needs_gluon
@pytest.mark.parametrize("python", _compilers())
def test_compiles_for_sm90(python):
    assert os.path.exists(python), f"{DEVICE_TRITON_ENV}={python}: no such Python (.ci/run makes one with triton 3.6)"
    configs = [
        dict(dtype="bf16", d=128, block_kv=64, block_n=128, stages=2, level_mask=15),
        dict(dtype="bf16", d=128, block_kv=64, block_n=64, stages=3, level_mask=15),
        dict(dtype="fp16", d=64, block_kv=128, block_n=64, stages=2, level_mask=11, has_scale=True, has_comp=True, return_lse=True,
             index_dtype="i32"),
        dict(dtype="bf16", d=128, block_kv=64, block_n=64, stages=3, level_mask=15, q_regs=True, return_lse=True),
        dict(dtype="bf16", d=128, block_kv=64, block_n=128, stages=2, level_mask=15, ilv=True),
        dict(dtype="bf16", d=128, block_kv=128, block_n=128, stages=2, level_mask=15, ilv=True, has_scale=True, return_lse=True),
        dict(dtype="fp16", d=128, block_kv=64, block_n=64, stages=3, level_mask=13, ilv=True, q_regs=True),
    ]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([python, "-c", _CHILD, json.dumps(configs), gluon_attn.__file__], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert results[3]["wgmma"] == results[1]["wgmma"], results  # Q in registers: same wgmma count, other operand source
    # interleaved tiles: one TMA box per load instead of one per 64-column half, and no more code (~the same wgmma)
    assert results[4]["tma"] * 2 == results[0]["tma"] and results[4]["wgmma"] == results[0]["wgmma"], results
    for cfg, res in zip(configs, results):
        # At most a few spilled scalars (measured: <= 200 bytes with every level, triton 3.6/3.8);
        # tile-sized spills would be kilobytes.
        assert res.get("STACK", 0) <= 256, (cfg, res)
        # warp-specialized: registers moved to the consumer warpgroups, TMA loads, async wgmma
        assert gluon_attn.CONSUMER_REGS in res["setmaxnreg"] and gluon_attn.LOADER_REGS in res["setmaxnreg"], res
        assert res["tma"] > 0 and res["wgmma"] > 0, res
        # the output leaves by one TMA store per consumer warpgroup, not by per-thread 16-bit stores (session 18)
        assert res["tma_store"] == 2 and res["st_global_16"] == 0, res
        assert res["shared"] <= 227 * 1024, res
        # ptxas serializes every wgmma of a kernel (a wait after each) when it cannot keep an async accumulator
        # in place, e.g. one merged across a branch; the kernel then runs ~20% slower (H200, session 15)
        assert res["depbar"] <= res["wait_group"], res


def _plan(b, h, lq, lk, bq, bk, density=0.6, seed=0, device="cpu", empty=False, pooled=False):
    """A random level map: active blocks at level 1, or at a random level 1/2/4/8 when ``pooled``."""
    nq, nk = -(-lq // bq), -(-lk // bk)
    g = torch.Generator(device=device).manual_seed(seed)
    levels = (torch.rand(b, h, nq, nk, device=device, generator=g) < density).long()
    if pooled:
        levels = levels * torch.tensor([1, 2, 4, 8], device=device)[torch.randint(0, 4, levels.shape, device=device, generator=g)]
    if empty:
        levels[:, :, 0] = 0
    return levels


def test_unsupported_reasons_cpu():
    from spbench.kernels import pyramid_gluon

    q = torch.randn(1, 2, 300, 128)
    plan = Plan.from_levels(_plan(1, 2, 300, 300, 128, 64), 300, 300, 128, 64, False)
    assert pyramid_gluon.unsupported(q, q, q, plan) is not None  # CPU tensors
    with pytest.raises(SpbenchError):
        pyramid_gluon.run_plan_gluon(q, q, q, plan)


def _layout_coords(bases, offset):
    """(row, col) of element ``offset`` under a shared linear layout: the XOR of the bases of its set bits."""
    row = col = 0
    for bit, (r, c) in enumerate(bases):
        if offset >> bit & 1:
            row, col = row ^ r, col ^ c
    return row, col


@pytest.mark.parametrize("rows, start_group, groups", [(64, 0, 1), (64, 5, 1), (64, 3, 8), (128, 5, 1), (128, 3, 8), (128, 2, 16)])
def test_interleaved_layout_matches_descriptor(rows, start_group, groups):
    """What one interleaved TMA load puts where, emulated on the CPU, against the layout the consumers read.

    The box is cut from the tensor with the host descriptor's own shape and strides (as_strided), written to
    shared memory in box order with the 128-byte swizzle (16-byte chunk XOR row within the 8-row atom), and
    every element must sit where :func:`gluon_attn._interleaved_bases` says that row and column are."""
    from spbench.kernels import gluon_attn
    from spbench.kernels.pyramid_gluon import HAVE_GLUON

    bsz, heads, length, d = 1, 3, 1000, 128
    t = torch.arange(bsz * heads * length * d).view(bsz, heads, length, d)  # each element its own index
    if HAVE_GLUON:
        from spbench.kernels.pyramid_gluon import interleaved_descriptor

        desc = interleaved_descriptor(torch.zeros(t.shape, dtype=torch.bfloat16), groups * 8)  # strides in elements
        shape, strides, box = desc.shape, desc.strides, desc.block_shape
    else:  # the same numbers spelled out
        shape, strides, box = [bsz * heads, -(-length // 8), d // 64, 8, 64], [length * d, 8 * d, 64, d, 1], [1, groups, 2, 8, 64]
    assert box == [1, groups, 2, 8, 64] and shape[1] == 125
    head = 1
    view = torch.as_strided(t, shape, strides)
    loaded = view[head, start_group:start_group + groups]  # the box at coordinates [head, start_group, 0, 0, 0]
    bases = gluon_attn._interleaved_bases(rows, d)
    tile_row0 = rows - groups * 8  # where the load lands in the tile: its last groups
    for g, h, r, c in [(g, h, r, c) for g in range(groups) for h in range(2) for r in range(8) for c in range(0, 64, 3)]:
        offset = (((tile_row0 // 8 + g) * 2 + h) * 8 + r) * 64 + ((c // 8) ^ r) * 8 + c % 8  # box order, swizzled
        row, col = _layout_coords(bases, offset)
        assert (row, col) == (tile_row0 + g * 8 + r, h * 64 + c)
        assert loaded[g, h, r, c] == t[0, head, (start_group + g) * 8 + r, h * 64 + c]


def test_interleave_switch(monkeypatch):
    """Interleaved tiles: head dim 128, a key length that is a multiple of 8 and pooled tensors with room for their
    last 8-row group; on unless pinned off."""
    from spbench.kernels import pyramid_gluon

    k = torch.zeros(1, 2, 1000, 128)
    room = torch.zeros(2 * 125 * 128 + 3 * 128)[: 2 * 125 * 128].view(1, 2, 125, 128)  # 3 rows of room: 125 -> 128
    tight = torch.zeros(1, 2, 125, 128)
    monkeypatch.delenv(pyramid_gluon.CONFIG_ENV, raising=False)
    assert pyramid_gluon.interleave_enabled() is pyramid_gluon.DEFAULT_ILV
    assert pyramid_gluon.has_group_room(room) and not pyramid_gluon.has_group_room(tight)
    assert pyramid_gluon.has_group_room(torch.zeros(1, 2, 128, 128))  # whole groups need no room
    assert pyramid_gluon.interleaves(k, [room, room]) is pyramid_gluon.DEFAULT_ILV
    assert pyramid_gluon.interleaves(k, [], ilv=True)
    assert not pyramid_gluon.interleaves(k, [room, tight], ilv=True)
    assert not pyramid_gluon.interleaves(torch.zeros(1, 2, 1001, 128), [], ilv=True)  # last group past K's end
    assert not pyramid_gluon.interleaves(torch.zeros(1, 2, 1000, 64), [], ilv=True)  # d 64: a row is one box already
    assert not pyramid_gluon.interleaves(k, [room], ilv=False)
    monkeypatch.setenv(pyramid_gluon.CONFIG_ENV, "ilv=0")
    assert not pyramid_gluon.interleaves(k, [])
    assert pyramid_gluon.interleaves(k, [], ilv=True)
    monkeypatch.setenv(pyramid_gluon.CONFIG_ENV, "ilv=2")
    with pytest.raises(SpbenchError):
        pyramid_gluon.interleave_enabled()
    monkeypatch.setenv(pyramid_gluon.CONFIG_ENV, "split=1")  # removed in session 17: a clear error, not ignored
    with pytest.raises(SpbenchError, match="malformed"):
        pyramid_gluon.interleave_enabled()


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="runs the Triton pooling kernel: interpreter only")
def test_pyramid_leaves_group_room():
    """Pooled lengths that are not a multiple of 8 get zeroed room after the V half (the Gluon kernel's interleaved
    loads read whole 8-row groups); whole groups get none."""
    from spbench.kernels.pool import build_pyramid
    from spbench.kernels.pyramid_gluon import has_group_room

    k, v = torch.randn(2, 1, 2, 1000, 128).unbind(0)  # pooled lengths 500, 250, 125
    pyr = build_pyramid(k, v)
    for p, length in ((2, 500), (4, 250), (8, 125)):
        assert pyr.k[p].shape[2] == length and has_group_room(pyr.k[p]) and has_group_room(pyr.v[p])
        t = pyr.v[p]
        room = (-length) % 8
        assert t.untyped_storage().nbytes() == (t.storage_offset() + t.numel() + room * 128) * t.element_size()
        if room:
            tail = torch.as_strided(t, (room, 128), (128, 1), t.storage_offset() + t.numel())
            assert torch.equal(tail, torch.zeros_like(tail))


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="runs the Triton kernel on CPU tensors: interpreter only")
def test_kernel_switch_cpu(monkeypatch):
    from spbench.kernels import pyramid_gluon, pyramid_triton, tuning

    lv = _plan(1, 2, 200, 200, 64, 32)
    plan = Plan.from_levels(lv, 200, 200, 64, 32, False)
    q, k, v = (torch.randn(1, 2, 200, 64) for _ in range(3))
    with pytest.raises(SpbenchError, match="must be one of"):
        pyramid_triton.run_plan(q, k, v, plan, kernel="cuda")
    with pytest.raises(SpbenchError, match="Gluon path"):
        pyramid_triton.run_plan(q, k, v, plan, kernel="gluon")
    monkeypatch.setenv(pyramid_triton.KERNEL_ENV, "gluon")
    with pytest.raises(SpbenchError, match="Gluon path"):
        pyramid_triton.run_plan(q, k, v, plan)
    monkeypatch.setenv(pyramid_triton.KERNEL_ENV, "auto")  # auto off sm_90: the Triton kernel
    pyramid_triton.run_plan(q, k, v, plan)
    assert tuning.chosen_config()["kernel"] == "triton"
    monkeypatch.setenv(pyramid_gluon.CONFIG_ENV, "block_n=64,stages=2,persistent=1,q_regs=1")
    assert pyramid_gluon.config(1000) == (64, 2, True, True)
    monkeypatch.setenv(pyramid_gluon.CONFIG_ENV, "block_n=64,q_regs=0")
    assert pyramid_gluon.config(1000) == (64, 3, True, False)
    monkeypatch.setenv(pyramid_gluon.CONFIG_ENV, "block_n=64")
    assert pyramid_gluon.config(1000) == (64, 3, True, pyramid_gluon.DEFAULT_Q_REGS[64])
    monkeypatch.setenv(pyramid_gluon.CONFIG_ENV, "block_n=64,persistent=0")
    assert pyramid_gluon.config(1000)[2] is False
    monkeypatch.setenv(pyramid_gluon.CONFIG_ENV, "persistent=0")
    assert pyramid_gluon.config(1000) == (128, 2, False, pyramid_gluon.DEFAULT_Q_REGS[128])
    for bad in ("block_n=96", "stages=4", "stages=3", "block_n=128,stages=3", "warps=4", "persistent=2", "q_regs=2", "stages",
                "stages=0", "block_n=x"):
        monkeypatch.setenv(pyramid_gluon.CONFIG_ENV, bad)
        with pytest.raises(SpbenchError):
            pyramid_gluon.config(1000)
    assert pyramid_gluon.parse_config(" block_n = 64 , q_regs=1") == {"block_n": 64, "q_regs": 1}
    monkeypatch.delenv(pyramid_gluon.CONFIG_ENV)
    # not pinned: 128-row tiles, 2 stages, Q from shared memory; a persistent grid below LONG_KV keys (measured)
    q128 = pyramid_gluon.DEFAULT_Q_REGS[128]
    assert pyramid_gluon.config(1000) == (128, 2, True, q128)
    assert pyramid_gluon.config(pyramid_gluon.LONG_KV - 1) == (128, 2, True, q128)
    assert pyramid_gluon.config(pyramid_gluon.LONG_KV) == (128, 2, False, q128)
    assert pyramid_gluon.config(110000) == (128, 2, False, q128)


GPU_CASES = [
    # (dtype, d, hq, hkv, lq, lk, block_q, block_kv, block_n, stages, extra)
    ("bfloat16", 128, 3, 3, 300, 333, 128, 64, 128, 2, {}),
    ("bfloat16", 128, 3, 3, 300, 333, 128, 64, 64, 2, {}),
    ("bfloat16", 128, 2, 2, 300, 333, 128, 128, 128, 2, {}),
    ("bfloat16", 128, 2, 2, 300, 333, 128, 128, 64, 2, {}),
    ("float16", 64, 4, 2, 257, 640, 128, 64, 128, 2, {"empty": True}),
    ("bfloat16", 128, 2, 1, 256, 190, 256, 128, 128, 2, {"epilogue": True}),
    ("float16", 128, 1, 1, 129, 4097, 128, 64, 128, 2, {"dense": True}),
    ("bfloat16", 128, 2, 2, 300, 333, 128, 64, 128, 2, {"pooled": True}),
    ("bfloat16", 128, 2, 1, 300, 1001, 128, 128, 128, 2, {"pooled": True}),
    ("float16", 64, 2, 2, 257, 517, 128, 128, 64, 2, {"pooled": True, "empty": True}),
    ("float16", 128, 2, 2, 256, 700, 256, 64, 64, 2, {"pooled": True, "epilogue": True}),
    ("bfloat16", 128, 3, 3, 300, 2049, 128, 64, 64, 3, {"pooled": True}),
    ("float16", 64, 4, 2, 257, 1517, 128, 128, 64, 3, {"pooled": True, "empty": True}),
    ("bfloat16", 128, 2, 1, 256, 700, 256, 64, 64, 3, {"pooled": True, "epilogue": True}),
    # key lengths without a ragged last block: every masked tile is a level's partly filled last tile (tail cut only)
    ("bfloat16", 128, 2, 2, 300, 1024, 128, 64, 128, 2, {"pooled": True}),
    ("bfloat16", 128, 2, 2, 300, 1024, 128, 64, 64, 3, {"pooled": True}),
    # interleaved tiles (d 128, key length a multiple of 8): 1000 keys give pooled lengths 500 / 250 / 125, whose
    # last 8-row groups of the last head run into the pyramid's zeroed room (test_pyramid_leaves_group_room)
    ("bfloat16", 128, 2, 2, 300, 1000, 128, 64, 128, 2, {"pooled": True}),
    ("float16", 128, 2, 1, 257, 1000, 256, 128, 64, 2, {"pooled": True, "epilogue": True}),
    ("bfloat16", 128, 3, 3, 257, 1000, 128, 64, 128, 2, {"only": 8}),
    ("float16", 128, 2, 1, 300, 2048, 128, 64, 64, 3, {"only": 8, "epilogue": True}),
    ("bfloat16", 128, 2, 2, 300, 1000, 128, 128, 128, 2, {}),
    ("bfloat16", 128, 4, 2, 257, 1000, 128, 64, 128, 2, {"pooled": True, "empty": True}),
    # level 8 only with a ragged key length (NVMMA tiles)
    ("bfloat16", 128, 2, 2, 300, 333, 128, 64, 128, 2, {"only": 8}),
]


def _gpu_inputs(case, seed):
    """q, k, v, the level map, the epilogue extras, the plan and the tolerance of a GPU_CASES entry."""
    dtype, d, hq, hkv, lq, lk, bq, bk, bn, stages, extra = case
    dtype = getattr(torch, dtype)
    b = 2
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(b, hq, lq, d, device="cuda", dtype=dtype, generator=g)
    k = torch.randn(b, hkv, lk, d, device="cuda", dtype=dtype, generator=g)
    v = torch.randn(b, hkv, lk, d, device="cuda", dtype=dtype, generator=g)
    levels = _plan(b, hq, lq, lk, bq, bk, device="cuda", empty=extra.get("empty", False), pooled=extra.get("pooled", False))
    if extra.get("dense"):
        levels = torch.ones_like(levels)
    if extra.get("only"):
        levels = (levels > 0).long() * extra["only"]
    extras = {}
    if extra.get("epilogue"):
        extras["row_scale"] = torch.rand(b, hq, levels.shape[2], device="cuda", generator=g) + 0.5
        extras["compensation"] = torch.randn(b, hq, levels.shape[2], d, device="cuda", generator=g)
    plan = Plan.from_levels(levels, lq, lk, bq, bk, False, extras=extras)
    return q, k, v, levels, extras, plan, 3e-2 if dtype == torch.bfloat16 else 4e-3


def _assert_reference(out, lse, q, k, v, levels, extras, case, tol):
    from spbench.kernels.reference import pyramid_attention_reference

    bq, bk, extra = case[6], case[7], case[10]
    ref, rlse = pyramid_attention_reference(q, k, v, levels, bq, bk, False, row_scale=extras.get("row_scale"),
                                            compensation=extras.get("compensation"), return_lse=True)
    assert (out.float() - ref).abs().max().item() < tol
    fin = torch.isfinite(rlse)
    assert torch.equal(fin, torch.isfinite(lse))
    if fin.any():
        assert (lse[fin] - rlse[fin]).abs().max().item() < 1e-2
    if extra.get("empty"):
        assert torch.isinf(lse[:, :, :bq]).all() and (out[:, :, :bq] == 0).all()


@needs_sm90
@pytest.mark.parametrize("q_regs", [False, True], ids=["q-smem", "q-regs"])
@pytest.mark.parametrize("programs", [0, 3], ids=["per-item", "persistent3"])
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: f"{c[0]}-d{c[1]}-bq{c[6]}-bk{c[7]}-bn{c[8]}-s{c[9]}")
def test_gluon_matches_reference(case, programs, q_regs, monkeypatch):
    """Against the reference with one program per work item, and with a persistent grid of 3 programs
    (each loops over many items: the rings and Q prefetch carry over from item to item); Q for S = Q K^T
    from shared memory or from registers."""
    from spbench.kernels import pyramid_gluon
    from spbench.kernels.pyramid_gluon import run_plan_gluon

    q, k, v, levels, extras, plan, tol = _gpu_inputs(case, 1)
    monkeypatch.setattr(pyramid_gluon, "_sm_count", lambda device: programs)
    out, lse = run_plan_gluon(q, k, v, plan, return_lse=True, block_n=case[8], stages=case[9], persistent=programs > 0, q_regs=q_regs)
    _assert_reference(out, lse, q, k, v, levels, extras, case, tol)


@needs_sm90
@pytest.mark.parametrize("case", [c for c in GPU_CASES if c[1] == 128], ids=lambda c: f"{c[0]}-bq{c[6]}-bk{c[7]}-bn{c[8]}-s{c[9]}-lk{c[5]}")
def test_gluon_interleave_both_ways(case):
    """Head dim 128 with interleaved tiles asked for and not: interleaved exactly when the key length is a
    multiple of 8; both match the reference (on another level map than test_gluon_matches_reference) and
    each other bit for bit (the same arithmetic in the same order)."""
    from spbench.kernels import tuning
    from spbench.kernels.pyramid_gluon import run_plan_gluon

    q, k, v, levels, extras, plan, tol = _gpu_inputs(case, 5)
    out, lse = run_plan_gluon(q, k, v, plan, return_lse=True, block_n=case[8], stages=case[9], ilv=True)
    assert tuning.chosen_config()["ilv"] is (case[5] % 8 == 0)
    _assert_reference(out, lse, q, k, v, levels, extras, case, tol)
    plain = run_plan_gluon(q, k, v, plan, block_n=case[8], stages=case[9], ilv=False)
    assert tuning.chosen_config()["ilv"] is False
    assert torch.equal(out, plain)


@needs_sm90
def test_run_plan_dispatch_gpu(monkeypatch):
    from spbench.kernels import pyramid_gluon, tuning
    from spbench.kernels.pyramid_triton import KERNEL_ENV, run_plan

    monkeypatch.delenv(KERNEL_ENV, raising=False)
    g = torch.Generator(device="cuda").manual_seed(3)
    q, k, v = (torch.randn(1, 2, 500, 128, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    plan = Plan.from_levels(_plan(1, 2, 500, 500, 128, 64, device="cuda"), 500, 500, 128, 64, False)
    pooled = Plan.from_levels(_plan(1, 2, 500, 500, 128, 64, device="cuda", pooled=True), 500, 500, 128, 64, False)
    tuning.pin_config("BLOCK_M=64,BLOCK_N=64,num_warps=4,num_stages=2,TMA=0")
    try:
        tri = run_plan(q, k, v, plan, kernel="triton")
        assert tuning.chosen_config()["kernel"] == "triton"
        auto = run_plan(q, k, v, plan)  # level 1 only: auto takes the Gluon path
        assert tuning.chosen_config()["kernel"] == "gluon"
        out = torch.empty(1, 500, 2, 128, device="cuda", dtype=torch.bfloat16).transpose(1, 2)  # strided out
        run_plan(q, k, v, plan, out=out, kernel="gluon")
        # the kernel TMA-stores into outs with 16-byte strides and base; into the others the result is copied
        padded = torch.empty(1, 2, 500, 136, device="cuda", dtype=torch.bfloat16)[..., :128]  # rows 272 bytes apart
        odd = torch.empty(1, 2, 500, 130, device="cuda", dtype=torch.bfloat16)[..., :128]  # rows 260 bytes apart
        shifted = torch.empty(2 * 500 * 128 + 1, device="cuda", dtype=torch.bfloat16)[1:].view(1, 2, 500, 128)  # base 2 bytes off
        assert [pyramid_gluon.tma_storable(t) for t in (out, padded, odd, shifted)] == [True, True, False, False]
        for strided in (padded, odd, shifted):
            strided.fill_(float("nan"))
            run_plan(q, k, v, plan, out=strided, kernel="gluon")
            assert torch.equal(strided, auto)
        tri_pooled = run_plan(q, k, v, pooled, kernel="triton")
        assert tuning.chosen_config()["kernel"] == "triton"
        run_plan(q, k, v, pooled)  # pooled levels: auto takes the Gluon path too (AUTO_LEVEL_MASK)
        assert tuning.chosen_config()["kernel"] == "gluon"
        gl_pooled = run_plan(q, k, v, pooled, kernel="gluon")
        assert tuning.chosen_config()["kernel"] == "gluon"
        causal = Plan.from_levels(_plan(1, 2, 500, 500, 128, 64, device="cuda"), 500, 500, 128, 64, True)
        run_plan(q, k, v, causal)  # causal: not in the Gluon set, auto falls back
        assert tuning.chosen_config()["kernel"] == "triton"
        with pytest.raises(SpbenchError):
            run_plan(q, k, v, causal, kernel="gluon")
    finally:
        tuning.pin_config(None)
    assert (auto.float() - tri.float()).abs().max().item() < 3e-2
    assert (out.float() - tri.float()).abs().max().item() < 3e-2
    assert (gl_pooled.float() - tri_pooled.float()).abs().max().item() < 3e-2
