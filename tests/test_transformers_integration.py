"""spbench attention inside transformers models (tiny random-weight Qwen2.5-VL, CPU)."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("transformers")

from transformers.integrations.sdpa_attention import sdpa_attention_forward  # noqa: E402
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS  # noqa: E402
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS  # noqa: E402

import spbench  # noqa: E402
from spbench.errors import SpbenchError  # noqa: E402
from spbench.integrations import transformers as sp  # noqa: E402
from spbench.integrations.tiny_qwen_vl import build_tiny_qwen2_5_vl  # noqa: E402
from spbench.kernels.executor import execute  # noqa: E402
from spbench.kernels.reference import pyramid_attention_reference  # noqa: E402
from spbench.method import Knob, Method  # noqa: E402
from spbench.plan import Plan, num_blocks  # noqa: E402

LAYERS = 2


class BandMethod(Method):
    """Test method: per query block, KV block 0 and the blocks overlapping the query block's
    own span (a causal band), run with the PyTorch reference executor. Records every call."""

    name = "test-band"
    sparse = True
    knobs = {"width": Knob(0, "extra KV blocks before the band")}

    def __init__(self, **params):
        super().__init__(**params)
        self.calls: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        self.last_levels: torch.Tensor | None = None

    def plan(self, q, k, v) -> Plan:
        self.check_inputs(q, k, v)
        self.calls.append((tuple(q.shape), tuple(k.shape)))
        lq, lk = q.shape[2], k.shape[2]
        nq, nk = num_blocks(lq, 128), num_blocks(lk, 64)
        levels = torch.zeros(q.shape[0], q.shape[1], nq, nk, dtype=torch.int8)
        for i in range(nq):
            lo = max(0, (i * 128) // 64 - self.params["width"])
            hi = min(nk, ((i + 1) * 128 - 1) // 64 + 1)
            levels[:, :, i, lo:hi] = 1
            levels[:, :, i, 0] = 1
        self.last_levels = levels
        return Plan.from_levels(levels, lq, lk, 128, 64, causal=self.causal)

    def run(self, q, k, v, plan):
        return execute(q, k, v, plan, scale=self.params["scale"], backend="torch")


@pytest.fixture(scope="module")
def tiny():
    model, processor = build_tiny_qwen2_5_vl(seed=0, layers=LAYERS)
    messages = [[{"role": "user", "content": [{"type": "video", "video": "v"}, {"type": "text", "text": "Which colour is the video? A. red B. green C. blue D. yellow. " * 5}]}]]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    gen = torch.Generator().manual_seed(0)
    video = torch.rand(4, 3, 56, 56, generator=gen) * 255
    inputs = processor(text=text, videos=[video], return_tensors="pt")
    assert inputs["input_ids"].shape[1] > 256  # several query blocks of 128
    return model, processor, inputs


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def _hooks(module):
    return len(module._forward_hooks) + len(module._forward_pre_hooks)


def test_apply_remove_round_trip_is_exact(tiny):
    model, _, inputs = tiny
    backbone = sp.find_language_backbone(model)
    assert backbone is model.model.language_model
    hooks_before = (_hooks(model), _hooks(backbone))
    ref = _logits(model, inputs)
    original = model.config.text_config._attn_implementation

    handle = sp.apply(model, "dense")
    assert backbone.config._attn_implementation == handle.key
    assert model.config.vision_config._attn_implementation == original  # the vision tower is untouched
    assert handle.key in ALL_ATTENTION_FUNCTIONS and handle.key in ALL_MASK_ATTENTION_FUNCTIONS
    assert torch.allclose(_logits(model, inputs), ref, atol=1e-5, rtol=0)

    sparse = sp.apply(model, BandMethod(causal=True))  # replaces the dense one
    assert handle.key not in ALL_ATTENTION_FUNCTIONS
    assert (_logits(model, inputs) - ref).abs().max() > 1e-3  # the sparse path really ran
    sp.remove(model)

    assert model.config.text_config._attn_implementation == original
    assert backbone.config._attn_implementation == original
    assert sparse.key not in ALL_ATTENTION_FUNCTIONS and sparse.key not in ALL_MASK_ATTENTION_FUNCTIONS
    assert sp.get_state(model) is None
    assert (_hooks(model), _hooks(backbone)) == hooks_before
    assert torch.equal(_logits(model, inputs), ref)
    sp.remove(model)  # removing twice is a no-op


def test_sparse_call_is_the_method_on_unexpanded_gqa_heads(tiny):
    model, _, _ = tiny
    method = BandMethod(causal=True)
    handle = sp.apply(model, method)
    try:
        fn = ALL_ATTENTION_FUNCTIONS[handle.key]
        layer = model.model.language_model.layers[0].self_attn
        q = torch.randn(1, 4, 300, 64)
        k, v = torch.randn(1, 2, 300, 64), torch.randn(1, 2, 300, 64)
        out, weights = fn(layer, q, k, v, None, scaling=layer.scaling)
        assert weights is None and out.shape == (1, 300, 4, 64)
        assert method.calls == [((1, 4, 300, 64), (1, 2, 300, 64))]  # K/V reached the method with 2 heads
        want = pyramid_attention_reference(q, k, v, method.last_levels, 128, 64, True, layer.scaling)
        assert torch.allclose(out, want.transpose(1, 2), atol=1e-5)
        # Dense paths: an explicit mask, a decode step, a continuation over a cache.
        mask = torch.ones(1, 1, 300, 300, dtype=torch.bool).tril()
        for args in ((q, k, v, mask), (q[:, :, -1:], k, v, None), (q[:, :, -20:], k, v, None)):
            got, _ = fn(layer, *args, scaling=layer.scaling)
            ref, _ = sdpa_attention_forward(layer, *args, scaling=layer.scaling)
            assert torch.equal(got, ref)
        assert len(method.calls) == 1
    finally:
        sp.remove(model)


class BandIntoMethod(BandMethod):
    """BandMethod that stores into out= (as the planned methods do); records what out it got."""

    writes_out = True

    def __init__(self, **params):
        super().__init__(**params)
        self.outs: list[tuple[tuple[int, ...], tuple[int, ...]] | None] = []

    def run(self, q, k, v, plan, out=None):
        self.outs.append(None if out is None else (tuple(out.shape), out.stride()))
        return execute(q, k, v, plan, scale=self.params["scale"], backend="torch", out=out)


def test_writes_out_methods_store_straight_into_the_layer_layout(tiny):
    """No transpose copy: the method gets the [B, H, L, D] view of a contiguous [B, L, H, D] buffer,
    and the result is exactly what the transpose path gives (also through the whole model)."""
    model, _, inputs = tiny
    layer = model.model.language_model.layers[0].self_attn
    q = torch.randn(1, 4, 300, 64)
    k, v = torch.randn(1, 2, 300, 64), torch.randn(1, 2, 300, 64)
    results = {}
    for cls in (BandMethod, BandIntoMethod):
        method = cls(causal=True)
        handle = sp.apply(model, method)
        try:
            out, _ = ALL_ATTENTION_FUNCTIONS[handle.key](layer, q, k, v, None, scaling=layer.scaling)
            logits = _logits(model, inputs)
        finally:
            sp.remove(model)
        assert out.shape == (1, 300, 4, 64) and out.is_contiguous()
        results[cls] = (out, logits, method)
    (plain, plain_logits, _), (into, into_logits, method) = results[BandMethod], results[BandIntoMethod]
    assert method.outs[0] == ((1, 4, 300, 64), (300 * 4 * 64, 64, 4 * 64, 1))
    assert all(o is not None for o in method.outs) and len(method.outs) == 1 + LAYERS
    assert torch.equal(into, plain) and torch.equal(into_logits, plain_logits)


def test_generate_is_sparse_in_prefill_and_dense_in_decode(tiny):
    model, _, inputs = tiny
    method = BandMethod(causal=True)
    handle = sp.apply(model, method)
    q_lens: list[int] = []
    dense = handle._dense

    def counting(module, query, *args, **kwargs):
        q_lens.append(query.shape[2])
        return dense(module, query, *args, **kwargs)

    handle._dense = counting
    try:
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=4, do_sample=False, min_new_tokens=4)
    finally:
        sp.remove(model)
    prompt = inputs["input_ids"].shape[1]
    assert out.shape[1] == prompt + 4
    assert len(method.calls) == LAYERS and all(c == ((1, 4, prompt, 64), (1, 2, prompt, 64)) for c in method.calls)
    assert q_lens == [1] * (3 * LAYERS)  # every decode step dense
    (rec,) = handle.records
    assert rec.tokens == prompt and rec.sparse_calls == LAYERS and rec.dense_calls == 0
    expected = Plan.from_levels(method.last_levels, prompt, prompt, 128, 64, causal=True).density
    assert math.isclose(rec.density, expected, rel_tol=1e-9) and rec.density < 1
    assert rec.prefill_s > 0 and rec.prefill_total_s >= rec.prefill_s and 0 < rec.attention_s < rec.prefill_s
    summary = handle.summary()
    assert summary["prefills"] == 1 and 0 < summary["attention_share"] < 1


def test_padded_batch_falls_back_to_dense(tiny):
    model, processor, _ = tiny
    texts = ["<|im_start|>user\nshort question<|im_end|>\n", "<|im_start|>user\n" + "a much longer question " * 8 + "<|im_end|>\n"]
    batch = processor(text=texts, return_tensors="pt", padding=True, padding_side="left")
    assert not bool(batch["attention_mask"].all())
    ref = _logits(model, batch)
    method = BandMethod(causal=True)
    handle = sp.apply(model, method)
    try:
        got = _logits(model, batch)
    finally:
        sp.remove(model)
    keep = batch["attention_mask"].bool()
    assert torch.allclose(got[keep], ref[keep], atol=1e-5)
    assert method.calls == []
    (rec,) = handle.records
    assert rec.fallbacks == {"mask": LAYERS} and rec.density == 1.0 and rec.sparse_calls == 0


@pytest.mark.parametrize("name", spbench.method_names(sparse_only=True))
def test_registered_sparse_methods_run_in_the_model(tiny, name):
    from spbench.registry import get_class

    cls = get_class(name)
    model, _, inputs = tiny
    knobs = {"executor": "torch"} if "executor" in cls.knobs else {}
    ref = _logits(model, inputs)
    handle = sp.apply(model, name, budget=0.3, **knobs)
    try:
        got = _logits(model, inputs)
    finally:
        sp.remove(model)
    (rec,) = handle.records
    assert rec.sparse_calls == LAYERS and rec.dense_calls == 0
    assert 0 < rec.density < 1
    assert torch.isfinite(got).all() and got.shape == ref.shape


def test_bad_requests_are_one_line_errors(tiny):
    model, _, _ = tiny

    class Only128(BandMethod):
        head_dims = (128,)

    with pytest.raises(SpbenchError, match="unknown method"):
        sp.apply(model, "no-such-method")
    with pytest.raises(SpbenchError, match="no knob"):
        sp.apply(model, "dense", no_such_knob=1)
    with pytest.raises(SpbenchError, match="causal"):
        sp.apply(model, "dense", causal=False)
    with pytest.raises(SpbenchError, match="causal=True"):
        sp.apply(model, BandMethod(causal=False))
    with pytest.raises(SpbenchError, match="head dim 64"):
        sp.apply(model, Only128(causal=True))
    assert sp.get_state(model) is None
    assert model.config.text_config._attn_implementation == "sdpa"


def test_qwen2_backbones_text_and_llava_onevision():
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig

    text = Qwen2Config(vocab_size=300, hidden_size=256, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)
    ids = torch.randint(0, 290, (1, 200), generator=torch.Generator().manual_seed(1))
    lm = Qwen2ForCausalLM(text).eval()
    assert sp.find_language_backbone(lm) is lm.model
    ref = _logits(lm, {"input_ids": ids})
    method = BandMethod(causal=True)
    handle = sp.apply(lm, method)
    _logits(lm, {"input_ids": ids})
    sp.remove(lm)
    assert len(method.calls) == 2 and handle.records[0].sparse_calls == 2
    assert torch.equal(_logits(lm, {"input_ids": ids}), ref)

    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14)
    cfg = LlavaOnevisionConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), image_token_id=299, video_token_id=298)
    vlm = LlavaOnevisionForConditionalGeneration(cfg).eval()
    assert sp.find_language_backbone(vlm) is vlm.model.language_model
    handle = sp.apply(vlm, BandMethod(causal=True))
    try:
        assert vlm.model.language_model.config._attn_implementation == handle.key
        assert vlm.config.vision_config._attn_implementation == "sdpa"
        _logits(vlm, {"input_ids": ids})
    finally:
        sp.remove(vlm)
    assert handle.records[0].sparse_calls == 2
