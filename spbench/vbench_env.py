"""The isolated VBench environment and the subprocess that scores with it.

VBench 0.1.5 pins transformers 4.33 and numpy < 2, which cannot live beside
spbench's own stack (diffusers, transformers 5.x). It gets its own virtual
environment, used only through a subprocess running
:mod:`spbench.vbench_worker` (a stdlib-only script).

* Location: ``$SPBENCH_VBENCH_VENV`` or ``~/.cache/spbench/vbench-venv``.
* ``spbench vbench-env install [--path P]`` creates it: ``python -m venv``,
  then ``pip install torch==<spbench's torch version> torchvision
  vbench==0.1.5`` (same torch as spbench so the machine's wheel is reused;
  a mismatched torchvision fails to import, so pip picks the one that
  matches). A marker file records what was installed; :func:`find` trusts
  the marker, :func:`check` imports vbench for real.

VBench total (:func:`vbench_total`): VBench's scripts/constant.py and
cal_final_score.py: each dimension is min-max normalised with VBench's
bounds and multiplied by its weight; the quality score is the weighted mean
over the quality dimensions, the semantic score over the semantic ones, and
the total is ``(4 * quality + 1 * semantic) / 5``. With only some dimensions
present (spbench scores what it can), each group averages the dimensions it
has and the total uses only the groups present (a group with none drops out
and the other gets all the weight). The group scores are reported alongside.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from spbench.errors import SpbenchError, UnavailableError

VBENCH_VERSION = "0.1.5"
MARKER = "spbench-vbench.json"
ENV_VAR = "SPBENCH_VBENCH_VENV"

DIMENSIONS = (
    "subject_consistency",
    "background_consistency",
    "temporal_flickering",
    "motion_smoothness",
    "dynamic_degree",
    "aesthetic_quality",
    "imaging_quality",
    "object_class",
    "multiple_objects",
    "human_action",
    "color",
    "spatial_relationship",
    "scene",
    "appearance_style",
    "temporal_style",
    "overall_consistency",
)
QUALITY = ("subject_consistency", "background_consistency", "temporal_flickering", "motion_smoothness", "aesthetic_quality", "imaging_quality", "dynamic_degree")
SEMANTIC = ("object_class", "multiple_objects", "human_action", "color", "spatial_relationship", "scene", "appearance_style", "temporal_style", "overall_consistency")
# VBench scripts/constant.py: DIM_WEIGHT and NORMALIZE_DIC (Min, Max).
WEIGHT = {d: 1.0 for d in DIMENSIONS} | {"dynamic_degree": 0.5}
NORMALIZE = {
    "subject_consistency": (0.1462, 1.0),
    "background_consistency": (0.2615, 1.0),
    "temporal_flickering": (0.6293, 1.0),
    "motion_smoothness": (0.706, 0.9975),
    "dynamic_degree": (0.0, 1.0),
    "aesthetic_quality": (0.0, 1.0),
    "imaging_quality": (0.0, 1.0),
    "object_class": (0.0, 1.0),
    "multiple_objects": (0.0, 1.0),
    "human_action": (0.0, 1.0),
    "color": (0.0, 1.0),
    "spatial_relationship": (0.0, 1.0),
    "scene": (0.0, 0.8222),
    "appearance_style": (0.0009, 0.2855),
    "temporal_style": (0.0, 0.364),
    "overall_consistency": (0.0, 0.364),
}
QUALITY_WEIGHT, SEMANTIC_WEIGHT = 4.0, 1.0


def default_path() -> Path:
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "spbench" / "vbench-venv"


def venv_python(path: Path) -> Path:
    return path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def install_hint(path: Path | None = None) -> str:
    where = "" if path is None or Path(path) == default_path() else f" --path {path}"
    return f"create it with `spbench vbench-env install{where}` (or point ${ENV_VAR} at an existing one)"


def find(path: str | Path | None = None) -> Path | None:
    """The environment folder if it was installed completely, else None."""
    path = Path(path).expanduser() if path else default_path()
    if venv_python(path).exists() and (path / MARKER).exists():
        return path
    return None


def require(path: str | Path | None = None) -> Path:
    found = find(path)
    if found is None:
        where = Path(path).expanduser() if path else default_path()
        raise UnavailableError(f"no VBench environment at {where}: {install_hint(where if path else None)}")
    return found


def _torch_spec() -> str:
    import torch

    return f"torch=={torch.__version__.split('+')[0]}"


def install(path: str | Path | None = None, packages: list[str] | None = None, python: str | None = None, quiet: bool = True) -> Path:
    """Create (or complete) the environment; idempotent. Returns its folder."""
    path = Path(path).expanduser() if path else default_path()
    packages = packages or [_torch_spec(), "torchvision", f"vbench=={VBENCH_VERSION}"]
    python = python or _base_python()
    path.parent.mkdir(parents=True, exist_ok=True)
    if not venv_python(path).exists():
        _run([python, "-m", "venv", str(path)], "creating the virtual environment")
    pip = [str(venv_python(path)), "-m", "pip", "install"] + (["-q"] if quiet else [])
    _run(pip + packages, "installing " + " ".join(packages))
    info = check(path, marker=False)
    (path / MARKER).write_text(json.dumps({"packages": packages, **info}, indent=2))
    return path


def _base_python() -> str:
    """A Python that can make a venv: the interpreter behind the current (venv) one."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return base if Path(base).exists() else sys.executable


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise SpbenchError(f"VBench environment: {what} failed (exit {proc.returncode}): {' | '.join(tail)}")


def check(path: str | Path | None = None, marker: bool = True) -> dict[str, Any]:
    """Import vbench in the environment; versions of vbench, torch, transformers, numpy."""
    path = require(path) if marker else Path(path or default_path())
    code = (
        "import json, vbench, torch, transformers, numpy, torchvision;"
        "print(json.dumps({'vbench': getattr(vbench, '__version__', '" + VBENCH_VERSION + "'), 'torch': torch.__version__,"
        " 'torchvision': torchvision.__version__, 'transformers': transformers.__version__, 'numpy': numpy.__version__}))"
    )
    proc = subprocess.run([str(venv_python(path)), "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise UnavailableError(f"the VBench environment at {path} is broken ({last}): reinstall with `spbench vbench-env install`")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def score(jobs: list[dict[str, Any]], device: str = "cpu", path: str | Path | None = None, work_dir: str | Path | None = None, timeout: float | None = None) -> dict[str, Any]:
    """Score video folders in the environment.

    ``jobs``: ``{"name", "videos_path", "dimensions", "mode"}`` with mode
    ``vbench_standard`` (videos named after VBench's own prompts) or
    ``custom_input``. Returns ``{name: {dimension: {"score", "per_video"} |
    {"skipped": reason}}}``.
    """
    env = require(path)
    worker = Path(__file__).with_name("vbench_worker.py")
    with tempfile.TemporaryDirectory(prefix="spbench-vbench-") as tmp:
        work = Path(work_dir) if work_dir else Path(tmp) / "work"
        request, response = Path(tmp) / "request.json", Path(tmp) / "response.json"
        request.write_text(json.dumps({"jobs": jobs, "device": device, "work_dir": str(work)}))
        proc_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        proc_env.setdefault("HF_HUB_OFFLINE", "1")
        proc_env.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            proc = subprocess.run(
                [str(venv_python(env)), str(worker), str(request), str(response)],
                capture_output=True,
                text=True,
                env=proc_env,
                cwd=tmp,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise SpbenchError(f"VBench scoring timed out after {timeout} s") from None
        if proc.returncode != 0 or not response.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise SpbenchError(f"VBench scoring failed (exit {proc.returncode}): {' | '.join(tail)}")
        return {name: data["dimensions"] for name, data in json.loads(response.read_text())["jobs"].items()}


def normalized(dimension: str, value: float) -> float:
    lo, hi = NORMALIZE[dimension]
    return (value - lo) / (hi - lo)


def vbench_total(scores: dict[str, float]) -> dict[str, float | None]:
    """Quality, semantic and total score for the dimensions present (see module docstring)."""

    def group(dims) -> float | None:
        present = [d for d in dims if scores.get(d) is not None]
        if not present:
            return None
        return sum(normalized(d, scores[d]) * WEIGHT[d] for d in present) / sum(WEIGHT[d] for d in present)

    quality, semantic = group(QUALITY), group(SEMANTIC)
    parts = [(w, s) for w, s in ((QUALITY_WEIGHT, quality), (SEMANTIC_WEIGHT, semantic)) if s is not None]
    total = sum(w * s for w, s in parts) / sum(w for w, _ in parts) if parts else None
    return {"vbench_quality": quality, "vbench_semantic": semantic, "vbench_total": total}
