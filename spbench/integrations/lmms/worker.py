"""One lmms-eval evaluation in its own process: ``python -m spbench.integrations.lmms.worker SPEC.json``.

The Video-MME suite runs every cell through this module, one process per
cell (or ``accelerate launch --num_processes N -m spbench.integrations.lmms.worker``
for data parallelism), so a crash, an out-of-memory error or a
``sys.exit`` inside lmms-eval ends that cell only and GPU memory is clean for
the next one.

SPEC holds: ``model`` (lmms-eval model name), ``model_args`` (string),
``task_dir``, ``task``, ``out_dir``, and optionally ``batch_size``,
``use_cache``, ``seed``. Written to ``out_dir``:

* ``samples.jsonl`` (rank 0): lmms-eval's logged samples, one per line;
* ``results.json`` (rank 0): lmms-eval's aggregated results for the task;
* ``prefill_rank<r>.json``: every prefill record of the spbench wrapper(s)
  of that rank (tokens, times, density, document ids);
* ``error_rank<r>.json`` on failure: ``{"type", "message"}``; exit code 3.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

EXIT_FAILED = 3


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, "item"):
        try:
            return obj.item()
        except Exception:
            pass
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def _write(path: Path, payload: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_jsonable(payload)))
    os.replace(tmp, path)


def run(spec: dict[str, Any]) -> int:
    from spbench.integrations.lmms.local import set_offline

    set_offline()
    out = Path(spec["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", 0))
    results = None
    try:
        from lmms_eval.evaluator import simple_evaluate
        from lmms_eval.tasks import TaskManager

        from spbench.integrations.lmms import model as wrapper

        wrapper.COLLECTED.clear()
        manager = TaskManager(include_path=spec["task_dir"], include_defaults=False, model_name=spec["model"])
        seed = int(spec.get("seed", 0))
        results = simple_evaluate(
            model=spec["model"],
            model_args=spec["model_args"],
            tasks=[spec["task"]],
            task_manager=manager,
            batch_size=int(spec.get("batch_size", 1)),
            log_samples=True,
            use_cache=spec.get("use_cache"),
            bootstrap_iters=0,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            process_docs_parallel=1,
        )
    except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt included: report, then stop
        from spbench.errors import SpbenchError

        message = str(exc).strip() or type(exc).__name__
        if isinstance(exc, SystemExit):
            message = f"lmms-eval exited: {exc.code}"
        elif not isinstance(exc, SpbenchError):
            message = f"{type(exc).__name__}: {message}"
            traceback.print_exc()
        _write(out / f"error_rank{rank}.json", {"type": type(exc).__name__, "message": message.splitlines()[0][:2000]})
        _write_prefills(out, rank)
        return EXIT_FAILED
    _write_prefills(out, rank)
    if results is not None:  # rank 0 only
        task = spec["task"]
        with open(out / "samples.jsonl.tmp", "w", encoding="utf-8") as f:
            for sample in results.get("samples", {}).get(task, []):
                f.write(json.dumps(_jsonable(sample)) + "\n")
        os.replace(out / "samples.jsonl.tmp", out / "samples.jsonl")
        _write(out / "results.json", {"results": results.get("results", {}).get(task, {}), "config": results.get("config", {})})
    return 0


def _write_prefills(out: Path, rank: int) -> None:
    try:
        from spbench.integrations.lmms import model as wrapper
    except Exception:  # lmms-eval itself failed to import: nothing was recorded
        return
    _write(out / f"prefill_rank{rank}.json", {"rank": rank, "identity": wrapper.IDENTITY, "records": wrapper.COLLECTED})


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m spbench.integrations.lmms.worker SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    return run(spec)


if __name__ == "__main__":
    sys.exit(main())
