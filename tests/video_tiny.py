"""Tiny random-weight video transformers/pipelines shared by the video tests.

Head dim 64 so every spbench method (Triton kernels: 64/128) runs on them.
CPU tensor ops of these sizes are ~50x faster with one thread than with two
on the CI machine (thread contention), hence :func:`one_thread`.
"""

from __future__ import annotations

import contextlib
import os

import pytest
import torch

diffusers = pytest.importorskip("diffusers")


@contextlib.contextmanager
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tiny_wan(layers: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    return diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=64,
        in_channels=4,
        out_channels=4,
        text_dim=16,
        freq_dim=32,
        ffn_dim=32,
        num_layers=layers,
        rope_max_seq_len=64,
    ).eval()


def wan_inputs(frames: int = 5, size: int = 16, seed: int = 1):
    """Latents [1, 4, frames, size, size] -> grid frames x size/2 x size/2 tokens."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 4, frames, size, size, generator=g), torch.randn(1, 8, 16, generator=g)


def tiny_cogvideox(seed: int = 0):
    torch.manual_seed(seed)
    return diffusers.CogVideoXTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=64,
        in_channels=4,
        out_channels=4,
        time_embed_dim=16,
        text_embed_dim=16,
        num_layers=2,
        sample_width=16,
        sample_height=16,
        sample_frames=9,
        patch_size=2,
        max_text_seq_length=8,
    ).eval()


def tiny_hunyuan(seed: int = 0):
    torch.manual_seed(seed)
    return diffusers.HunyuanVideoTransformer3DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=64,
        num_layers=1,
        num_single_layers=1,
        num_refiner_layers=1,
        patch_size=2,
        patch_size_t=1,
        text_embed_dim=16,
        pooled_projection_dim=8,
        rope_axes_dim=(16, 24, 24),
    ).eval()


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"
