"""The results store: one folder per run, append-only cell records.

``<root>/<run-id>/run.json`` holds the environment and the configuration;
``<root>/<run-id>/cells.jsonl`` gets one JSON line per finished cell, flushed
and fsynced, so a killed process loses at most the cell in flight. A partial
last line left by a kill is cut off before the next append, never glued to.

Re-opening an existing run id resumes it: :meth:`RunStore.done_keys` lists
cells already recorded, and the environment of each resumption is appended
to run.json's ``sessions``. Nothing is overwritten.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable

from spbench.errors import SpbenchError

RUN_FILE = "run.json"
CELLS_FILE = "cells.jsonl"


def new_run_id(label: str = "") -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    suffix = hashlib.sha1(os.urandom(8)).hexdigest()[:4]
    label = re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-")
    return f"{stamp}-{label}-{suffix}" if label else f"{stamp}-{suffix}"


def cell_key(config: dict[str, Any]) -> str:
    """A stable key for a cell's configuration (what resume compares)."""
    blob = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def _clean(value: Any) -> Any:
    """NaN/Inf are not JSON: store them as None (the cell's status says why)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class RunStore:
    """A run folder; create or resume it, append cells, read them back."""

    def __init__(self, root: str | Path = "results", run_id: str | None = None, label: str = "", config: dict[str, Any] | None = None, environment: dict[str, Any] | None = None):
        if run_id is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", run_id):
            raise SpbenchError(f"run id {run_id!r} may only contain letters, digits, '.', '_' and '-'")
        self.run_id = run_id or new_run_id(label)
        self.path = Path(root) / self.run_id
        self.resumed = (self.path / RUN_FILE).exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpbenchError(f"cannot create run folder {self.path}: {exc.strerror}") from None
        if environment is None:
            from spbench.environment import environment as current_environment

            environment = current_environment()
        if self.resumed:
            meta = json.loads((self.path / RUN_FILE).read_text())
            meta.setdefault("sessions", []).append(environment)
            if config is not None and meta.get("config") not in (None, config):
                meta.setdefault("config_changes", []).append(config)
        else:
            meta = {"run_id": self.run_id, "config": config or {}, "environment": environment, "sessions": []}
        self._write_meta(meta)
        self._repair_tail()

    # -- metadata -----------------------------------------------------------
    def _write_meta(self, meta: dict[str, Any]) -> None:
        tmp = self.path / (RUN_FILE + ".tmp")
        tmp.write_text(json.dumps(_clean(meta), indent=2, default=_json_default))
        os.replace(tmp, self.path / RUN_FILE)  # atomic: never a half-written run.json

    @property
    def meta(self) -> dict[str, Any]:
        return json.loads((self.path / RUN_FILE).read_text())

    # -- cells --------------------------------------------------------------
    @property
    def cells_path(self) -> Path:
        return self.path / CELLS_FILE

    def _repair_tail(self) -> None:
        """Cut a partial last line (a kill mid-write) so the next append starts clean."""
        path = self.cells_path
        if not path.exists() or path.stat().st_size == 0:
            return
        with open(path, "rb+") as f:
            data = f.read()
            if data.endswith(b"\n"):
                return
            cut = data.rfind(b"\n") + 1
            f.truncate(cut)

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        record = {"run_id": self.run_id, **record}
        line = json.dumps(_clean(record), default=_json_default, allow_nan=False)
        with open(self.cells_path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        return record

    def records(self) -> list[dict[str, Any]]:
        return list(read_cells(self.cells_path))

    def done_keys(self, include_failed: bool = True) -> set[str]:
        keys = set()
        for rec in self.records():
            if rec.get("status") == "ok" or (include_failed and rec.get("status") in ("failed", "invalid")):
                if rec.get("cell_key"):
                    keys.add(rec["cell_key"])
        return keys


def read_cells(path: Path) -> Iterable[dict[str, Any]]:
    """Records of a cells.jsonl, skipping a partial last line."""
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break  # cut short by a kill: the cell in flight is lost, nothing else
            line = line.strip()
            if line:
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue


def _run_dirs(path: Path) -> list[Path]:
    if (path / CELLS_FILE).exists() or (path / RUN_FILE).exists():
        return [path]
    if path.is_dir():
        return sorted(p.parent for p in path.glob(f"*/{RUN_FILE}"))
    return []


def load(paths: str | Path | Iterable[str | Path]):
    """Load the cells of one or more run folders (or folders of runs) as a DataFrame.

    Columns: every record field, nested dicts flattened with dots
    (``params.tau``), plus ``run_id``, ``run_path`` and the run's ``gpu``.
    """
    import pandas as pd

    if isinstance(paths, (str, Path)):
        paths = [paths]
    rows = []
    for given in paths:
        dirs = _run_dirs(Path(given))
        if not dirs:
            raise SpbenchError(f"{given} is not a run folder (no {RUN_FILE} or {CELLS_FILE})")
        for run_dir in dirs:
            meta = json.loads((run_dir / RUN_FILE).read_text()) if (run_dir / RUN_FILE).exists() else {}
            env = meta.get("environment", {})
            for rec in read_cells(run_dir / CELLS_FILE):
                rec = {"run_path": str(run_dir), "gpu": env.get("gpu"), **rec}
                rows.append(rec)
    if not rows:
        return pd.DataFrame()
    return pd.json_normalize(rows, sep=".")
