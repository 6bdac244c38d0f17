"""Fidelity of a generated video to the dense reference: PSNR, SSIM, LPIPS.

Videos are arrays ``[frames, height, width, 3]``: uint8 (0..255) or float in
[0, 1] (diffusers' ``output_type="np"``). Both are compared as float in
[0, 1] after the same uint8 quantisation, because that is what a saved video
holds.

Choices the papers leave open (documented here, applied everywhere):

* PSNR: one mean squared error over every pixel, channel and frame of the
  video, ``10 log10(1 / MSE)`` with data range 1. Identical videos give
  ``inf`` (stored as None in records, which cannot hold inf).
* SSIM: Wang et al. 2004 with an 11 x 11 Gaussian window (sigma 1.5),
  K1 = 0.01, K2 = 0.03, data range 1, "valid" windows only (no padding),
  computed per frame and per RGB channel and averaged over all of them.
* LPIPS: the ``lpips`` package's AlexNet variant (v0.1 linear heads) on
  frames scaled to [-1, 1], averaged over frames. It needs the torchvision
  AlexNet weights in the local torch hub cache (``$TORCH_HOME`` or
  ``~/.cache/torch/hub/checkpoints/alexnet-owt-7be5be79.pth``): spbench
  never downloads them. When they (or the package) are missing the value is
  None with a status ``"unavailable: <reason>"``, never a made-up zero.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from spbench.errors import SpbenchError

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"


def to_float_video(video: Any) -> torch.Tensor:
    """A video as float64 ``[F, H, W, C]`` in [0, 1], quantised to uint8 levels."""
    arr = video.detach().cpu().numpy() if isinstance(video, torch.Tensor) else np.asarray(video)
    if arr.ndim == 5 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 4:
        raise SpbenchError(f"a video must be [frames, height, width, channels], got shape {arr.shape}")
    if arr.dtype == np.uint8:
        u8 = arr
    else:
        u8 = np.clip(np.round(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    return torch.from_numpy(u8.astype(np.float64) / 255.0)


def to_uint8_video(video: Any) -> np.ndarray:
    return np.round(to_float_video(video).numpy() * 255.0).astype(np.uint8)


def _pair(a: Any, b: Any) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = to_float_video(a), to_float_video(b)
    if x.shape != y.shape:
        raise SpbenchError(f"videos differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    return x, y


def psnr(a: Any, b: Any) -> float:
    """PSNR in dB over the whole video (inf for identical videos)."""
    x, y = _pair(a, b)
    mse = float(((x - y) ** 2).mean())
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(a: Any, b: Any, window: int = 11, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> float:
    """Mean SSIM over frames and channels (see the module docstring)."""
    x, y = _pair(a, b)
    frames, height, width, channels = x.shape
    if height < window or width < window:
        raise SpbenchError(f"SSIM needs frames of at least {window}x{window} pixels, got {height}x{width}")
    # [F*C, 1, H, W] planes, one 2-D SSIM map each.
    xp = x.permute(0, 3, 1, 2).reshape(frames * channels, 1, height, width)
    yp = y.permute(0, 3, 1, 2).reshape(frames * channels, 1, height, width)
    w = _gaussian_window(window, sigma)[None, None]
    c1, c2 = k1**2, k2**2
    mu_x, mu_y = F.conv2d(xp, w), F.conv2d(yp, w)
    sxx = F.conv2d(xp * xp, w) - mu_x**2
    syy = F.conv2d(yp * yp, w) - mu_y**2
    sxy = F.conv2d(xp * yp, w) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return float((num / den).mean())


def torch_hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


@dataclass
class LpipsResult:
    value: float | None
    status: str  # "ok" or "unavailable: <reason>"


class Lpips:
    """LPIPS (AlexNet) from local weights only; see :func:`Lpips.load`."""

    def __init__(self, model: Any, device: torch.device) -> None:
        self.model = model
        self.device = device

    @classmethod
    def load(cls, device: str | torch.device = "cpu") -> "Lpips":
        """Build the metric or raise :class:`UnavailableError` saying what is missing."""
        from spbench.errors import UnavailableError

        try:
            import lpips  # noqa: PLC0415 - optional dependency
        except ImportError:
            raise UnavailableError("LPIPS needs the 'lpips' package (pip install 'spbench[video]')") from None
        weights = torch_hub_checkpoints() / ALEXNET_FILE
        if not weights.is_file():
            raise UnavailableError(
                f"LPIPS needs the torchvision AlexNet weights at {weights} (spbench never downloads; "
                "copy the file there or set TORCH_HOME)"
            )
        heads = Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth"
        if not heads.is_file():
            raise UnavailableError(f"LPIPS linear-head weights missing from the lpips package ({heads})")
        # Offline: tell torch hub not to reach out even if a file were missing.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=False, verbose=False)
        except Exception as exc:  # a corrupt file, an incompatible package
            raise UnavailableError(f"LPIPS could not load its weights: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        device = torch.device(device)
        return cls(model.to(device).eval(), device)

    @torch.no_grad()
    def __call__(self, a: Any, b: Any, batch: int = 8) -> float:
        x, y = _pair(a, b)
        # [F, H, W, C] in [0, 1] -> [F, C, H, W] in [-1, 1]
        x = (x.permute(0, 3, 1, 2).float() * 2 - 1).to(self.device)
        y = (y.permute(0, 3, 1, 2).float() * 2 - 1).to(self.device)
        values = [self.model(x[i : i + batch], y[i : i + batch]).flatten() for i in range(0, x.shape[0], batch)]
        return float(torch.cat(values).mean())


_lpips_cache: dict[str, Lpips | str] = {}


def lpips_or_status(a: Any, b: Any, device: str | torch.device = "cpu") -> LpipsResult:
    """LPIPS value, or None with the reason it is unavailable (never zero)."""
    from spbench.errors import UnavailableError

    key = str(device)
    if key not in _lpips_cache:
        try:
            _lpips_cache[key] = Lpips.load(device)
        except UnavailableError as exc:
            _lpips_cache[key] = f"unavailable: {exc}"
    metric = _lpips_cache[key]
    if isinstance(metric, str):
        return LpipsResult(None, metric)
    return LpipsResult(metric(a, b), "ok")


def fidelity(a: Any, b: Any, device: str | torch.device = "cpu", with_lpips: bool = True) -> dict[str, Any]:
    """PSNR, SSIM and LPIPS of video ``a`` against reference ``b`` as a record fragment."""
    value = psnr(a, b)
    out: dict[str, Any] = {"psnr": value if math.isfinite(value) else None, "ssim": ssim(a, b)}
    if not math.isfinite(value):
        out["psnr_status"] = "identical videos (infinite PSNR)"
    if with_lpips:
        res = lpips_or_status(a, b, device)
        out.update(lpips=res.value, lpips_status=res.status)
    else:
        out.update(lpips=None, lpips_status="unavailable: disabled")
    return out
