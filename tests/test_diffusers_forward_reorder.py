"""Once-per-forward token reordering on Wan (reorder_scope="forward") against per-call reordering."""

import pytest
import torch
from torch.overrides import TorchFunctionMode

from video_tiny import one_thread, tiny_wan, wan_inputs

from spbench.errors import SpbenchError
from spbench.integrations import diffusers as spd
from spbench.registry import method_names

SPARSE = method_names(sparse_only=True)
GATHERS = {torch.index_select, torch.Tensor.index_select, torch.gather, torch.Tensor.gather, torch.take, torch.Tensor.take}


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


def _both_scopes(model, x, enc, name, **kw):
    outs, stats = {}, {}
    for scope in ("call", "forward"):
        handle = spd.apply(model, name, reorder_scope=scope, **kw)
        try:
            outs[scope] = _run(model, x, enc)
            stats[scope] = handle.stats()
        finally:
            spd.remove(model)
    return outs, stats


def test_dense_method_is_bit_identical_in_both_scopes(wan):
    # Every layer through the method: the method sees the same curve-ordered Q/K/V either way.
    model, x, enc, ref = wan
    outs, stats = _both_scopes(model, x, enc, "dense", dense_steps=0, dense_layers=0)
    assert torch.equal(outs["forward"], outs["call"])
    assert stats["forward"]["forward_reorders"] == 1 and stats["call"]["forward_reorders"] == 0
    torch.testing.assert_close(outs["forward"], ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", SPARSE)
def test_sparse_methods_match_per_call_reordering(wan, name):
    # Layer 0 runs SDPA on curve-ordered tokens (order-invariant up to rounding), layer 1 the method.
    model, x, enc, ref = wan
    outs, stats = _both_scopes(model, x, enc, name, budget=0.3, dense_steps=0, dense_layers=1)
    assert stats["forward"]["sparse_calls"] == 1 and stats["forward"]["forward_reorders"] == 1
    assert stats["forward"]["sparse_density"] == pytest.approx(stats["call"]["sparse_density"])
    torch.testing.assert_close(outs["forward"], outs["call"], atol=2e-5, rtol=1e-4)
    assert not torch.equal(outs["forward"], ref)  # the method did run sparse


def test_remove_restores_bit_identical_outputs_and_drops_every_hook(wan):
    model, x, enc, ref = wan
    counts = lambda: [len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules()]  # noqa: E731
    before = counts()
    handle = spd.apply(model, SPARSE[0], budget=0.3, dense_steps=0, dense_layers=0)
    assert counts() != before
    _run(model, x, enc)
    assert handle.stats()["forward_reorders"] == 1
    spd.remove(model)
    assert counts() == before
    assert torch.equal(_run(model, x, enc), ref)


class _GatherCounter(TorchFunctionMode):
    """Counts gathers, except inside method.plan / method.run (the method's own work)."""

    def __init__(self):
        super().__init__()
        self.gathers = 0
        self.paused = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in GATHERS and not self.paused:
            self.gathers += 1
        return func(*args, **(kwargs or {}))

    def wrap_method(self, handle):
        method_for = handle.method_for

        def paused(fn):
            def call(*args, **kwargs):
                self.paused = True
                try:
                    return fn(*args, **kwargs)
                finally:
                    self.paused = False

            return call

        def wrapped(*args, **kwargs):
            method = method_for(*args, **kwargs)
            method.plan, method.run = paused(type(method).plan.__get__(method)), paused(type(method).run.__get__(method))
            return method

        handle.method_for = wrapped


def _count_processor_gathers(model, x, enc, scope):
    name = "block" if "block" in SPARSE else SPARSE[0]
    handle = spd.apply(model, name, budget=0.3, dense_steps=0, dense_layers=0, reorder_scope=scope)
    counter = _GatherCounter()
    counter.wrap_method(handle)
    for block in model.blocks:
        processor = block.attn1.processor

        def counted(*args, _p=processor.__class__.__call__, _self=processor, **kwargs):
            with counter:
                return _p(_self, *args, **kwargs)

        block.attn1.processor = type("Counted", (), {"__call__": staticmethod(counted)})()
    try:
        out = _run(model, x, enc)
        calls = handle.stats()["sparse_calls"]
    finally:
        spd.remove(model)
    return counter.gathers, calls, out


def test_processors_do_no_gather_when_the_forward_is_reordered(wan):
    model, x, enc, ref = wan
    per_call, calls, _ = _count_processor_gathers(model, x, enc, "call")
    assert calls == 2 and per_call >= 2 * 4  # the detector sees q, k, v and the output gathered per call
    forward, calls, _ = _count_processor_gathers(model, x, enc, "forward")
    assert calls == 2 and forward == 0
    assert torch.equal(_run(model, x, enc), ref)


def test_warmup_forwards_stay_in_model_order(wan):
    model, x, enc, ref = wan
    handle = spd.apply(model, SPARSE[0], budget=0.3, dense_steps=1, dense_layers=1)
    assert torch.equal(_run(model, x, enc, 900), ref)  # step 0: dense throughout, not reordered
    assert handle.stats()["forward_reorders"] == 0
    _run(model, x, enc, 800)  # step 1: layer 1 sparse, the forward is reordered
    assert handle.stats()["forward_reorders"] == 1 and handle.stats()["sparse_calls"] == 1
    spd.remove(model)
    # Every layer dense: nothing sparse to reorder for.
    handle = spd.apply(model, SPARSE[0], budget=0.3, dense_steps=0, dense_layers=2)
    assert torch.equal(_run(model, x, enc), ref) and handle.stats()["forward_reorders"] == 0
    spd.remove(model)


def test_per_token_timesteps_fall_back_to_per_call_reordering(wan):
    # Wan2.2 TI2V modulates by token position ([B, L] timesteps): that forward reorders per call.
    model, x, enc, _ = wan
    t = torch.full((1, 320), 900)
    outs = {}
    for scope in ("call", "forward"):
        handle = spd.apply(model, "dense", dense_steps=0, dense_layers=0, reorder_scope=scope)
        outs[scope] = model(x, t, enc).sample
        assert handle.stats()["forward_reorders"] == 0 and handle.stats()["sparse_calls"] == 2
        spd.remove(model)
    assert torch.equal(outs["forward"], outs["call"])


def test_capture_sees_the_model_order_in_both_scopes(wan):
    model, x, enc, _ = wan
    seen = {}
    for scope in ("call", "forward"):
        handle = spd.apply(model, "dense", dense_steps=0, dense_layers=0, reorder_scope=scope)
        handle.capture = lambda info, q, k, v, _s=scope: seen.setdefault(_s, []).append((q.clone(), v.clone()))
        _run(model, x, enc)
        spd.remove(model)
    for (qc, vc), (qf, vf) in zip(seen["call"], seen["forward"]):
        assert torch.equal(qc, qf) and torch.equal(vc, vf)


def test_bad_reorder_scope_and_timing_off(wan):
    model, x, enc, _ = wan
    with pytest.raises(SpbenchError, match="reorder_scope"):
        spd.apply(model, "dense", dense_steps=0, reorder_scope="block")
    handle = spd.apply(model, "dense", dense_steps=0, timing=False)
    _run(model, x, enc)
    assert handle.stats()["attention_s"] is None and handle.stats()["attention_calls"] == 2
    assert handle.describe()["reorder_scope"] == "forward"
    spd.remove(model)
