"""apply()/remove() on real WanPipeline objects (tiny random weights, built and loaded locally)."""

import numpy as np
import pytest
import torch

from video_tiny import one_thread

from spbench.integrations import diffusers as spd
from spbench.integrations.tiny import build_tiny_wan_pipeline
from spbench.registry import method_names

SPARSE = method_names(sparse_only=True)


def _generate(pipe, steps=4):
    out = pipe(prompt="a red ball", height=32, width=32, num_frames=5, num_inference_steps=steps, generator=torch.Generator().manual_seed(3), output_type="np")
    return out.frames[0]


@pytest.fixture(scope="module")
def pipe():
    with one_thread():
        p = build_tiny_wan_pipeline()
        p.set_progress_bar_config(disable=True)
        return p


def test_pipeline_apply_resolves_warmup_fraction_and_restores(pipe):
    with one_thread():
        ref = _generate(pipe)
        handle = spd.apply(pipe, SPARSE[0], budget=0.3, dense_layers=0)  # default dense_steps=0.25
        out = _generate(pipe)
        stats = handle.stats()
        assert stats["steps"] == 4 and stats["dense_steps_run"] == 1  # a quarter of 4 steps
        # Wan runs CFG as two passes per step: 1 dense step x 2 passes x 2 layers.
        assert stats["dense_calls"] == 4 and stats["sparse_calls"] == 12
        assert out.shape == ref.shape and np.isfinite(out).all()
        assert spd.get_handle(pipe) is handle
        handle.reset()
        assert handle.stats()["attention_calls"] == 0
        spd.remove(pipe)
        assert spd.get_handle(pipe) is None
        assert np.array_equal(_generate(pipe), ref)


def test_two_transformer_pipeline_shares_one_handle(pipe):
    """Wan2.2 A14B: transformer (high noise) and transformer_2 (low noise) share the step counter."""
    from diffusers import WanPipeline

    with one_thread():
        two = WanPipeline(
            tokenizer=pipe.tokenizer,
            text_encoder=pipe.text_encoder,
            vae=pipe.vae,
            scheduler=pipe.scheduler,
            transformer=pipe.transformer,
            transformer_2=_like(pipe.transformer),
            boundary_ratio=0.5,
        )
        two.set_progress_bar_config(disable=True)
        handle = spd.apply(two, "dense", dense_steps=2, dense_layers=0)
        _generate(two, steps=4)
        stats = handle.stats()
        assert stats["steps"] == 4 and stats["dense_calls"] == 2 * 2 * 2 and stats["sparse_calls"] == 2 * 2 * 2
        assert {t.__class__.__name__ for t in handle.transformers} == {"WanTransformer3DModel"} and len(handle.transformers) == 2
        spd.remove(two)
        assert all(isinstance(b.attn1.processor, type(b.attn2.processor)) for t in (two.transformer, two.transformer_2) for b in t.blocks)


def _like(reference):
    """A transformer with ``reference``'s config (channels, text dim) and fresh random weights."""
    torch.manual_seed(11)
    return type(reference).from_config(reference.config).eval()
