import pytest
import torch
import torch.nn.functional as F

from spbench.kernels.reference import exact_attention, pyramid_attention_reference, repeated_keys_reference, sum_causal_pairs


def test_exact_attention_matches_sdpa_gqa_causal():
    q, k, v = torch.randn(2, 4, 70, 32), torch.randn(2, 2, 90, 32), torch.randn(2, 2, 90, 32)
    for causal in (False, True):
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
        assert torch.allclose(exact_attention(q, k, v, causal, chunk=16), ref, atol=1e-5)


def test_exact_attention_sampled_rows():
    q, k, v = torch.randn(1, 2, 64, 16), torch.randn(1, 2, 64, 16), torch.randn(1, 2, 64, 16)
    rows = torch.tensor([0, 5, 63])
    full = exact_attention(q, k, v, causal=True)
    assert torch.allclose(exact_attention(q, k, v, causal=True, rows=rows), full[:, :, rows], atol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("bq,bk", [(64, 32), (32, 64)])
def test_two_references_agree(causal, bq, bk):
    q, k, v = torch.randn(1, 2, 90, 16), torch.randn(1, 1, 75, 16), torch.randn(1, 1, 75, 16)
    nq, nk = -(-90 // bq), -(-75 // bk)
    levels = torch.tensor([0, 1, 2, 4, 8])[torch.randint(0, 5, (1, 2, nq, nk))]
    a = pyramid_attention_reference(q, k, v, levels, bq, bk, causal)
    b = repeated_keys_reference(q, k, v, levels, bq, bk, causal)
    assert torch.allclose(a, b, atol=1e-5)


def test_all_level_one_is_dense():
    q, k, v = torch.randn(1, 2, 50, 16), torch.randn(1, 2, 50, 16), torch.randn(1, 2, 50, 16)
    levels = torch.ones(1, 2, 1, 2, dtype=torch.int64)
    out = pyramid_attention_reference(q, k, v, levels, 64, 32, causal=True)
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-5)


def test_causal_pairs():
    assert sum_causal_pairs(4, 4) == 10
    assert sum_causal_pairs(3, 5) == 6
    assert sum_causal_pairs(5, 3) == 6 + 2 * 3
