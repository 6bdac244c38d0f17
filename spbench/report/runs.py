"""Reading run folders for a report: their metadata and their cells as one DataFrame."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spbench.errors import SpbenchError
from spbench.results import RUN_FILE, _run_dirs, load

#: Environment fields shown in the report, in order, with their labels.
ENV_FIELDS = (
    ("gpu", "GPU"),
    ("gpu_count", "GPUs"),
    ("driver", "driver"),
    ("cuda_version", "CUDA"),
    ("torch", "torch"),
    ("triton", "triton"),
    ("spbench", "spbench"),
    ("python", "python"),
    ("git_sha", "git sha"),
    ("host", "host"),
    ("cpu", "CPU"),
    ("time", "started"),
    ("command", "command"),
)


@dataclass
class RunInfo:
    run_id: str
    path: Path
    meta: dict[str, Any]
    environment: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    sessions: list[dict[str, Any]] = field(default_factory=list)

    def environment_rows(self) -> list[tuple[str, str]]:
        env = self.environment
        rows = []
        for key, label in ENV_FIELDS:
            value = env.get(key)
            if key == "gpu" and not value:
                value = "none (CPU)" + (", Triton interpreter" if env.get("triton_interpret") else "")
            if key == "git_sha" and value and env.get("git_dirty"):
                value = f"{value} (uncommitted changes)"
            if value not in (None, ""):
                rows.append((label, str(value)))
        # A resumed run may have continued elsewhere: say so rather than hide it.
        for key, label in (("gpu", "GPU"), ("git_sha", "git sha"), ("torch", "torch")):
            seen = {str(s.get(key)) for s in self.sessions if s.get(key) != env.get(key)}
            if seen:
                rows.append((f"{label} of resumed sessions", ", ".join(sorted(seen))))
        if self.sessions:
            rows.append(("resumed", f"{len(self.sessions)} time(s)"))
        return rows

    def config_rows(self) -> list[tuple[str, str]]:
        """What was swept (a suite's sweep, or a single command's cell), one row per key."""
        config = self.config or {}
        body = config.get("sweep") or config.get("cell") or {k: v for k, v in config.items() if k != "command"}
        rows = [("command", str(config["command"]))] if config.get("command") else []
        for key, value in body.items():
            if value in (None, {}, []):
                continue
            if isinstance(value, (list, tuple)):
                text = ", ".join(map(str, value))
            elif isinstance(value, dict):
                text = ", ".join(f"{k}={v}" if not isinstance(v, dict) else f"{k}: " + ", ".join(f"{a}={b}" for a, b in v.items()) for k, v in value.items())
            else:
                text = str(value)
            rows.append((key, text))
        if config.get("methods_requested") and config["methods_requested"] != body.get("methods"):
            rows.append(("methods requested", ", ".join(map(str, config["methods_requested"]))))
        return rows


def load_runs(paths: list[str | Path]) -> tuple[list[RunInfo], Any]:
    """The runs under ``paths`` (run folders or folders of runs) and all their cells."""
    import pandas as pd

    runs: list[RunInfo] = []
    seen: set[Path] = set()
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise SpbenchError(f"{given} does not exist")
        dirs = _run_dirs(path)
        if not dirs:
            raise SpbenchError(f"{given} is not a run folder (no {RUN_FILE} or cells.jsonl), nor a folder of runs")
        for run_dir in dirs:
            key = run_dir.resolve()
            if key in seen:
                continue
            seen.add(key)
            meta: dict[str, Any] = {}
            if (run_dir / RUN_FILE).exists():
                try:
                    meta = json.loads((run_dir / RUN_FILE).read_text())
                except (OSError, json.JSONDecodeError) as exc:
                    raise SpbenchError(f"{run_dir / RUN_FILE} is unreadable: {exc}") from None
            runs.append(RunInfo(str(meta.get("run_id") or run_dir.name), run_dir, meta, meta.get("environment") or {}, meta.get("config") or {}, meta.get("sessions") or []))
    ids = [r.run_id for r in runs]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise SpbenchError(f"two run folders have the same run id {dupes[0]!r}: report them separately")
    frame = load([r.path for r in runs])
    if frame.empty:
        frame = pd.DataFrame(columns=["run_id", "suite", "method", "status"])
    frame = normalise(frame, runs)
    if "cell_key" in frame.columns:
        # A cell measured again (`--retry-failed`) keeps only its newest record.
        keyed = frame["cell_key"].notna()
        stale = keyed & frame.duplicated(subset=["run_id", "cell_key"], keep="last")
        frame = frame[~stale].reset_index(drop=True)
    return runs, frame


def normalise(frame, runs: list[RunInfo]):
    """Fill the columns the report relies on, whatever the records carried."""
    frame = frame.copy()
    by_path = {str(r.path): r.run_id for r in runs}
    if "run_path" in frame.columns:
        from_path = frame["run_path"].map(by_path)
        frame["run_id"] = frame["run_id"].fillna(from_path) if "run_id" in frame.columns else from_path
    for column, default in (("suite", "unknown"), ("method", "?"), ("status", "ok"), ("run_id", "?"), ("role", "method"), ("error", None)):
        if column not in frame.columns:
            frame[column] = default
        elif default is not None:
            frame[column] = frame[column].where(frame[column].notna(), default)
    for column in ("suite", "method", "status", "run_id", "role"):
        frame[column] = frame[column].astype(str)
    return frame.reset_index(drop=True)
