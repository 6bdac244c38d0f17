"""The VBench suite: video generation with sparse attention vs the dense video.

``spbench suite vbench --model PATH_OR_ID --methods all --budgets 0.1,0.2``
generates, for every prompt and video index, one dense reference video and
one video per method x budget with the same seed, and records per video the
end-to-end latency, the attention share of it, the measured density and the
fidelity to the dense video (PSNR, SSIM, LPIPS); then it scores every
method x budget folder with VBench in its isolated environment and records
per-dimension scores and a summary. Choices, documented:

* **Model.** ``DiffusionPipeline.from_pretrained(model, local_files_only=True)``
  from a local folder or the local Hugging Face cache; never the network.
* **Prompts.** ``standard``: VBench's own per-dimension prompt lists for the
  chosen dimensions (shipped in ``spbench/data/vbench_prompts``; their union,
  in file order), scored in VBench's ``vbench_standard`` mode. A FILE: one
  prompt a line, scored in ``custom_input`` mode (VBench cannot score the
  dimensions that need its own prompts' labels on custom prompts; those are
  reported as skipped). ``max_prompts`` keeps the first N (quick runs).
* **Seeds.** Video i of every prompt uses seed ``seed + i`` on a CPU
  ``torch.Generator``, for the dense reference and every method alike.
* **Files.** ``<run>/videos/<label>/{prompt}-{i}.mp4`` as VBench expects
  (label ``dense`` or ``<method>-b<budget>``); a ``/`` in a prompt becomes
  ``_`` and names are cut to 180 characters.
* **Dense reference.** Generated once per (model, prompt, seed, settings)
  and cached under ``<out>/_dense_cache/<key>/`` (uint8 frames + mp4 +
  timings), reused by later runs. It runs through spbench's dense
  processor (torch SDPA, the models' own math) so its attention time is
  measured like every method's. Fidelity compares uint8 frames, the saved
  video's precision.
* **Warm-up.** Before the first timed video of each method x budget (and of
  dense), one short generation (``warmup_steps`` steps, dense warm-up off so
  sparse kernels compile) is run and discarded.
* **Latency.** Wall clock of the whole pipeline call (text encoder,
  denoising, VAE decode), with CUDA synchronisation; ``speedup`` = dense
  latency / sparse latency of the same prompt and seed; ``attention_share``
  = attention time / latency. Summaries average videos; the summary
  speedup is mean dense latency / mean sparse latency.
* **Failures.** A failing video (OOM, exception) is recorded with status
  ``failed`` and its reason and the sweep goes on; a method that cannot be
  built fails its videos with the reason. Resume skips recorded videos.
* **VBench.** Scored once per folder after its videos exist; a dimension
  VBench could not score (weights missing from its local cache, an error)
  is recorded with status ``invalid``, ``skipped`` True and the reason; the
  folder's summary (keyed, so a resume does not score it again) lists the
  skipped dimensions in ``vbench_skipped`` and totals the scored ones.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from spbench.errors import SpbenchError, UnavailableError
from spbench.results import RunStore, cell_key

PROMPT_DIR = Path(__file__).resolve().parent.parent / "spbench" / "data" / "vbench_prompts"
MAX_NAME = 180


def prompt_dir() -> Path:
    """The shipped per-dimension prompt lists (package data)."""
    from importlib.resources import files

    try:
        return Path(str(files("spbench") / "data" / "vbench_prompts"))
    except Exception:  # pragma: no cover - source checkout without install
        return PROMPT_DIR


def available_dimensions() -> list[str]:
    return sorted(p.stem for p in prompt_dir().glob("*.txt"))


def standard_prompts(dimension: str) -> list[str]:
    path = prompt_dir() / f"{dimension}.txt"
    if not path.exists():
        raise SpbenchError(f"unknown VBench dimension {dimension!r}; known: {', '.join(available_dimensions())}")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_prompts(spec: str, dimensions: list[str], max_prompts: int | None = None) -> tuple[list[str], str]:
    """(prompts, VBench mode) for ``standard`` or a prompt file."""
    if spec == "standard":
        seen: dict[str, None] = {}
        for dim in dimensions:
            for prompt in standard_prompts(dim):
                seen.setdefault(prompt, None)
        prompts, mode = list(seen), "vbench_standard"
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise SpbenchError(f"--prompts {spec!r}: use 'standard' or a text file with one prompt a line")
        prompts = list(dict.fromkeys(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()))
        mode = "custom_input"
    if max_prompts is not None:
        prompts = prompts[: int(max_prompts)]
    if not prompts:
        raise SpbenchError("no prompts to generate")
    return prompts, mode


def video_name(prompt: str, index: int) -> str:
    """VBench's ``{prompt}-{index}.mp4``, made safe for a file system."""
    safe = prompt.replace("/", "_").replace("\0", "")[:MAX_NAME]
    return f"{safe}-{index}.mp4"


@dataclass
class VBenchSweep:
    model: str
    methods: list[str] = field(default_factory=lambda: ["all"])
    budgets: list[float] = field(default_factory=lambda: [0.15])
    params: dict[str, Any] = field(default_factory=dict)
    prompts: str = "standard"
    dimensions: list[str] = field(default_factory=lambda: ["temporal_flickering"])
    max_prompts: int | None = None
    videos_per_prompt: int = 1
    seed: int = 0
    height: int | None = None
    width: int | None = None
    frames: int | None = None
    steps: int | None = None
    guidance: float | None = None
    fps: int = 16
    dense_steps: float = 0.25
    dense_layers: int = 1
    reorder: str = "hilbert"
    warmup_steps: int = 2
    device: str = "auto"
    dtype: str = "auto"
    offload: bool = False
    lpips: bool = True
    vbench: bool = True
    vbench_env: str | None = None
    out: str = "results"
    run_id: str | None = None

    def generation(self) -> dict[str, Any]:
        """The settings that determine a video (besides prompt, seed and attention)."""
        return {
            "height": self.height,
            "width": self.width,
            "frames": self.frames,
            "steps": self.steps,
            "guidance": self.guidance,
        }


# -- the pipeline -----------------------------------------------------------------


def resolve_device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UnavailableError("--device cuda: no CUDA GPU is available")
    return torch.device(device)


def resolve_dtype(dtype: str, device):
    import torch

    table = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in table:
        raise SpbenchError(f"--dtype {dtype!r}: use auto, bf16, fp16 or fp32")
    return table[dtype]


def model_identity(model: str) -> str:
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


def load_pipeline(model: str, device, dtype, offload: bool = False):
    """A diffusers pipeline from a local folder or the local HF cache (never downloads)."""
    try:
        from diffusers import DiffusionPipeline
    except ImportError:
        raise UnavailableError("the vbench suite needs diffusers: pip install 'spbench[video]'") from None
    path = Path(model).expanduser()
    looks_local = path.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1
    if looks_local and not path.exists():
        raise UnavailableError(f"model path {model} does not exist")
    if path.exists() and not (path / "model_index.json").exists():
        raise UnavailableError(f"{model} is not a diffusers pipeline folder (no model_index.json)")
    try:
        pipe = DiffusionPipeline.from_pretrained(str(path) if path.exists() else model, torch_dtype=dtype, local_files_only=True)
    except (OSError, ValueError) as exc:
        if path.exists():
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UnavailableError(f"cannot load the pipeline in {model}: {first}") from None
        raise UnavailableError(
            f"model {model!r} is not in the local Hugging Face cache and spbench never downloads: "
            f"fetch it first (e.g. `huggingface-cli download {model}`) or pass a local folder"
        ) from None
    if offload and device.type == "cuda":
        pipe.enable_model_cpu_offload()
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, prompt: str, seed: int, sweep: VBenchSweep, device, steps: int | None = None):
    """(uint8 frames [F, H, W, 3], latency in seconds) of one video."""
    import torch

    from spbench.fidelity import to_uint8_video

    kwargs: dict[str, Any] = {"prompt": prompt, "output_type": "np", "generator": torch.Generator("cpu").manual_seed(int(seed))}
    for key, arg in (("height", "height"), ("width", "width"), ("frames", "num_frames"), ("guidance", "guidance_scale")):
        value = getattr(sweep, key)
        if value is not None:
            kwargs[arg] = value
    steps = steps if steps is not None else sweep.steps
    if steps is not None:
        kwargs["num_inference_steps"] = steps
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():  # not inference_mode: Triton's interpreter and some planners need version counters
        result = pipe(**kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    latency = time.perf_counter() - start
    frames = result.frames[0] if hasattr(result, "frames") else result[0][0]
    return to_uint8_video(frames), latency


def save_video(frames, path: Path, fps: int) -> Path:
    from diffusers.utils import export_to_video

    path.parent.mkdir(parents=True, exist_ok=True)
    export_to_video([f for f in frames], str(path), fps=fps)
    return path


# -- the sweep --------------------------------------------------------------------


def _label(method: str, budget: float | None) -> str:
    return "dense" if budget is None else f"{method}-b{budget:g}"


def dense_key(sweep: VBenchSweep, prompt: str, seed: int, device, dtype) -> str:
    blob = {"model": model_identity(sweep.model), "prompt": prompt, "seed": seed, **sweep.generation(), "device": device.type, "dtype": str(dtype)}
    return hashlib.sha1(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:20]


@dataclass
class Progress:
    generated: int = 0
    skipped: int = 0
    failed: int = 0
    notes: list[str] = field(default_factory=list)


def run_vbench(sweep: VBenchSweep, echo: Callable[[str], None] = print) -> tuple[RunStore, Progress]:
    """Run (or resume) the sweep; returns the store and counts."""
    import numpy as np

    from spbench.integrations import diffusers as spd
    from spbench.suites.kernel import expand_methods, method_params
    from spbench.vbench_env import DIMENSIONS, require

    for dim in sweep.dimensions:
        if dim not in DIMENSIONS:
            raise SpbenchError(f"unknown VBench dimension {dim!r}; known: {', '.join(DIMENSIONS)}")
    if sweep.videos_per_prompt < 1:
        raise SpbenchError("--videos-per-prompt must be at least 1")
    prompts, mode = load_prompts(sweep.prompts, sweep.dimensions, sweep.max_prompts)
    selected = [name for name, _ in expand_methods(sweep.methods)]
    per_method = method_params(sweep.params, selected)
    from spbench.parsing import parse_budget

    budgets = [parse_budget(b) for b in sweep.budgets]
    if sweep.vbench:
        require(sweep.vbench_env)  # fail before hours of generation, saying how to create it
    device = resolve_device(sweep.device)
    dtype = resolve_dtype(sweep.dtype, device)
    config = {k: v for k, v in asdict(sweep).items() if k not in ("out", "run_id")}
    config.update(suite="vbench", methods_resolved=selected, vbench_mode=mode, n_prompts=len(prompts))
    pipe = load_pipeline(sweep.model, device, dtype, sweep.offload)
    store = RunStore(sweep.out, sweep.run_id, label="vbench", config=config)
    done = store.done_keys()
    progress = Progress()
    videos_root = store.path / "videos"
    cache_root = Path(sweep.out) / "_dense_cache"
    jobs = [(p, i) for p in prompts for i in range(sweep.videos_per_prompt)]
    base = {
        "suite": "vbench",
        "model": sweep.model,
        "device": device.type,
        "dtype": str(dtype).replace("torch.", ""),
        **sweep.generation(),
        "dense_steps": sweep.dense_steps,
        "dense_layers": sweep.dense_layers,
        "reorder": sweep.reorder,
        "text": "joint",
    }

    def warm_up(method: str, budget: float | None, params: dict[str, Any]) -> None:
        if sweep.warmup_steps <= 0:
            return
        if budget is None:
            spd.apply(pipe, "dense", dense_steps=0, dense_layers=0, reorder="none")
        else:
            spd.apply(pipe, method, budget, dense_steps=0, dense_layers=sweep.dense_layers, reorder=sweep.reorder, **params)
        generate(pipe, prompts[0], sweep.seed, sweep, device, steps=sweep.warmup_steps)

    # 1. Dense references (cached across runs).
    dense: dict[tuple[str, int], dict[str, Any]] = {}
    warmed = False
    for prompt, index in jobs:
        seed = sweep.seed + index
        folder = cache_root / dense_key(sweep, prompt, seed, device, dtype)
        meta_file = folder / "meta.json"
        if not meta_file.exists():
            if not warmed:
                warm_up("dense", None, {})
                warmed = True
            handle = spd.apply(pipe, "dense", dense_steps=0, dense_layers=0, reorder="none")
            handle.reset()
            frames, latency = generate(pipe, prompt, seed, sweep, device)
            stats = handle.stats()
            folder.mkdir(parents=True, exist_ok=True)
            np.save(folder / "frames.npy", frames)
            meta_file.write_text(json.dumps({"latency_s": latency, "attention_s": stats["attention_s"], "prompt": prompt, "seed": seed}))
            echo(f"dense  {prompt[:60]!r} #{index}: {latency:.2f} s")
        meta = json.loads(meta_file.read_text())
        dense[(prompt, index)] = {**meta, "frames_path": folder / "frames.npy"}
    spd.remove(pipe)

    # Dense video records (and files VBench reads).
    for prompt, index in jobs:
        info = dense[(prompt, index)]
        seed = sweep.seed + index
        key_cfg = {**base, "kind": "video", "method": "dense", "budget": None, "params": {}, "prompt": prompt, "video_index": index, "seed": seed}
        key = cell_key(key_cfg)
        target = videos_root / "dense" / video_name(prompt, index)
        if not target.exists():
            save_video(np.load(info["frames_path"]), target, sweep.fps)
        if key in done:
            continue
        store.append(
            {
                **base,
                "cell_key": key,
                "status": "ok",
                "error": None,
                "record_type": "video",
                "method": "dense",
                "budget": 1.0,
                "params": {},
                "prompt": prompt,
                "video_index": index,
                "seed": seed,
                "video_path": str(target),
                "latency_s": info["latency_s"],
                "dense_latency_s": info["latency_s"],
                "speedup": 1.0,
                "attention_s": info["attention_s"],
                "attention_share": info["attention_s"] / info["latency_s"] if info["latency_s"] else None,
                "density": 1.0,
                # The reference itself: fidelity columns stay empty, not "perfect".
                "psnr": None,
                "ssim": None,
                "lpips": None,
                "lpips_status": "reference video",
            }
        )

    # 2. Every method x budget.
    from spbench.fidelity import fidelity

    for method in selected:
        for budget in budgets:
            params = per_method.get(method, {})
            label = _label(method, budget)
            pending = []
            for prompt, index in jobs:
                key_cfg = {**base, "kind": "video", "method": method, "budget": budget, "params": params, "prompt": prompt, "video_index": index, "seed": sweep.seed + index}
                key = cell_key(key_cfg)
                if key in done:
                    progress.skipped += 1
                else:
                    pending.append((prompt, index, key))
            if not pending:
                continue
            handle, build_error = None, None
            try:
                warm_up(method, budget, params)
                handle = spd.apply(pipe, method, budget, dense_steps=sweep.dense_steps, dense_layers=sweep.dense_layers, reorder=sweep.reorder, **params)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # a method that cannot run here fails its cells, the sweep goes on
                build_error = _reason(exc)
                _free_memory()
            for prompt, index, key in pending:
                seed = sweep.seed + index
                record = {
                    **base,
                    "cell_key": key,
                    "record_type": "video",
                    "method": method,
                    "budget": budget,
                    "params": handle.describe()["params"] if handle else params,
                    "prompt": prompt,
                    "video_index": index,
                    "seed": seed,
                }
                if build_error is not None:
                    store.append({**record, "status": "failed", "error": build_error})
                    progress.failed += 1
                    continue
                try:
                    handle.reset()
                    frames, latency = generate(pipe, prompt, seed, sweep, device)
                    stats = handle.stats()
                    target = save_video(frames, videos_root / label / video_name(prompt, index), sweep.fps)
                    ref = np.load(dense[(prompt, index)]["frames_path"])
                    dense_latency = dense[(prompt, index)]["latency_s"]
                    fid = fidelity(frames, ref, device=device, with_lpips=sweep.lpips)
                    record.update(
                        status="ok",
                        error=None,
                        video_path=str(target),
                        latency_s=latency,
                        dense_latency_s=dense_latency,
                        speedup=dense_latency / latency if latency > 0 else None,
                        attention_s=stats["attention_s"],
                        attention_share=stats["attention_s"] / latency if latency > 0 else None,
                        density=stats["density"],
                        method_density=stats["sparse_density"],
                        dense_steps_run=stats["dense_steps_run"],
                        **fid,
                    )
                    progress.generated += 1
                    echo(f"{label}  {prompt[:60]!r} #{index}: {latency:.2f} s, density {stats['density']:.3f}, PSNR {fid['psnr']}")
                except KeyboardInterrupt:
                    raise
                except Exception as exc:
                    record.update(status="failed", error=_reason(exc))
                    progress.failed += 1
                    _free_memory()
                store.append(record)
            spd.remove(pipe)

    # 3. VBench scores and summaries.
    labels = [("dense", None)] + [(m, b) for m in selected for b in budgets]
    summarise(store, sweep, labels, mode, base, echo)
    return store, progress


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    name = "out of memory" if "out of memory" in str(exc).lower() else type(exc).__name__
    return f"{name}: {text[0] if text else ''}".strip()


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _mean(values: list[Any]) -> float | None:
    vals = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def summarise(store: RunStore, sweep: VBenchSweep, labels: list[tuple[str, float | None]], mode: str, base: dict[str, Any], echo: Callable[[str], None]) -> None:
    """Score each method x budget folder with VBench; append dimension and summary records."""
    from spbench.vbench_env import score, vbench_total

    records = store.records()
    done = store.done_keys()
    todo = []
    for method, budget in labels:
        summary_cfg = {**base, "kind": "summary", "method": method, "budget": budget, "dimensions": sorted(sweep.dimensions) if sweep.vbench else [], "prompts": sweep.prompts, "max_prompts": sweep.max_prompts, "videos_per_prompt": sweep.videos_per_prompt, "seed": sweep.seed, "params": sweep.params}
        key = cell_key(summary_cfg)
        if key in done:
            continue
        rec_budget = 1.0 if budget is None else budget
        videos = [r for r in records if r.get("record_type") == "video" and r.get("method") == method and r.get("budget") == rec_budget]
        todo.append((method, budget, key, videos))
    if not todo:
        return
    results: dict[str, dict[str, Any]] = {}
    scoring_error = None
    if sweep.vbench:
        jobs = []
        for method, budget, _, videos in todo:
            folder = store.path / "videos" / _label(method, budget)
            if any(v.get("status") == "ok" for v in videos) and folder.is_dir():
                jobs.append({"name": _label(method, budget), "videos_path": str(folder), "dimensions": list(sweep.dimensions), "mode": mode})
        if jobs:
            echo(f"VBench: scoring {len(jobs)} folder(s) on {', '.join(sweep.dimensions)} ...")
            try:
                results = score(jobs, device="cuda" if base["device"] == "cuda" else "cpu", path=sweep.vbench_env, work_dir=store.path / "vbench")
            except SpbenchError as exc:
                scoring_error = str(exc)
    for method, budget, key, videos in todo:
        label = _label(method, budget)
        ok = [v for v in videos if v.get("status") == "ok"]
        rec_budget = 1.0 if budget is None else budget
        common = {**base, "method": method, "budget": rec_budget, "params": ok[0].get("params", {}) if ok else {}}
        scores: dict[str, float] = {}
        skipped: dict[str, str] = {}
        for dim in sweep.dimensions if sweep.vbench else []:
            res = results.get(label, {}).get(dim)
            if res is None:
                reason = scoring_error or ("no video generated" if not ok else "not scored")
                res = {"skipped": reason}
            if "score" in res:
                scores[dim] = res["score"]
                store.append(
                    {
                        **common,
                        "cell_key": cell_key({**base, "kind": "dimension", "method": method, "budget": budget, "dimension": dim, "summary": key}),
                        "status": "ok",
                        "error": None,
                        "record_type": "dimension",
                        "dimension": dim,
                        f"vbench.{dim}": res["score"],
                        "per_video": res.get("per_video", []),
                    }
                )
            else:
                skipped[dim] = res["skipped"]
                store.append({**common, "status": "invalid", "error": f"skipped: {res['skipped']}", "skipped": True, "record_type": "dimension", "dimension": dim, f"vbench.{dim}": None})
        dense_lat = _mean([v.get("dense_latency_s") for v in ok])
        lat = _mean([v.get("latency_s") for v in ok])
        lpips_values = [v.get("lpips") for v in ok]
        summary = {
            **common,
            "cell_key": key,
            "status": "ok" if ok else "failed",
            "error": None if ok else "no video of this method x budget was generated",
            "record_type": "summary",
            "videos_ok": len(ok),
            "videos_failed": len(videos) - len(ok),
            "latency_s": lat,
            "dense_latency_s": dense_lat,
            "speedup": dense_lat / lat if lat and dense_lat else None,
            "attention_s": _mean([v.get("attention_s") for v in ok]),
            "attention_share": _mean([v.get("attention_share") for v in ok]),
            "density": _mean([v.get("density") for v in ok]),
            "psnr": _mean([v.get("psnr") for v in ok]),
            "ssim": _mean([v.get("ssim") for v in ok]),
            "lpips": _mean(lpips_values) if ok and all(x is not None for x in lpips_values) else None,
            **{f"vbench.{d}": s for d, s in scores.items()},
            **(vbench_total(scores) if scores else {"vbench_total": None, "vbench_quality": None, "vbench_semantic": None}),
            "vbench_skipped": skipped,
        }
        store.append(summary)
        total = summary["vbench_total"]
        echo(f"summary {label}: speedup {summary['speedup']}, PSNR {summary['psnr']}, VBench total {total if total is None else round(total, 4)}")
