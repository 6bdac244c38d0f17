"""Compile Triton kernels for an H100 (sm_90) on a machine without a GPU.

The interpreter checks what a kernel computes, not whether it compiles for
the GPU or spills registers there. :func:`sm90_resources` runs Triton's
real compiler (and the ptxas bundled with it) in a subprocess without
TRITON_INTERPRET (under the interpreter ``triton.jit`` builds interpreted
functions that cannot be compiled), with the specialisation the JIT gives a
contiguous launch: pointers and the listed ints 16-divisible, unit strides
folded to 1. It returns registers / stack bytes per thread from the cubin,
whether the loads were pipelined (async copies), the number of
butterfly shuffles (cross-lane reduction steps) in the PTX and the shared
memory per program.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

_CHILD = r"""
import json, os, re, subprocess, sys, tempfile, importlib
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

job = json.loads(sys.argv[1])
fn = getattr(importlib.import_module(job["module"]), job["kernel"])
tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
out = []
for cfg in job["configs"]:
    consts = {**cfg["constexprs"], **{name: 1 for name in job["ones"]}}
    signature, attrs = {}, {}
    pointers = {**job["pointers"], **cfg.get("pointers", {})}  # per-config pointer / descriptor types
    for idx, name in enumerate(fn.arg_names):
        if name in consts:
            signature[name] = "constexpr"
        elif name in pointers:
            signature[name] = pointers[name]
            if pointers[name].startswith("*"):
                attrs[(idx,)] = [["tt.divisibility", 16]]
        elif name in job["floats"]:
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
            if name in job["div16"]:
                attrs[(idx,)] = [["tt.divisibility", 16]]
    kernel = triton.compile(ASTSource(fn, signature, consts, attrs), target=GPUTarget("cuda", 90, 32), options=cfg["options"])
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(kernel.asm["cubin"])
    dump = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True, check=True).stdout
    os.unlink(f.name)
    res = {k: int(v) for k, v in re.findall(r"(REG|STACK):(\d+)", dump)}
    res["pipelined"] = "async_copy" in kernel.asm["ttgir"] or "async_tma_copy" in kernel.asm["ttgir"]  # cp.async or TMA
    res["shfl_bfly"] = kernel.asm["ptx"].count("shfl.sync.bfly")  # cross-lane reduction steps (static count)
    res["SHARED"] = int(kernel.metadata.shared)  # bytes of shared memory per program
    ttgir = kernel.asm["ttgir"]
    res["convert_layout"] = ttgir.count("ttg.convert_layout")  # layout changes (some go through shared memory)
    res["local_alloc"] = ttgir.count("ttg.local_alloc")  # shared-memory buffers (pipeline stages, layout round trips)
    if job.get("dump"):
        for ext in ("ttgir", "ptx"):
            with open(job["dump"] + f"_{len(out)}.{ext}", "w") as f:
                f.write(kernel.asm[ext])
    if job.get("sass"):  # static SASS counts: all instructions, warp shuffles (SHFL), transcendentals (MUFU)
        with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
            f.write(kernel.asm["cubin"])
        sass = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True, check=True).stdout
        os.unlink(f.name)
        instr = re.findall(r"/\*[0-9a-f]{4,}\*/\s+([^;]*);", sass)
        res["sass_instr"] = len(instr)
        res["sass_shfl"] = sum(1 for i in instr if "SHFL" in i)
        res["sass_mufu"] = sum(1 for i in instr if "MUFU" in i)
        res["sass_sts"] = sum(1 for i in instr if re.match(r"(@!?U?P\w+\s+)?STS", i))  # shared-memory stores (STS, STSM)
        res["sass_lds"] = sum(1 for i in instr if re.match(r"(@!?U?P\w+\s+)?LDS", i))  # shared-memory loads (LDS, LDSM; also the never-executed "@!PT LDS RZ" padding)
        res["sass_stg"] = sum(1 for i in instr if re.match(r"(@!?U?P\w+\s+)?STG", i))  # global stores
        if job.get("dump"):
            with open(job["dump"] + f"_{len(out)}.sass", "w") as f:
                f.write(sass)
    out.append(res)
print("RESULT " + json.dumps(out))
"""


def sm90_resources(module: str, kernel: str, configs: list[dict], pointers: dict, div16=(), ones=(), floats=(), sass: bool = False, dump: str = "") -> list[dict]:
    """Compile ``module.kernel`` once per config (``{"constexprs": ..., "options": ...}``) for sm_90.

    ``dump``: a path prefix; each config's TTGIR / PTX (and SASS with ``sass``) are written to ``{dump}_{i}.{ext}``.
    """
    pytest.importorskip("triton")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    job = dict(module=module, kernel=kernel, configs=configs, pointers=pointers, div16=list(div16), ones=list(ones), floats=list(floats), sass=sass, dump=dump)
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(job)], capture_output=True, text=True, env=env, timeout=600, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        if any(marker in "\n".join(tail) for marker in ("ImportError", "ModuleNotFoundError", "cuobjdump")):
            pytest.skip(f"cannot compile for sm_90 here: {tail[-1] if tail else proc.returncode}")
        raise AssertionError("sm_90 compile failed:\n" + "\n".join(tail))
    return json.loads(lines[-1][len("RESULT ") :])
