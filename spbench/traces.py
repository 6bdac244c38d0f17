"""Captured Q/K/V traces: safetensors files (never pickle).

A trace file holds tensors ``q``, ``k``, ``v`` shaped ``[B, H, L, D]`` (K/V
may have fewer heads) and string metadata (model, layer, step, grid, ...).
``trace:PATH`` names a file, or a folder whose ``*.safetensors`` files are
sorted by name and the first is used unless PATH is ``folder/name``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from spbench.errors import SpbenchError


def save_trace(path: str | Path, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, metadata: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {key: value if isinstance(value, str) else json.dumps(value) for key, value in (metadata or {}).items()}
    tensors = {name: t.detach().contiguous().cpu() for name, t in (("q", q), ("k", k), ("v", v))}
    save_file(tensors, str(path), metadata=meta)
    return path


def resolve_trace(path: Path) -> Path:
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise SpbenchError(f"no .safetensors trace files in {path}")
        return files[0]
    if not path.exists():
        raise SpbenchError(f"trace {path} does not exist")
    return path


def trace_metadata(path: str | Path) -> dict:
    with safe_open(str(resolve_trace(Path(path))), framework="pt") as f:
        return dict(f.metadata() or {})


def load_trace(path: Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"):
    """Load ``(q, k, v)`` from a trace file or folder."""
    file = resolve_trace(Path(path))
    try:
        with safe_open(str(file), framework="pt") as f:
            names = set(f.keys())
            missing = {"q", "k", "v"} - names
            if missing:
                raise SpbenchError(f"trace {file} lacks tensors {sorted(missing)}")
            out = [f.get_tensor(name) for name in ("q", "k", "v")]
    except SpbenchError:
        raise
    except Exception as exc:
        raise SpbenchError(f"cannot read trace {file}: {exc}") from None
    return tuple(t.to(device=device, dtype=dtype or t.dtype) for t in out)
