"""PSNR / SSIM / LPIPS against hand-computed values; LPIPS weights only from local files."""

import math

import numpy as np
import pytest
import torch

from spbench import fidelity
from spbench.errors import SpbenchError


def _video(value, frames=2, size=16):
    return np.full((frames, size, size, 3), value, dtype=np.uint8)


def test_psnr_of_a_constant_offset():
    a, b = _video(100), _video(110)
    mse = (10 / 255) ** 2
    assert fidelity.psnr(a, b) == pytest.approx(10 * math.log10(1 / mse), rel=1e-12)
    assert fidelity.psnr(a, a) == math.inf


def test_psnr_mixed_error_over_the_whole_video():
    a = _video(0)
    b = a.copy()
    b[0, :4] = 255  # 4 of 16 rows of one of two frames: an eighth of the pixels, MSE = 1/8
    assert fidelity.psnr(a, b) == pytest.approx(10 * math.log10(8), rel=1e-12)


def test_float_videos_are_quantised_like_saved_videos():
    a = np.full((1, 16, 16, 3), 0.5, dtype=np.float32)  # 127.5 -> 128
    assert fidelity.psnr(a, _video(128, frames=1)) == math.inf


def test_ssim_of_constant_frames_is_the_luminance_term():
    # Flat frames: variances and covariance are 0, so SSIM = (2ab + C1) / (a^2 + b^2 + C1).
    a, b = 100 / 255, 150 / 255
    c1 = 0.01**2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert fidelity.ssim(_video(100), _video(150)) == pytest.approx(expected, rel=1e-9)
    noise = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    assert fidelity.ssim(noise, noise) == pytest.approx(1.0, abs=1e-12)
    assert fidelity.ssim(noise, 255 - noise) < 0  # anti-correlated structure


def test_shape_mismatch_and_tiny_frames_are_errors():
    with pytest.raises(SpbenchError, match="differ in shape"):
        fidelity.psnr(_video(1), _video(1, frames=3))
    with pytest.raises(SpbenchError, match="at least 11x11"):
        fidelity.ssim(_video(1, size=8), _video(1, size=8))


def test_lpips_unavailable_without_local_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setattr(fidelity, "_lpips_cache", {})
    out = fidelity.fidelity(_video(10), _video(12))
    assert out["lpips"] is None
    assert out["lpips_status"].startswith("unavailable: ")
    assert "alexnet-owt-7be5be79.pth" in out["lpips_status"] and "never downloads" in out["lpips_status"]
    assert out["psnr"] == pytest.approx(fidelity.psnr(_video(10), _video(12)))


def test_lpips_runs_from_local_weights(tmp_path, monkeypatch):
    pytest.importorskip("lpips")
    torchvision = pytest.importorskip("torchvision")
    # Stand-in AlexNet weights in a private torch hub cache: the real file is not downloadable here.
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet().state_dict(), ckpt / fidelity.ALEXNET_FILE)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(fidelity, "_lpips_cache", {})
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-60, 60, a.shape), 0, 255).astype(np.uint8)
    same = fidelity.lpips_or_status(a, a)
    diff = fidelity.lpips_or_status(a, b)
    assert same.status == "ok" and same.value == pytest.approx(0.0, abs=1e-6)
    assert diff.status == "ok" and diff.value > same.value
