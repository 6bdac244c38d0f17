"""spbench methods attached to tiny random-weight diffusers video transformers."""

import pytest
import torch

from video_tiny import one_thread, tiny_cogvideox, tiny_hunyuan, tiny_wan, wan_inputs

from spbench.errors import SpbenchError
from spbench.integrations import diffusers as spd
from spbench.registry import method_names

SPARSE = method_names(sparse_only=True)


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread(), torch.no_grad():
        yield


@pytest.fixture(scope="module")
def wan():
    with one_thread(), torch.no_grad():
        model = tiny_wan()
        x, enc = wan_inputs(frames=5, size=16)  # grid 5 x 8 x 8 = 320 tokens
        ref = model(x, torch.tensor([900]), enc).sample
    return model, x, enc, ref


def _run(model, x, enc, t=900):
    return model(x, torch.tensor([t]), enc).sample


def test_every_sparse_method_is_registered_here():
    # The integration must be exercised with every registered sparse method.
    assert SPARSE, "no sparse method registered"


@pytest.mark.parametrize("name", SPARSE)
def test_sparse_method_on_wan(wan, name):
    model, x, enc, ref = wan
    handle = spd.apply(model, name, budget=0.3, dense_steps=0, dense_layers=1, reorder="hilbert")
    try:
        out1 = _run(model, x, enc)
        stats = handle.stats()
        out2 = _run(model, x, enc)
    finally:
        spd.remove(model)
    assert out1.shape == ref.shape and torch.isfinite(out1).all()
    assert torch.equal(out1, out2), "same inputs must give the same video"
    assert stats["dense_calls"] == 1 and stats["sparse_calls"] == 1  # layer 0 dense, layer 1 the method
    assert 0.0 < stats["sparse_density"] <= 1.0
    assert stats["density"] == pytest.approx((1.0 + stats["sparse_density"]) / 2)
    assert stats["attention_s"] > 0
    assert torch.equal(_run(model, x, enc), ref), "remove() must restore dense outputs exactly"


def test_dense_through_processor_matches_model_and_remove_restores_objects(wan):
    model, x, enc, ref = wan
    originals = [b.attn1.processor for b in model.blocks]
    cross = [b.attn2.processor for b in model.blocks]
    handle = spd.apply(model, "dense", dense_steps=0, dense_layers=0, reorder="hilbert")
    assert all(isinstance(b.attn1.processor, spd.WanSparseProcessor) for b in model.blocks)
    assert [b.attn2.processor for b in model.blocks] == cross  # cross-attention untouched
    out = _run(model, x, enc)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert handle.stats()["density"] == 1.0
    assert spd.remove(model) is True
    assert all(b.attn1.processor is o for b, o in zip(model.blocks, originals))
    assert spd.remove(model) is False
    assert torch.equal(_run(model, x, enc), ref)


def test_sparse_output_differs_from_dense_and_reorder_matters(wan):
    model, x, enc, ref = wan
    name = "block" if "block" in SPARSE else SPARSE[0]
    outs = {}
    for order in ("none", "hilbert"):
        spd.apply(model, name, budget=0.2, dense_steps=0, dense_layers=0, reorder=order)
        outs[order] = _run(model, x, enc)
    spd.remove(model)
    assert not torch.equal(outs["hilbert"], ref)
    assert not torch.equal(outs["hilbert"], outs["none"])


def test_warmup_steps_and_generation_tracking(wan):
    model, x, enc, _ = wan
    handle = spd.apply(model, "dense", dense_steps=2, dense_layers=1)
    seen = []
    handle.capture = lambda info, q, k, v: seen.append((info.step, info.call, info.layer, handle.is_dense(info.layer)))
    for t in (900, 900, 800, 800, 700, 700):  # three steps, two (CFG) passes each
        _run(model, x, enc, t)
    stats = handle.stats()
    assert stats["steps"] == 3 and stats["dense_steps_run"] == 2
    assert stats["dense_calls"] == 2 * 2 * 2 + 2 * 1  # steps 0-1 all layers, step 2 layer 0
    assert stats["sparse_calls"] == 2
    assert [s[:3] for s in seen[:4]] == [(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1)]
    _run(model, x, enc, 950)  # a higher timestep: a new generation
    assert handle.step == 0 and handle.stats()["attention_calls"] == 2
    spd.remove(model)


def test_fraction_warmup_needs_step_count_on_bare_transformer(wan):
    model = wan[0]
    with pytest.raises(SpbenchError, match="total_steps"):
        spd.apply(model, "dense", dense_steps=0.25)
    handle = spd.apply(model, "dense", dense_steps=0.25, total_steps=8)
    _run(model, wan[1], wan[2])
    assert handle.stats()["dense_steps_run"] == 2
    spd.remove(model)
    with pytest.raises(SpbenchError, match="dense_steps"):
        spd.apply(model, "dense", dense_steps=1.5)
    with pytest.raises(SpbenchError, match="reorder"):
        spd.apply(model, "dense", dense_steps=0, reorder="zigzag")
    with pytest.raises(SpbenchError, match="unknown method"):
        spd.apply(model, "no-such-method", dense_steps=0)
    with pytest.raises(SpbenchError, match="no attention integration"):
        spd.apply(torch.nn.Linear(2, 2), "dense", dense_steps=0)
    assert all(isinstance(b.attn1.processor, type(wan[0].blocks[0].attn2.processor)) for b in model.blocks)


def test_text_len_reaches_methods_that_take_it(wan):
    if "rectified" not in SPARSE:
        pytest.skip("rectified not registered")
    model = tiny_cogvideox()
    x, enc = torch.randn(1, 3, 4, 16, 16), torch.randn(1, 8, 16)
    handle = spd.apply(model, "rectified", budget=0.3, dense_steps=0, dense_layers=0)
    model(x, enc, torch.tensor([500]))
    assert handle.method_for(8, handle.grid).params["text_len"] == 8
    spd.remove(model)


def _joint_case(kind):
    if kind == "cogvideox":
        model = tiny_cogvideox()
        x, enc = torch.randn(1, 3, 4, 16, 16), torch.randn(1, 8, 16)
        return model, lambda: model(x, enc, torch.tensor([500])).sample
    model = tiny_hunyuan()
    x, enc = torch.randn(1, 4, 3, 16, 16), torch.randn(1, 8, 16)
    kw = dict(encoder_attention_mask=torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0]]), pooled_projections=torch.randn(1, 8), guidance=torch.tensor([1000.0]))
    return model, lambda: model(x, torch.tensor([500]), enc, **kw).sample


@pytest.mark.parametrize("kind", ["cogvideox", "hunyuanvideo"])
def test_joint_attention_models(kind):
    model, run = _joint_case(kind)
    ref = run()
    handle = spd.apply(model, "dense", dense_steps=0, dense_layers=0, reorder="hilbert")
    torch.testing.assert_close(run(), ref, atol=1e-5, rtol=1e-5)  # same math as the model's processors
    assert handle.grid == (3, 8, 8)
    name = "block" if "block" in SPARSE else SPARSE[0]
    handle = spd.apply(model, name, budget=0.3, dense_steps=0, dense_layers=0)
    out = run()
    assert handle.stats()["sparse_calls"] == 2
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert torch.equal(run(), out)
    spd.remove(model)
    assert torch.equal(run(), ref)


def test_fused_projections_follow_the_model():
    model = tiny_wan(layers=1)
    x, enc = wan_inputs(frames=2, size=8)
    for block in model.blocks:
        block.attn1.fuse_projections()
        # Make the fused weights differ from to_q/to_k/to_v: only a processor that reads them matches.
        block.attn1.to_qkv.weight.data.add_(0.05)
    assert hasattr(model.blocks[0].attn1, "to_qkv")
    ref = _run(model, x, enc)
    spd.apply(model, "dense", dense_steps=0, dense_layers=0)
    torch.testing.assert_close(_run(model, x, enc), ref, atol=1e-5, rtol=1e-5)
    spd.remove(model)
