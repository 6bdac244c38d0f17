"""Local-only checks shared by the lmms-eval wrapper and the Video-MME suite.

Nothing here touches the network: models and videos must already be on disk
(a path, or the local Hugging Face cache), and a missing one is a one-line
:class:`~spbench.errors.SpbenchError` rather than a traceback deep inside
transformers or lmms-eval. Importing this module does not import lmms-eval.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from spbench.errors import SpbenchError, UnavailableError

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def set_offline() -> None:
    """Never reach the hub: every lookup is the local cache's."""
    for key, value in OFFLINE_ENV.items():
        os.environ[key] = value


def resolve_model(name: str) -> str:
    """A local model folder, or a hub id present in the local HF cache; else a clear error."""
    if not name or not str(name).strip():
        raise SpbenchError("no model given: pass a local checkpoint folder or a Hugging Face id in the local cache")
    name = str(name).strip()
    path = Path(name).expanduser()
    if path.exists() or name.startswith(("/", ".", "~")):
        if not path.is_dir():
            raise UnavailableError(f"model path {name} does not exist (or is not a folder)")
        if not (path / "config.json").is_file():
            raise UnavailableError(f"model folder {name} has no config.json: not a transformers checkpoint")
        return str(path.resolve())
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        raise UnavailableError("huggingface_hub is not installed; pass a local model folder") from None
    found = try_to_load_from_cache(name, "config.json")
    if not isinstance(found, str):
        raise UnavailableError(
            f"model {name!r} is not a local folder and not in the local Hugging Face cache "
            f"({os.environ.get('HF_HUB_CACHE') or os.environ.get('HF_HOME') or '~/.cache/huggingface'}); "
            "runs are offline: download it beforehand or pass its folder"
        )
    return name


@contextmanager
def _silenced_stderr():
    """decord's ffmpeg prints its own errors on fd 2; the caller reports the reason itself."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def probe_video(path: str | Path) -> str | None:
    """None if the video opens and its first and last frames decode, else the reason.

    Uses decord, the reader lmms-eval's Qwen2.5-VL model and qwen-vl-utils
    use, so a video that passes here is one they can read.
    """
    path = Path(path)
    if not path.is_file():
        return "file not found"
    if path.stat().st_size == 0:
        return "empty file"
    try:
        import decord
    except ImportError:
        raise UnavailableError("decord is not installed (pip install 'spbench[videomme]')") from None
    try:
        with _silenced_stderr():
            reader = decord.VideoReader(str(path), num_threads=1)
            n = len(reader)
            if n == 0:
                return "no frames"
            reader[0].asnumpy()
            reader[n - 1].asnumpy()
    except Exception as exc:  # decord raises its own DECORDError and RuntimeError
        text = str(exc).strip().splitlines()
        return f"does not decode ({type(exc).__name__}: {text[0][:160] if text else 'no message'})"
    return None
