import pytest
import torch

import spbench
from spbench.errors import SpbenchError, UnavailableError


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("hq,hkv", [(4, 4), (4, 2), (6, 1)])
def test_dense_baselines_match_reference(causal, hq, hkv):
    q = torch.randn(2, hq, 77, 32)
    k = torch.randn(2, hkv, 77, 32)
    v = torch.randn(2, hkv, 77, 32)
    ref = spbench.get_method("reference", causal=causal, chunk=16)(q, k, v)
    exact = torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(hq // hkv, 1), v.repeat_interleave(hq // hkv, 1), is_causal=causal)
    assert torch.allclose(ref, exact, atol=1e-5)
    out = spbench.get_method("dense", causal=causal)(q, k, v)
    assert torch.allclose(out, ref, atol=1e-5)
    plan = spbench.get_method("dense").plan(q, k, v)
    assert plan.is_dense and plan.density == 1.0


@pytest.mark.parametrize("name", ["dense", "reference"])
def test_dense_out_gets_a_copy_of_the_result(name):
    """SDPA cannot store into out=: the result is copied there, and writes_out says so."""
    q, k, v = torch.randn(1, 4, 50, 16), torch.randn(1, 2, 50, 16), torch.randn(1, 2, 50, 16)
    m = spbench.get_method(name, causal=True)
    assert not m.writes_out
    plan = m.plan(q, k, v)
    buf = torch.full((1, 50, 4, 16), float("nan"))
    assert m.run(q, k, v, plan, out=buf.transpose(1, 2)) is not None
    assert torch.equal(buf.transpose(1, 2), m.run(q, k, v, plan))
    buf.fill_(float("nan"))
    assert m.run_into(q, k, v, plan, buf.transpose(1, 2)).data_ptr() == buf.data_ptr()
    assert torch.equal(buf.transpose(1, 2), m.run(q, k, v, plan))
    with pytest.raises(SpbenchError, match="out must be"):
        m.run(q, k, v, plan, out=buf)


@pytest.mark.parametrize("name", ["cudnn", "flash", "efficient"])
def test_pinned_backends_run_or_fail_clearly(name):
    q = torch.randn(1, 2, 64, 64)
    m = spbench.get_method(name)
    try:
        out = m(q, q, q)
    except UnavailableError as exc:
        assert name in str(exc) and "\n" not in str(exc)
        assert not torch.cuda.is_available()
    else:
        assert torch.allclose(out, spbench.get_method("reference")(q, q, q), atol=2e-2)


def test_reference_handles_long_sequences_without_lxl_memory():
    # 16k x 16k fp32 scores would be 1 GiB per head; chunking keeps it to chunk x L.
    q = torch.randn(1, 1, 16384, 16)
    out = spbench.get_method("reference", chunk=512)(q[:, :, :1024], q, q)
    assert out.shape == (1, 1, 1024, 16) and torch.isfinite(out).all()


def test_bad_shapes_are_clear():
    with pytest.raises(SpbenchError, match="multiple"):
        spbench.get_method("dense")(torch.randn(1, 3, 8, 16), torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16))
    with pytest.raises(SpbenchError, match="batch, heads"):
        spbench.get_method("dense")(torch.randn(3, 8, 16), torch.randn(3, 8, 16), torch.randn(3, 8, 16))
