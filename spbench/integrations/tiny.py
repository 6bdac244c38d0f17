"""Tiny random-weight Wan pipelines built locally (tests, smoke runs, demos).

No weights are downloaded: every component is built from a small config with
random weights, using the real diffusers / transformers classes, and saved
with ``save_pretrained`` so that loading it goes through the same code path
as a real model folder (``DiffusionPipeline.from_pretrained(path,
local_files_only=True)``).

* tokenizer: a character-level ``PreTrainedTokenizerFast`` (printable ASCII);
* text encoder: ``UMT5EncoderModel`` with d_model 16, one layer;
* transformer: ``WanTransformer3DModel``, 2 layers, 2 heads of head dim 64
  (the head dims spbench's Triton kernels support), in/out 16 channels;
* VAE: ``AutoencoderKLWan`` with base_dim 3 (the diffusers test config);
* scheduler: ``UniPCMultistepScheduler`` with flow sigmas, as Wan2.1 uses.

Videos: height and width multiples of 16, frames = 4k + 1. At 64 x 64 and 9
frames the transformer sees a 3 x 4 x 4 grid (48 tokens); at 128 x 128 and
17 frames a 5 x 8 x 8 grid (320 tokens).
"""

from __future__ import annotations

import string
from pathlib import Path

import torch


def build_tokenizer():
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>"]
    chars = [c for c in string.printable if not c.isspace() or c == " "]
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def build_tiny_wan_pipeline(seed: int = 0, num_layers: int = 2, heads: int = 2, head_dim: int = 64):
    """A WanPipeline with tiny random weights (fp32, CPU)."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    text_encoder = UMT5EncoderModel(
        UMT5Config(vocab_size=len(tokenizer), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1)
    ).eval()
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=16,
        out_channels=16,
        text_dim=16,
        freq_dim=32,
        ffn_dim=64,
        num_layers=num_layers,
        rope_max_seq_len=64,
    ).eval()
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]).eval()
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=3.0)
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae, scheduler=scheduler)


def save_tiny_wan_pipeline(path: str | Path, seed: int = 0, **kwargs) -> Path:
    """Build and save a tiny Wan pipeline folder (model_index.json + components)."""
    path = Path(path)
    build_tiny_wan_pipeline(seed, **kwargs).save_pretrained(str(path), safe_serialization=True)
    return path
