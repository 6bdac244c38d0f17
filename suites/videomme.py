"""The Video-MME suite: lmms-eval's Video-MME task, dense and every method x budget.

``spbench suite videomme --model PATH_OR_ID --methods all --budgets 0.2,0.35``
answers the Video-MME questions once with dense attention and once per
(method, budget) with the spbench method in the language model's prefill
(:mod:`spbench.integrations.transformers` through the lmms-eval wrapper
:mod:`spbench.integrations.lmms`), and records one cell per run in a results
run (``spbench.results.RunStore``). Choices, documented:

* **Data, offline only.** ``--data-dir`` is a local copy of the
  ``lmms-lab/Video-MME`` dataset with its videos unpacked: the question table
  ``videomme/test-*.parquet`` (or any ``*.parquet`` below the folder) and the
  videos in ``data/<videoID>.mp4`` (``.MP4``/``.mkv`` accepted, as lmms-eval
  does; or directly in the folder). Without it, the table comes from the
  local Hugging Face hub cache of ``lmms-lab/Video-MME`` and the videos from
  ``$HF_HOME/videomme/data``, where lmms-eval unpacks them. Nothing is
  downloaded: every run sets ``HF_HUB_OFFLINE=1`` and ``HF_DATASETS_OFFLINE=1``.
* **The question set** is prepared once per run, before any cell: every
  video is opened and its first and last frames decoded (decord, the reader
  the model uses). Questions whose video is missing or does not decode are
  left out of *every* cell, with a note and the list in
  ``videomme/skipped.json``, so all cells answer the same questions. The
  prepared table (with an absolute ``video_path`` column) is
  ``videomme/questions.parquet`` in the run folder.
* ``--limit N`` keeps N questions spread over the durations: short, medium
  and long questions are taken in turn, each in table order (lmms-eval's own
  ``--limit`` takes the first N, which in Video-MME are all short).
* **The task** is lmms-eval's ``videomme`` (prompt, answer extraction,
  scoring) with the data source replaced; see
  :mod:`spbench.integrations.lmms.videomme_task`.
* **One process per cell** (``python -m spbench.integrations.lmms.worker``,
  or ``accelerate launch --num_processes N`` with ``--num-processes N``), so
  an out-of-memory error or an exit inside lmms-eval fails that cell only and
  the next starts with a clean GPU. Its output goes to ``logs/<cell>.log``.
* **Cells.** The dense baseline first (``method=dense``, SDPA through the same
  wrapper, so its timings are measured the same way), then each method at
  each budget (dense methods named explicitly run once, without a budget).
  ``--methods`` and ``--param`` work as in ``spbench suite kernel``.
* **Records** (one per cell, see :func:`cell_record`): accuracy (percent, as
  lmms-eval reports Video-MME) overall, per duration and per task category,
  from the logged samples; mean prefill time of the language model
  (``prefill_s``) and of the whole model forward incl. the vision encoder
  (``prefill_total_s``); the dense baseline's, and the speedup over the
  questions both answered; attention share of prefill time; the measured
  density (FLOP-weighted over every prefill attention call; dense fallbacks
  count 1). The per-question log (answer, prediction, tokens, times,
  density) is ``samples/<cell>.jsonl`` in the run folder.
* **Status.** ``failed``: the evaluation stopped (the reason is the worker's
  one-line error); ``invalid``: it finished but answered fewer questions than
  asked, or a sparse method never ran sparse (all prefills fell back to
  dense); ``ok`` otherwise. A failed cell never stops the sweep.
* **Resume.** Cells are keyed by everything that defines them (model,
  question set, frames, pixels, dtype, method, budget, knobs); re-running a
  run id skips recorded cells and runs the rest, new methods included.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spbench.errors import SpbenchError, UnavailableError
from spbench.results import cell_key

SUITE = "videomme"
DEFAULT_BUDGETS = (0.1, 0.2, 0.35, 0.5)
DEFAULT_FRAMES = 32
DURATIONS = ("short", "medium", "long")
HUB_DATASET = "lmms-lab/Video-MME"
MODEL_NAME = "spbench_qwen2_5_vl"
REQUIRED_COLUMNS = ("videoID", "question_id", "duration", "domain", "sub_category", "task_type", "question", "options", "answer")
VIDEO_SUFFIXES = (".mp4", ".MP4", ".mkv")
DATA_DIR = "videomme"  # inside the run folder: prepared questions, task, skipped list, cell folders


@dataclass
class VideoMMESweep:
    """A resolved sweep (every value that defines its cells, plus how to run them)."""

    model: str
    methods: list[str] = field(default_factory=lambda: ["all"])
    budgets: list[float] = field(default_factory=lambda: list(DEFAULT_BUDGETS))
    params: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    frames: int = DEFAULT_FRAMES
    max_pixels: int | None = None
    min_pixels: int | None = None
    limit: int | None = None
    num_processes: int = 1
    batch_size: int = 1
    device: str = "auto"
    device_map: str | None = None
    dtype: str = "auto"
    use_cache: str | None = None
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolved_dtype(self) -> str | None:
        """None keeps the stock model's bfloat16; on the CPU auto means float32."""
        if self.dtype == "auto":
            return "float32" if self.resolved_device() == "cpu" else None
        return self.dtype

    def validate(self) -> None:
        if self.frames < 2:
            raise SpbenchError(f"--frames must be at least 2 (qwen-vl-utils samples frames in pairs), got {self.frames}")
        for name in ("max_pixels", "min_pixels", "limit"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise SpbenchError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if self.max_pixels and self.min_pixels and self.min_pixels > self.max_pixels:
            raise SpbenchError(f"--min-pixels {self.min_pixels} is larger than --max-pixels {self.max_pixels}")
        if self.num_processes < 1 or self.batch_size < 1:
            raise SpbenchError("--num-processes and --batch-size must be at least 1")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise SpbenchError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        if self.num_processes > 1 and self.resolved_device() == "cpu":
            raise SpbenchError("--num-processes > 1 needs CUDA GPUs (one process per GPU)")


# -- the question set ---------------------------------------------------------------------


def _parquets(root: Path) -> list[Path]:
    for pattern in ("videomme/test-*.parquet", "test-*.parquet", "**/*.parquet"):
        found = sorted(p for p in root.glob(pattern) if p.is_file())
        if found:
            return found
    return []


def locate_data(data_dir: str | None) -> tuple[list[Path], Path, str]:
    """(question tables, video folder, where they came from) or a clear error."""
    if data_dir:
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            raise UnavailableError(f"--data-dir {data_dir} does not exist")
        tables = _parquets(root)
        if not tables:
            raise UnavailableError(f"--data-dir {data_dir} has no question table (expected videomme/test-*.parquet, as in lmms-lab/Video-MME)")
        videos = root / "data" if (root / "data").is_dir() else root
        return tables, videos, str(root)
    hf_home = Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser()
    snapshot = None
    try:
        from huggingface_hub import snapshot_download

        snapshot = Path(snapshot_download(HUB_DATASET, repo_type="dataset", local_files_only=True))
    except Exception:  # not in the cache (or no huggingface_hub): explained below
        snapshot = None
    tables = _parquets(snapshot) if snapshot else []
    if not tables:
        raise UnavailableError(
            f"Video-MME is not available offline: no --data-dir given and no {HUB_DATASET} in the local Hugging Face cache. "
            "Pass --data-dir DIR with videomme/test-*.parquet and data/<videoID>.mp4 (a copy of lmms-lab/Video-MME with its videos unpacked)"
        )
    for videos in (hf_home / "videomme" / "data", snapshot / "data"):
        if videos.is_dir():
            return tables, videos, f"{HUB_DATASET} (HF cache)"
    raise UnavailableError(
        f"found the {HUB_DATASET} question table in the HF cache but no unpacked videos in {hf_home / 'videomme' / 'data'}; "
        "unpack the video archives there (as lmms-eval does) or pass --data-dir"
    )


def load_questions(tables: list[Path]):
    import pandas as pd

    try:
        df = pd.concat([pd.read_parquet(p) for p in tables], ignore_index=True)
    except Exception as exc:
        raise SpbenchError(f"cannot read the question table {tables[0]}: {exc}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise SpbenchError(f"question table {tables[0]} lacks Video-MME column(s) {', '.join(missing)}")
    if df.empty:
        raise SpbenchError(f"question table {tables[0]} has no questions")
    return df


def check_labels(df) -> None:
    """lmms-eval's aggregation only knows its own duration/domain/sub-category/task labels (KeyError otherwise)."""
    from lmms_eval.tasks.videomme import utils as stock  # noqa: PLC0415 - heavy, only when preparing a run

    allowed = {"duration": stock.VIDEO_TYPE, "domain": stock.CATEGORIES, "sub_category": stock.SUB_CATEGORIES, "task_type": stock.TASK_CATEGORIES}
    for column, values in allowed.items():
        bad = sorted(set(map(str, df[column])) - set(values))
        if bad:
            raise SpbenchError(f"question table has {column} value(s) lmms-eval's Video-MME task does not know: {', '.join(bad[:5])}")


def select_questions(df, limit: int | None):
    """All questions, or ``limit`` of them taken from each duration in turn (table order within one)."""
    if limit is None or limit >= len(df):
        return df.reset_index(drop=True)
    order = [d for d in DURATIONS if d in set(df["duration"])] + sorted(set(df["duration"]) - set(DURATIONS))
    queues = {d: list(df.index[df["duration"] == d]) for d in order}
    picked: list[int] = []
    while len(picked) < limit:
        for d in order:
            if queues[d] and len(picked) < limit:
                picked.append(queues[d].pop(0))
    return df.loc[sorted(picked)].reset_index(drop=True)


def find_video(video_dir: Path, video_id: str) -> Path:
    for suffix in VIDEO_SUFFIXES:
        path = video_dir / f"{video_id}{suffix}"
        if path.exists():
            return path
    return video_dir / f"{video_id}.mp4"


def attach_videos(df, video_dir: Path, cache_file: Path | None = None):
    """(questions whose video decodes, with ``video_path``; skipped videos with reasons)."""
    from spbench.integrations.lmms.local import probe_video

    cache: dict[str, Any] = {}
    if cache_file is not None and cache_file.exists():
        try:
            cache = json.loads(cache_file.read_text())
        except json.JSONDecodeError:
            cache = {}
    reasons: dict[str, str | None] = {}
    paths: dict[str, str] = {}
    for video_id in dict.fromkeys(map(str, df["videoID"])):
        path = find_video(video_dir, video_id)
        paths[video_id] = str(path.resolve()) if path.exists() else str(path)
        stamp = f"{path.stat().st_size}:{path.stat().st_mtime_ns}" if path.exists() else "missing"
        hit = cache.get(paths[video_id])
        if hit is not None and hit.get("stamp") == stamp:
            reasons[video_id] = hit.get("reason")
            continue
        reasons[video_id] = probe_video(path)
        cache[paths[video_id]] = {"stamp": stamp, "reason": reasons[video_id]}
    if cache_file is not None:
        cache_file.write_text(json.dumps(cache, indent=1))
    skipped = [{"videoID": v, "path": paths[v], "reason": r, "questions": int((df["videoID"].astype(str) == v).sum())} for v, r in reasons.items() if r]
    keep = df[[reasons[str(v)] is None for v in df["videoID"]]].copy()
    keep["video_path"] = [paths[str(v)] for v in keep["videoID"]]
    return keep.reset_index(drop=True), skipped


@dataclass
class PreparedData:
    """The question set of a run, written to the run folder."""

    table: Path
    task_dir: Path
    questions: int
    digest: str
    subset: str
    source: str
    skipped: list[dict[str, Any]]


def prepare_data(sweep: VideoMMESweep, run_dir: Path, notes: list[str] | None = None) -> PreparedData:
    from spbench.integrations.lmms.videomme_task import write_task

    notes = notes if notes is not None else []
    tables, video_dir, source = locate_data(sweep.data_dir)
    df = load_questions(tables)
    check_labels(df)
    total = len(df)
    df = select_questions(df, sweep.limit)
    folder = run_dir / DATA_DIR
    folder.mkdir(parents=True, exist_ok=True)
    df, skipped = attach_videos(df, video_dir, cache_file=folder / "probe.json")
    (folder / "skipped.json").write_text(json.dumps(skipped, indent=1))
    if skipped:
        lost = sum(s["questions"] for s in skipped)
        first = skipped[0]
        notes.append(f"left out {lost} question(s) of {len(skipped)} video(s) that are missing or do not decode (e.g. {first['path']}: {first['reason']}); list in {folder / 'skipped.json'}")
    if df.empty:
        raise UnavailableError(f"no question of the selected {min(total, sweep.limit or total)} has a readable video under {video_dir}")
    table = folder / "questions.parquet"
    df.to_parquet(table, index=False)
    digest = hashlib.sha1("\n".join(map(str, df["question_id"])).encode()).hexdigest()[:12]
    subset = "full" if len(df) == total else f"{len(df)} of {total}"
    return PreparedData(table, write_task(folder / "task", table), len(df), digest, subset, source, skipped)


# -- cells ---------------------------------------------------------------------------------


@dataclass
class VideoCell:
    """One evaluation: a method (with budget and knobs) on the run's question set."""

    method: str
    budget: float | None
    params: dict[str, Any]
    role: str  # "baseline" (the dense reference) or "method"
    key: str = ""

    def describe(self) -> str:
        if self.role == "baseline":
            return "dense baseline"
        return self.method + (f" b={self.budget:g}" if self.budget is not None else "") + "".join(f" {k}={v}" for k, v in sorted(self.params.items()))

    @property
    def slug(self) -> str:
        name = "dense" if self.role == "baseline" else self.method.replace("+", "_")
        budget = f"-b{self.budget:g}" if self.budget is not None else ""
        return f"{name}{budget}-{self.key[:8]}"


def cell_config(sweep: VideoMMESweep, data: PreparedData, method: str, budget: float | None, params: dict[str, Any], role: str) -> dict[str, Any]:
    return {
        "suite": SUITE,
        "role": role,
        "model": sweep.model,
        "questions": data.digest,
        "frames": sweep.frames,
        "max_pixels": sweep.max_pixels,
        "min_pixels": sweep.min_pixels,
        "dtype": sweep.resolved_dtype(),
        "batch_size": sweep.batch_size,
        "method": method,
        "budget": budget,
        "params": params,
    }


def selected_runs(sweep: VideoMMESweep) -> list[tuple[str, float | None, dict[str, Any]]]:
    """(method, budget, knobs) of every method cell; unknown names, bad budgets and knobs fail here."""
    from spbench.registry import get_class, get_method
    from spbench.suites.kernel import expand_methods, method_params

    selected = [m for m, _ in expand_methods(sweep.methods)]
    knobs = method_params(sweep.params, selected)
    runs = []
    for m in selected:
        sparse = get_class(m.partition("+")[0]).sparse
        for budget in sweep.budgets if sparse else [None]:
            extra = {"budget": budget} if budget is not None else {}
            get_method(m, causal=True, **knobs[m], **extra)
            runs.append((m, budget, dict(knobs[m])))
    return runs


def plan_cells(sweep: VideoMMESweep, data: PreparedData) -> list[VideoCell]:
    """The dense baseline, then every method x budget (see :func:`selected_runs`)."""
    cells = [VideoCell("dense", None, {}, "baseline")]
    # "dense" named explicitly (without knobs) is the baseline itself, not a second cell.
    cells += [VideoCell(m, budget, params, "method") for m, budget, params in selected_runs(sweep) if (m, budget, params) != ("dense", None, {})]
    unique: dict[str, VideoCell] = {}
    for cell in cells:
        cell.key = cell_key(cell_config(sweep, data, cell.method, cell.budget, cell.params, cell.role))
        unique.setdefault(cell.key, cell)
    return list(unique.values())


def _arg(value: Any) -> str:
    text = str(value)
    return f'"{text}"' if "," in text else text


def model_args(sweep: VideoMMESweep, cell: VideoCell, model_path: str) -> str:
    """The lmms-eval ``model_args`` string of a cell (everything here is in the response-cache identity)."""
    args: dict[str, Any] = {"pretrained": model_path, "method": cell.method}
    if cell.budget is not None:
        args["budget"] = cell.budget
    args.update(cell.params)
    args["max_num_frames"] = sweep.frames
    if sweep.max_pixels is not None:
        args["max_pixels"] = sweep.max_pixels
        if sweep.min_pixels is None:
            # The stock min_pixels (256*28*28) must not exceed a small max_pixels.
            args["min_pixels"] = min(256 * 28 * 28, sweep.max_pixels)
    if sweep.min_pixels is not None:
        args["min_pixels"] = sweep.min_pixels
    device = sweep.resolved_device()
    if device == "cpu":
        args.update(device="cpu", device_map="cpu")
    elif sweep.device_map:
        args["device_map"] = sweep.device_map
    dtype = sweep.resolved_dtype()
    if dtype:
        args["dtype"] = dtype
    return ",".join(f"{k}={_arg(v)}" for k, v in args.items())


def worker_command(sweep: VideoMMESweep, spec_path: Path) -> list[str]:
    module = ["-m", "spbench.integrations.lmms.worker", str(spec_path)]
    if sweep.num_processes > 1:
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(sweep.num_processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        return launch + module
    return [sys.executable, *module]


# -- turning the worker's output into a record ------------------------------------------------------


def _percent(values: list[float]) -> float | None:
    return 100.0 * sum(values) / len(values) if values else None


def sample_rows(samples: list[dict[str, Any]], prefills: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-question log: lmms-eval's scored sample joined with its prefill record."""
    by_doc: dict[int, dict[str, Any]] = {}
    for rec in prefills:
        for tag in rec.get("tag") or []:
            by_doc[int(tag["doc_id"])] = rec
    rows = []
    for s in samples:
        score = s.get("videomme_perception_score") or {}
        doc = s.get("doc") or {}
        resp = s.get("filtered_resps") or s.get("resps") or [""]
        while isinstance(resp, list):
            resp = resp[0] if resp else ""
        pre = by_doc.get(int(s["doc_id"]), {})
        rows.append(
            {
                "doc_id": s["doc_id"],
                "question_id": score.get("question_id", doc.get("question_id")),
                "videoID": score.get("videoID", doc.get("videoID")),
                "duration": score.get("duration", doc.get("duration")),
                "domain": score.get("category", doc.get("domain")),
                "sub_category": score.get("sub_category", doc.get("sub_category")),
                "task_type": score.get("task_category", doc.get("task_type")),
                "answer": score.get("answer", doc.get("answer")),
                "pred": score.get("pred_answer"),
                "response": resp,
                "correct": float(score.get("score", 0.0)),
                "batch": pre.get("batch"),
                "tokens": pre.get("tokens"),
                "prefill_s": pre.get("prefill_s"),
                "prefill_total_s": pre.get("prefill_total_s"),
                "attention_s": pre.get("attention_s"),
                "plan_s": pre.get("plan_s"),
                "density": pre.get("density"),
                "sparse_calls": pre.get("sparse_calls"),
                "dense_calls": pre.get("dense_calls"),
                "fallbacks": pre.get("fallbacks"),
            }
        )
    return sorted(rows, key=lambda r: r["doc_id"])


def accuracy_fields(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"accuracy": _percent([r["correct"] for r in rows])}
    for d in DURATIONS:
        out[f"accuracy.{d}"] = _percent([r["correct"] for r in rows if r["duration"] == d])
    for field_name, column in (("accuracy_by_category", "task_type"), ("accuracy_by_domain", "domain")):
        groups: dict[str, list[float]] = {}
        for r in rows:
            groups.setdefault(str(r[column]), []).append(r["correct"])
        out[field_name] = {k: _percent(v) for k, v in sorted(groups.items())}
    out["n_samples"] = len(rows)
    out["n_correct"] = int(sum(r["correct"] for r in rows))
    return out


def efficiency_fields(rows: list[dict[str, Any]], prefills: list[dict[str, Any]], dense_rows: list[dict[str, Any]] | None) -> dict[str, Any]:
    from spbench.integrations.transformers import summarize

    s = summarize(prefills)
    out = {
        "prefills": s.get("prefills", 0),
        "tokens": s.get("tokens"),
        "prefill_s": s.get("prefill_s"),
        "prefill_total_s": s.get("prefill_total_s"),
        "attention_s": s.get("attention_s"),
        "plan_s": s.get("plan_s"),
        "attention_share": s.get("attention_share"),
        "density": s.get("density"),
        "sparse_calls": s.get("sparse_calls", 0),
        "dense_fallback_calls": s.get("dense_calls", 0),
        "fallbacks": s.get("fallbacks", {}),
        "dense_prefill_s": None,
        "dense_prefill_total_s": None,
        "speedup_prefill": None,
        "speedup_prefill_total": None,
    }
    if dense_rows:
        dense = {r["question_id"]: r for r in dense_rows}
        for key, speed in (("prefill_s", "speedup_prefill"), ("prefill_total_s", "speedup_prefill_total")):
            both = [(dense[r["question_id"]][key], r[key]) for r in rows if r["question_id"] in dense and r.get(key) and dense[r["question_id"]].get(key)]
            if both:
                out[f"dense_{key}"] = sum(d for d, _ in both) / len(both)
                out[speed] = sum(d for d, _ in both) / sum(m for _, m in both)
    return out


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _worker_error(out_dir: Path, log_path: Path, rc: int) -> str:
    for path in sorted(out_dir.glob("error_rank*.json")):
        try:
            return json.loads(path.read_text())["message"]
        except (json.JSONDecodeError, KeyError):
            continue
    tail = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()] if log_path.exists() else []
    last = tail[-1] if tail else "no output"
    return f"worker exited with code {rc}: {last[:500]} (log: {log_path})"


def cell_record(sweep: VideoMMESweep, data: PreparedData, cell: VideoCell, run_dir: Path, dense_rows: list[dict[str, Any]] | None, rc: int, out_dir: Path, log_path: Path, wall_s: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the cell's record, its per-question rows)."""
    record: dict[str, Any] = {
        "suite": SUITE,
        "cell_key": cell.key,
        "role": cell.role,
        "method": cell.method,
        "budget": cell.budget,
        "params": cell.params,
        "model": sweep.model,
        "subset": data.subset,
        "questions": data.questions,
        "frames": sweep.frames,
        "max_pixels": sweep.max_pixels,
        "min_pixels": sweep.min_pixels,
        "dtype": sweep.resolved_dtype() or "bfloat16",
        "num_processes": sweep.num_processes,
        "wall_s": wall_s,
        "log": str(log_path.relative_to(run_dir)),
    }
    if rc != 0:
        record.update(status="failed", error=_worker_error(out_dir, log_path, rc))
        return record, []
    samples = _read_jsonl(out_dir / "samples.jsonl")
    prefills: list[dict[str, Any]] = []
    identity: dict[str, Any] = {}
    for path in sorted(out_dir.glob("prefill_rank*.json")):
        payload = json.loads(path.read_text())
        prefills.extend(payload.get("records", []))
        identity = identity or payload.get("identity", {})
    if not samples:
        record.update(status="failed", error=f"lmms-eval logged no samples (log: {log_path})")
        return record, []
    rows = sample_rows(samples, prefills)
    record.update(accuracy_fields(rows))
    # The baseline is its own reference (speedup 1 by construction).
    record.update(efficiency_fields(rows, prefills, rows if cell.role == "baseline" else dense_rows))
    record["resolved_params"] = identity.get("params")
    try:
        results = json.loads((out_dir / "results.json").read_text())["results"]
        record["lmms_eval_score"] = results.get("videomme_perception_score,none")
    except (OSError, json.JSONDecodeError, KeyError):
        record["lmms_eval_score"] = None
    samples_rel = Path("samples") / f"{cell.slug}.jsonl"
    record["samples_log"] = str(samples_rel)
    status, error = "ok", None
    if len(rows) < data.questions:
        status, error = "invalid", f"only {len(rows)} of {data.questions} questions were answered"
    elif cell.role == "method" and _is_sparse(cell.method) and record.get("prefills") and not record.get("sparse_calls"):
        reasons = ", ".join(f"{k}={v}" for k, v in (record.get("fallbacks") or {}).items()) or "unknown"
        status, error = "invalid", f"no prefill attention call ran sparse (dense fallbacks: {reasons})"
    record.update(status=status, error=error)
    return record, rows


def _is_sparse(method: str) -> bool:
    from spbench.registry import get_class

    return get_class(method.partition("+")[0]).sparse


# -- running -----------------------------------------------------------------------------------


@dataclass
class SweepOutcome:
    total: int
    already_done: int
    ran: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


class SweepProgress:
    """What the sweep reports while it runs (the CLI renders it with rich)."""

    def start(self, total: int, done: int) -> None: ...

    def cell_started(self, cell: VideoCell, index: int) -> None: ...

    def cell_finished(self, cell: VideoCell, record: dict[str, Any]) -> None: ...

    def note(self, text: str) -> None: ...


def _child_env() -> dict[str, str]:
    from spbench.integrations.lmms.local import OFFLINE_ENV

    env = dict(os.environ)
    env.update(OFFLINE_ENV)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cell(sweep: VideoMMESweep, data: PreparedData, cell: VideoCell, model_path: str, run_dir: Path, dense_rows: list[dict[str, Any]] | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Evaluate one cell in a worker process; never raises for a failure of the cell."""
    out_dir = run_dir / DATA_DIR / "cells" / cell.slug
    if out_dir.exists():  # a half-finished earlier attempt (killed): start clean
        for path in out_dir.iterdir():
            if path.is_file():
                path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    log_dir = run_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    log_path = log_dir / f"{cell.slug}.log"
    spec = {
        "model": MODEL_NAME,
        "model_args": model_args(sweep, cell, model_path),
        "task_dir": str(data.task_dir),
        "task": "spbench_videomme",
        "out_dir": str(out_dir),
        "batch_size": sweep.batch_size,
        "use_cache": sweep.use_cache,
        "seed": sweep.seed,
    }
    spec_path = out_dir / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    command = worker_command(sweep, spec_path)
    started = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(shlex.quote(c) for c in command) + "\n")
        log.flush()
        rc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=_child_env(), cwd=out_dir).returncode
    record, rows = cell_record(sweep, data, cell, run_dir, dense_rows, rc, out_dir, log_path, time.monotonic() - started)
    if rows:
        samples_dir = run_dir / "samples"
        samples_dir.mkdir(exist_ok=True)
        with open(run_dir / record["samples_log"], "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    return record, rows


def _dense_rows_from_store(store, baseline: VideoCell) -> list[dict[str, Any]] | None:
    for rec in store.records():
        if rec.get("cell_key") == baseline.key and rec.get("status") == "ok" and rec.get("samples_log"):
            return _read_jsonl(store.path / rec["samples_log"])
    return None


def run_sweep(sweep: VideoMMESweep, cells: list[VideoCell], data: PreparedData, store, progress: SweepProgress | None = None) -> SweepOutcome:
    """Run the cells not yet recorded in ``store``, dense baseline first."""
    from spbench.integrations.lmms.local import resolve_model

    progress = progress or SweepProgress()
    model_path = resolve_model(sweep.model)
    done = store.done_keys()
    pending = [c for c in cells if c.key not in done]
    outcome = SweepOutcome(total=len(cells), already_done=len(cells) - len(pending))
    progress.start(outcome.total, outcome.already_done)
    t0 = time.monotonic()
    baseline = next((c for c in cells if c.role == "baseline"), None)
    dense_rows = _dense_rows_from_store(store, baseline) if baseline else None
    index = outcome.already_done
    for cell in pending:
        index += 1
        progress.cell_started(cell, index)
        record, rows = run_cell(sweep, data, cell, model_path, store.path, dense_rows if cell.role != "baseline" else None)
        if cell.role == "baseline":
            dense_rows = rows or None
        record = store.append(record)
        outcome.ran += 1
        outcome.counts[record["status"]] = outcome.counts.get(record["status"], 0) + 1
        progress.cell_finished(cell, record)
    outcome.seconds = time.monotonic() - t0
    return outcome

