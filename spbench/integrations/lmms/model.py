"""The lmms-eval model classes: stock Qwen2.5-VL plus spbench attention.

``SparseQwen2_5_VL`` subclasses lmms-eval's chat Qwen2.5-VL (the class
``--model qwen2_5_vl`` resolves to in lmms-eval 0.7) and
``SparseQwen2_5_VLSimple`` its simple one. Everything the stock class does
(frame sampling, pixel bounds, prompts, generation) is unchanged; after the
stock constructor has loaded the weights, :func:`spbench.integrations.transformers.apply`
switches the language model's attention to the requested method.

``model_args`` beyond the stock ones:

* ``method`` (required, e.g. ``dense``, ``xattention``): the spbench method;
* ``budget``: its target density;
* ``dtype`` (optional, e.g. ``float32``): cast the model after loading (the
  stock class always loads bfloat16; tests on the CPU use float32);
* ``timing`` (default true): measure prefill and attention time (adds a
  CUDA synchronisation around each prefill forward, none in decode);
* anything else: a knob of the method (``stride=16``, ``tau=0.9``...).

Requests are answered in groups of ``batch_size`` in arrival order, so every
prefill record can carry the ids of the documents it answered. A video that
is missing or does not decode stops the evaluation with a one-line
:class:`~spbench.errors.SpbenchError` naming the file (lmms-eval's own
Video-MME loader calls ``sys.exit`` on a missing video; that exit is caught
and turned into the same error).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from tqdm import tqdm

from lmms_eval.models.chat.qwen2_5_vl import Qwen2_5_VL as _StockChat
from lmms_eval.models.simple.qwen2_5_vl import Qwen2_5_VL as _StockSimple

from spbench.errors import SpbenchError
from spbench.integrations import transformers as sp_transformers
from spbench.integrations.lmms.local import probe_video, resolve_model

_STOCK_ARGS = frozenset(p for p in inspect.signature(_StockSimple.__init__).parameters if p not in ("self", "kwargs"))
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}

#: Prefill records of every wrapper in this process (dicts), in order, so a driver
#: (spbench's worker) can read them after lmms-eval has dropped the model object.
COLLECTED: list[dict[str, Any]] = []
#: What the last wrapper built in this process actually runs: method name and every resolved knob.
IDENTITY: dict[str, Any] = {}


def _unquote(value: Any) -> Any:
    """lmms-eval keeps the quotes of a quoted value (needed for values with commas); drop them."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def split_model_args(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(stock constructor arguments, method knobs)."""
    stock = {k: _unquote(v) for k, v in kwargs.items() if k in _STOCK_ARGS}
    knobs = {k: _unquote(v) for k, v in kwargs.items() if k not in _STOCK_ARGS}
    return stock, knobs


def _video_paths(obj: Any) -> list[str]:
    """Video paths found in a doc's visuals or chat messages (strings ending in a video suffix)."""
    found: list[str] = []
    if isinstance(obj, str):
        if obj.lower().endswith((".mp4", ".mkv", ".avi", ".mov", ".webm")):
            found.append(obj)
    elif isinstance(obj, dict):
        for value in obj.values():
            found.extend(_video_paths(value))
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            found.extend(_video_paths(value))
    return found


class _SparseMixin:
    """What both wrappers add to the stock class."""

    spbench: sp_transformers.SparseAttention

    def _spbench_setup(self, method: str | None, budget: Any, dtype: str | None, timing: Any, knobs: dict[str, Any]) -> None:
        if dtype is not None:
            if str(dtype).lower() not in _DTYPES:
                raise SpbenchError(f"dtype={dtype!r}: expected one of {', '.join(sorted(_DTYPES))}")
            self.model.to(_DTYPES[str(dtype).lower()])
        timing = str(timing).lower() not in ("false", "0", "no", "off")
        self.spbench = sp_transformers.apply(self.model, method, budget=None if budget in (None, "") else float(budget), timing=timing, **knobs)
        IDENTITY.clear()
        IDENTITY.update(self.spbench.describe())

    def spbench_records(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.spbench.records]

    def _explain_failure(self, requests, exc: BaseException) -> SpbenchError | None:
        """A clear error when a request failed because of its video; None when the video is fine."""
        for req in requests:
            try:
                doc = self.task_dict[req.task_name][req.args[-1]][req.doc_id]
            except Exception:
                continue
            for path in _video_paths(dict(doc)):
                reason = probe_video(path)
                if reason is not None:
                    return SpbenchError(f"video {path} (doc {req.doc_id}) {reason}")
        if isinstance(exc, SystemExit):
            return SpbenchError(f"the task's loader exited: {exc.code}")
        return None

    def generate_until(self, requests):
        results: list[Any] = []
        step = max(1, int(self.batch_size))
        bar = tqdm(total=len(requests), disable=(self.rank != 0), desc="Model Responding (spbench)")
        for start in range(0, len(requests), step):
            chunk = requests[start : start + step]
            self.spbench.tag = [{"task": r.task_name, "doc_id": r.doc_id} for r in chunk]
            seen = len(self.spbench.records)
            try:
                results.extend(super().generate_until(chunk))
                COLLECTED.extend(r.to_dict() for r in self.spbench.records[seen:])
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - re-raised, clearer where we can
                clear = self._explain_failure(chunk, exc)
                if clear is not None:
                    raise clear from None
                raise
            finally:
                self.spbench.tag = None
            bar.update(len(chunk))
        bar.close()
        return results


def _init(self, cls, pretrained: str, method: str | None, budget: Any, dtype: Any, timing: Any, kwargs: dict[str, Any]) -> None:
    if not method:
        raise SpbenchError("spbench_qwen2_5_vl needs method=NAME in model_args (e.g. method=dense or method=xattention)")
    stock, knobs = split_model_args(kwargs)
    if str(knobs.pop("causal", True)).lower() in ("false", "0", "no", "off"):
        raise SpbenchError("causal=false: the language model is causal")
    # Fail on a bad method or knob before spending minutes loading weights.
    from spbench.registry import get_method

    probe = {"budget": float(budget)} if budget not in (None, "") else {}
    get_method(method, causal=True, **probe, **knobs)
    resolve_model(pretrained)
    super(cls, self).__init__(pretrained=pretrained, **stock)
    self._spbench_setup(method, budget, dtype, timing, knobs)


class SparseQwen2_5_VL(_SparseMixin, _StockChat):
    """lmms-eval's chat Qwen2.5-VL with an spbench method in the language model's prefill."""

    is_simple = False

    def __init__(self, pretrained: str = "Qwen/Qwen2.5-VL-7B-Instruct", method: str | None = None, budget: Any = None, dtype: Any = None, timing: Any = True, **kwargs: Any) -> None:
        _init(self, SparseQwen2_5_VL, pretrained, method, budget, dtype, timing, kwargs)


class SparseQwen2_5_VLSimple(_SparseMixin, _StockSimple):
    """lmms-eval's simple (doc_to_visual) Qwen2.5-VL with an spbench method."""

    is_simple = True

    def __init__(self, pretrained: str = "Qwen/Qwen2.5-VL-7B-Instruct", method: str | None = None, budget: Any = None, dtype: Any = None, timing: Any = True, **kwargs: Any) -> None:
        _init(self, SparseQwen2_5_VLSimple, pretrained, method, budget, dtype, timing, kwargs)
