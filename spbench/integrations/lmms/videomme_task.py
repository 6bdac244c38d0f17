"""lmms-eval's Video-MME task, pointed at local files.

The task spbench runs is lmms-eval's own ``videomme`` task (prompt, answer
extraction, scoring, aggregation: its ``videomme.yaml`` is included as is)
with three fields replaced:

* ``task: spbench_videomme``, so it never clashes with the stock task;
* ``dataset_path: parquet`` with ``data_files`` = the run's question table,
  instead of a hub dataset id (so nothing is downloaded, and no video
  archive is unpacked into ``$HF_HOME``);
* ``doc_to_visual``: :func:`doc_to_visual` below, which reads the
  ``video_path`` column spbench adds and raises a clear error for a missing
  file. The stock function calls ``sys.exit`` instead.

Frame count and pixel bounds are model arguments (``max_num_frames``,
``max_pixels``, ``min_pixels``), as with the stock model.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from spbench.errors import SpbenchError, UnavailableError

TASK_NAME = "spbench_videomme"
YAML_NAME = f"{TASK_NAME}.yaml"


def stock_task_yaml() -> Path:
    """lmms-eval's videomme.yaml, found without importing lmms-eval (slow)."""
    spec = importlib.util.find_spec("lmms_eval")
    if spec is None or spec.origin is None:
        raise UnavailableError("lmms-eval is not installed: pip install 'spbench[videomme]'")
    path = Path(spec.origin).parent / "tasks" / "videomme" / "videomme.yaml"
    if not path.is_file():
        raise UnavailableError(f"this lmms-eval has no Video-MME task ({path} is missing)")
    return path


def write_task(folder: str | Path, docs_parquet: str | Path) -> Path:
    """Write the task folder (one yaml) that lmms-eval's TaskManager indexes; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text = (
        f"include: {stock_task_yaml()}\n"
        f"task: {TASK_NAME}\n"
        "dataset_path: parquet\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    test: {Path(docs_parquet).resolve()}\n"
        "doc_to_visual: !function spbench.integrations.lmms.videomme_task.doc_to_visual\n"
    )
    (folder / YAML_NAME).write_text(text)
    return folder


def doc_to_visual(doc: dict) -> list[str]:
    """The video of a question: the ``video_path`` column, which must exist."""
    path = doc.get("video_path")
    if not path:
        raise SpbenchError(f"question {doc.get('question_id')!r} has no video_path (the table was not prepared by spbench)")
    if not os.path.isfile(path):
        raise SpbenchError(f"video {path} for question {doc.get('question_id')!r} does not exist")
    return [path]
