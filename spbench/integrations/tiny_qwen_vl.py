"""Tiny random-weight Qwen2.5-VL checkpoints, built offline (tests and smoke runs).

:func:`save_tiny_qwen2_5_vl` writes a folder that
``Qwen2_5_VLForConditionalGeneration.from_pretrained`` and
``AutoProcessor.from_pretrained`` load exactly like a real checkpoint, with
nothing downloaded:

* a byte-level tokenizer made with the ``tokenizers`` library (one token per
  byte, no merges) plus Qwen's special tokens, wrapped as a fast tokenizer;
* a ``Qwen2_5_VLProcessor`` from a locally constructed image processor,
  video processor, that tokenizer and a chat template written here (the
  Qwen2-VL message format: ``<|im_start|>role ... <|im_end|>``, vision items
  as ``<|vision_start|><|video_pad|><|vision_end|>``);
* a ``Qwen2_5_VLConfig`` with a 2-layer text model (4 query heads, 2 KV
  heads, head dim 64: the smallest shape spbench's Triton methods take) and
  a 2-block vision tower with Qwen's real patch geometry (patch 14, merge 2,
  temporal patch 2), so qwen-vl-utils' frame sizing works unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "<|im_start|>{{ message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'video' or 'video' in item -%}<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif item['type'] == 'image' or 'image' in item -%}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif 'text' in item -%}{{ item['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "<|im_end|>{{ '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant{{ '\\n' }}{%- endif -%}"
)


def build_tokenizer():
    """A byte-level fast tokenizer with Qwen's special tokens (ids 256..262)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
        chat_template=CHAT_TEMPLATE,
    )


def build_processor(tokenizer=None):
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    tokenizer = tokenizer or build_tokenizer()
    # Small pixel bounds by default; callers (lmms-eval, qwen-vl-utils) pass their own.
    pixels = {"min_pixels": 28 * 28 * 4, "max_pixels": 28 * 28 * 64}
    image_processor = Qwen2VLImageProcessor(**pixels)
    video_processor = Qwen2VLVideoProcessor(**pixels)
    return Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor, chat_template=CHAT_TEMPLATE)


def tiny_config(tokenizer=None, layers: int = 2, heads: int = 4, kv_heads: int = 2, head_dim: int = 64, vocab_size: int | None = None):
    from transformers import Qwen2_5_VLConfig

    tokenizer = tokenizer or build_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    hidden = heads * head_dim
    # mrope sections (temporal, height, width) must add up to head_dim / 2.
    half = head_dim // 2
    section = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]
    text = dict(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(
        depth=2,
        hidden_size=64,
        intermediate_size=128,
        num_heads=2,
        out_hidden_size=hidden,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[1],
    )
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )


def build_tiny_qwen2_5_vl(seed: int = 0, **config_kw: Any):
    """(model, processor): random weights, eval mode, float32, on the CPU."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    processor = build_processor()
    config = tiny_config(processor.tokenizer, **config_kw)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    # A wider random init than 0.02, so outputs depend visibly on attention.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and "embed" not in name:
                p.normal_(0.0, 0.08)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    return model, processor


def save_tiny_qwen2_5_vl(path: str | Path, seed: int = 0, **config_kw: Any) -> Path:
    """Write a loadable tiny checkpoint (weights, config, tokenizer, processor) to ``path``."""
    path = Path(path)
    model, processor = build_tiny_qwen2_5_vl(seed=seed, **config_kw)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
