"""Token Sparse Attention: the scoring kernel vs its reference, selection and
output against direct computations, gather/scatter, composition (knob routing,
density accounting, budgets) and knob errors."""

import math

import pytest
import torch

import spbench
from spbench.errors import SpbenchError
from spbench.kernels.token_score import (
    smooth_scores,
    window_key_scores_reference,
    window_key_scores_triton,
    window_positions,
)
from spbench.method import Method
from spbench.methods.token_sparse import TokenSparse, gather_rows, scatter_rows, split_inner_knobs
from spbench.plan import Plan
from spbench.registry import method_names
from spbench.workloads import make_qkv


# ---------------------------------------------------------------- scoring kernel
@pytest.mark.parametrize(
    "bsz,hq,hkv,length,dim,window,causal,split",
    [
        (1, 2, 2, 200, 32, 64, True, None),  # MHA, causal, ragged
        (1, 2, 2, 200, 32, 64, False, None),  # bidirectional, evenly sampled window
        (2, 4, 2, 131, 64, 40, True, 64),  # GQA 2, several key chunks merged
        (1, 4, 1, 150, 16, 128, False, 64),  # GQA 4, window of 128
        (1, 1, 1, 70, 128, 128, True, None),  # window longer than the sequence (capped)
        (1, 2, 1, 97, 48, 17, False, 32),  # head dim not a power of two, odd window
    ],
)
def test_score_kernel_matches_reference(bsz, hq, hkv, length, dim, window, causal, split):
    q = torch.randn(bsz, hq, length, dim)
    k = torch.randn(bsz, hkv, length, dim) * 1.5
    pos = window_positions(length, window, causal)
    got = window_key_scores_triton(q, k, pos, causal, split_len=split)
    want = window_key_scores_reference(q, k, pos, causal)
    assert got.shape == (bsz, hkv, length)
    assert torch.allclose(got, want, atol=1e-6, rtol=1e-4), (got - want).abs().max()
    assert torch.allclose(got.sum(-1), torch.ones(bsz, hkv), atol=1e-4)  # each row is a distribution


def test_score_kernel_bf16():
    q, k = torch.randn(1, 2, 160, 64).bfloat16(), torch.randn(1, 1, 160, 64).bfloat16()
    pos = window_positions(160, 32, False)
    got = window_key_scores_triton(q, k, pos, False)
    want = window_key_scores_reference(q, k, pos, False)
    assert torch.allclose(got, want, atol=2e-4, rtol=2e-2)


def test_score_reference_by_hand():
    q, k = torch.randn(1, 2, 6, 8), torch.randn(1, 1, 6, 8)
    pos = torch.tensor([2, 5])
    got = window_key_scores_reference(q, k, pos, causal=True, scale=0.5)
    want = torch.zeros(6)
    for h in range(2):
        for t in (2, 5):
            s = (q[0, h, t] @ k[0, 0, : t + 1].T) * 0.5
            want[: t + 1] += torch.softmax(s, 0) / 4
    assert torch.allclose(got[0, 0], want, atol=1e-6)


def test_window_positions():
    assert window_positions(10, 4, True).tolist() == [6, 7, 8, 9]
    even = window_positions(1000, 128, False)
    assert even[0] == 0 and even[-1] == 999 and even.unique().numel() == 128
    assert window_positions(50, 128, False).tolist() == list(range(50))


def test_smoothing_matches_loop():
    x = torch.rand(2, 3, 20)
    got = smooth_scores(x, 7)
    for i in range(20):
        lo, hi = max(0, i - 3), min(20, i + 4)
        assert torch.allclose(got[..., i], x[..., lo:hi].mean(-1))
    assert torch.equal(smooth_scores(x, 1), x)


# ---------------------------------------------------------------- selection and output
def direct_selection(q, k, window, causal, smooth, coverage, floor):
    """Token selection written out from METHODS.md (per KV head, loops, no kernels)."""
    bsz, hq, length, dim = q.shape
    hkv = k.shape[1]
    group = hq // hkv
    if causal:
        pos = list(range(length - window, length))
    else:
        pos = [round(i * (length - 1) / (window - 1)) for i in range(window)]
    scores = torch.zeros(bsz, hkv, length, dtype=torch.float64)
    for b in range(bsz):
        for h in range(hq):
            for t in pos:
                s = q[b, h, t].double() @ k[b, h // group].double().T / math.sqrt(dim)
                if causal:
                    s[t + 1 :] = float("-inf")
                scores[b, h // group] += torch.softmax(s, 0) / (group * len(pos))
    smoothed = torch.zeros_like(scores)
    for i in range(length):
        lo, hi = max(0, i - smooth // 2), min(length, i + smooth // 2 + 1)
        smoothed[..., i] = scores[..., lo:hi].mean(-1)
    kept = 0
    for b in range(bsz):
        mass = smoothed[b].mean(0)
        mass = mass / mass.sum()
        cum, dropped = 0.0, 0
        for value in sorted(mass.tolist()):
            cum += value
            if cum < coverage:
                dropped += 1
        kept = max(kept, length - dropped)
    kept = max(kept, floor, window)
    out = []
    for b in range(bsz):
        heads = []
        for g in range(hkv):
            ranked = smoothed[b, g].clone()
            ranked[pos] = float("inf")
            heads.append(sorted(torch.topk(ranked, kept).indices.tolist()))
        out.append(heads)
    return torch.tensor(out)


def direct_output(q, k, v, index, causal):
    """Exact attention among each head's kept tokens; zeros for the other query rows."""
    bsz, hq, length, dim = q.shape
    group = hq // k.shape[1]
    out = torch.zeros(bsz, hq, length, v.shape[-1], dtype=torch.float64)
    for b in range(bsz):
        for h in range(hq):
            idx = index[b, h // group]
            s = q[b, h, idx].double() @ k[b, h // group, idx].double().T / math.sqrt(dim)
            if causal:
                s = s.masked_fill(idx[None, :] > idx[:, None], float("-inf"))
            out[b, h, idx] = torch.softmax(s, -1) @ v[b, h // group, idx].double()
    return out


@pytest.mark.parametrize("causal,hq,hkv,coverage", [(False, 2, 2, 0.3), (True, 4, 2, 0.05), (False, 4, 1, 0.3)])
def test_selection_and_output_match_direct(causal, hq, hkv, coverage):
    q, k, v = make_qkv("video", 1, hq, hkv, 300, 32, seed=4)
    knobs = dict(window=32, coverage=coverage, min_tokens=64, causal=causal)
    m = TokenSparse(**knobs)  # executor "auto": the Triton scoring kernel under the interpreter
    plan = m.plan(q, k, v)
    index = plan.extras["token_indices"]
    want_index = direct_selection(q, k, 32, causal, 7, coverage, 64)
    assert index.shape == want_index.shape and 64 < index.shape[-1] < 300
    assert torch.equal(index, want_index)
    out = m.run(q, k, v, plan)
    assert torch.allclose(out.double(), direct_output(q, k, v, index, causal), atol=1e-5)
    assert plan.stats["keep_rule"] == "coverage"


@pytest.mark.parametrize("inner", ["dense", "rectified"])
def test_all_tokens_kept_equals_inner(inner):
    q, k, v = make_qkv("video", 1, 4, 2, 256, 32, seed=6)
    inner_knobs = {"inner.executor": "torch", "inner.block": 64} if inner == "rectified" else {}
    reference = spbench.get_method(inner, **{key[6:]: value for key, value in inner_knobs.items()})
    want = reference(q, k, v)
    for knobs in (dict(), dict(coverage=0.0, min_tokens=0, executor="torch")):  # short sequence; nothing to drop
        m = spbench.get_method(f"token-sparse+{inner}", **knobs, **inner_knobs)
        plan = m.plan(q, k, v)
        assert plan.extras["token_indices"] is None and plan.stats["kept_fraction"] == 1.0
        assert plan.density == pytest.approx(1.0 if inner == "dense" else plan.extras["inner_plan"].density)
        assert torch.allclose(m.run(q, k, v, plan), want, atol=1e-6)


def test_gather_scatter_round_trip():
    x = torch.randn(2, 6, 50, 8)
    g = torch.Generator().manual_seed(1)
    index = torch.sort(torch.stack([torch.stack([torch.randperm(50, generator=g)[:20] for _ in range(3)]) for _ in range(2)]), dim=-1).values
    compact = gather_rows(x, index)  # 6 query heads, 3 index groups
    assert compact.shape == (2, 6, 20, 8)
    assert torch.equal(compact[1, 5], x[1, 5, index[1, 2]])
    back = scatter_rows(compact, index, 50)
    mask = torch.zeros(2, 6, 50, dtype=torch.bool)
    mask.scatter_(2, index.repeat_interleave(2, dim=1), True)
    assert torch.equal(back[mask], x[mask]) and torch.all(back[~mask] == 0)
    full = torch.arange(50).expand(2, 3, 50)
    assert torch.equal(scatter_rows(gather_rows(x, full), full, 50), x)


# ---------------------------------------------------------------- composition
class DiagonalBlocks(Method):
    """Test inner method: each query block attends to its own block and block 0."""

    name = "diag-test"

    def plan(self, q, k, v):
        nq, nk = -(-q.shape[2] // 32), -(-k.shape[2] // 32)
        levels = torch.zeros(q.shape[0], q.shape[1], nq, nk, dtype=torch.int8)
        levels[..., 0] = 1
        levels[..., torch.arange(nq), torch.arange(nq)] = 1
        return Plan.from_levels(levels, q.shape[2], k.shape[2], 32, 32, self.causal)

    def run(self, q, k, v, plan):
        from spbench.kernels.executor import execute

        return execute(q, k, v, plan, backend="torch")


@pytest.mark.parametrize("causal", [False, True])
def test_composition_density_accounting(causal):
    q, k, v = make_qkv("video", 1, 2, 1, 400, 32, seed=7)
    m = TokenSparse(inner=DiagonalBlocks(causal=causal), coverage=0.2, min_tokens=0, window=32, causal=causal, executor="torch")
    plan = m.plan(q, k, v)
    kept = plan.stats["kept_tokens"]
    assert 32 <= kept < 400
    # brute force: (query, key) pairs the inner plan computes, over the full sequence's pairs
    levels = plan.extras["inner_plan"].to_levels()[0, 0]
    t = torch.arange(kept)
    pairs = (levels[t[:, None] // 32, t[None, :] // 32] > 0) & ((t[None, :] <= t[:, None]) if causal else True)
    full = 400 * 401 // 2 if causal else 400 * 400
    assert plan.density == pytest.approx(float(pairs.sum()) / full)
    out = m.run(q, k, v, plan)
    assert out.shape == q.shape and torch.all(out[0, :, ~torch.isin(torch.arange(400), plan.extras["token_indices"][0, 0])] == 0)


def test_knob_routing_and_description():
    m = spbench.get_method("tokensparse+rectified", budget=0.1, causal=True, inner_drop_rate=0.5, **{"inner.block": 64, "inner.executor": "torch"})
    assert isinstance(m, TokenSparse) and m.inner.name == "rectified"
    assert m.inner.params["drop_rate"] == 0.5 and m.inner.params["block"] == 64 and m.inner.causal
    assert m.inner.budget == pytest.approx(0.1**0.75)
    info = m.describe()
    assert info["method"] == "token-sparse+rectified" and info["inner.block"] == 64
    explicit = spbench.get_method("token-sparse+rectified", budget=0.1, inner_budget=0.4)
    assert explicit.inner.budget == 0.4
    assert spbench.get_method("token-sparse", budget=0.1, coverage=0.01, inner="rectified").inner.budget == 0.1
    assert spbench.get_method("token-sparse").describe()["method"] == "token-sparse"
    assert split_inner_knobs({"inner.tau": 1, "inner_x": 2, "window": 3}) == ({"window": 3}, {"tau": 1, "x": 2})
    # the outer executor knob reaches an inner method that has one
    assert spbench.get_method("token-sparse+rectified", executor="torch").inner.params["executor"] == "torch"


@pytest.mark.parametrize("causal", [False, True])
def test_budget_on_video_dense_inner(causal):
    q, k, v = make_qkv("video", 1, 2, 1, 2048, 32, seed=0)
    for budget in (0.05, 0.1, 0.2, 0.3, 0.5):
        plan = spbench.get_method("token-sparse", budget=budget, causal=causal, executor="torch").plan(q, k, v)
        assert abs(plan.density - budget) <= 0.2 * budget, (budget, plan.density)
        assert plan.stats["keep_rule"] == "budget"


def test_budget_on_video_composed():
    q, k, v = make_qkv("video", 1, 2, 1, 8192, 64, seed=0)
    for budget in (0.05, 0.2, 0.5):
        m = spbench.get_method("token-sparse+rectified", budget=budget, executor="torch")
        plan = m.plan(q, k, v)
        inner = plan.extras["inner_plan"]
        kept = plan.stats["kept_tokens"]
        assert plan.density == pytest.approx(inner.density * (kept / 8192) ** 2)
        assert abs(plan.density - budget) <= 0.2 * budget, (budget, plan.density)


@pytest.mark.parametrize("inner", ["psa", "xattention", "block"])
def test_composes_with_other_planners(inner):
    if inner not in method_names():
        pytest.skip(f"method {inner!r} is not registered yet")
    q, k, v = make_qkv("video", 1, 2, 1, 2048, 64, seed=0)
    m = spbench.get_method(f"token-sparse+{inner}", budget=0.2, executor="torch")
    plan = m.plan(q, k, v)
    kept = plan.stats["kept_tokens"]
    assert kept < 2048
    assert plan.density == pytest.approx(plan.extras["inner_plan"].density * (kept / 2048) ** 2)
    assert abs(plan.density - 0.2) <= 0.2 * 0.2  # the inner planner meets its share of the budget
    out = m.run(q, k, v, plan)
    assert out.shape == q.shape and torch.isfinite(out).all()


def test_plan_reuses_gathered_tensors_once():
    q, k, v = make_qkv("video", 1, 2, 1, 600, 32, seed=2)
    m = spbench.get_method("token-sparse+rectified", budget=0.2, executor="torch", inner_block=32)
    plan = m.plan(q, k, v)
    assert "compact" in plan.extras
    first = m.run(q, k, v, plan)
    assert "compact" not in plan.extras  # released after use
    assert torch.equal(m.run(q, k, v, plan), first)  # second run gathers again, same result


def _nan_out(q):
    """A [B, L, H, D] buffer of NaN and its [B, H, L, D] view: rows nobody writes stay NaN."""
    buf = torch.full((q.shape[0], q.shape[2], q.shape[1], q.shape[3]), float("nan"), dtype=q.dtype)
    return buf, buf.transpose(1, 2)


@pytest.mark.parametrize(
    "name,knobs",
    [
        ("token-sparse", dict(coverage=0.3, min_tokens=64, window=32, causal=True)),  # dense inner, compacted
        ("token-sparse+rectified", dict(budget=0.2, executor="torch", inner_block=32, causal=True)),  # sparse inner, stash reused
        ("token-sparse+rectified", dict(inner_block=32)),  # short: the whole sequence goes to the inner's out=
    ],
)
def test_run_into_strided_out_equals_run(name, knobs):
    """out= (the transpose view of a [B, L, H, D] buffer) gets exactly run()'s result, zero rows included."""
    q, k, v = make_qkv("video", 1, 4, 2, 600, 32, seed=9)
    m = spbench.get_method(name, **knobs)
    assert m.writes_out
    plan = m.plan(q, k, v)
    buf, view = _nan_out(q)
    assert m.run(q, k, v, plan, out=view) is view
    want = m.run(q, k, v, plan)
    assert torch.equal(view, want)
    if plan.extras["token_indices"] is not None:
        assert (want == 0).all(-1).any()  # dropped query rows exist, and the NaN there was zeroed
    with pytest.raises(SpbenchError, match="out must be"):
        m.run(q, k, v, plan, out=buf)  # [B, L, H, D] itself is the wrong shape


def test_inner_without_out_still_fills_out():
    """A whole-sequence plan with an inner whose run() predates out=: run_into copies its result."""
    q, k, v = make_qkv("video", 1, 2, 1, 200, 32, seed=3)
    m = TokenSparse(inner=DiagonalBlocks(causal=True), causal=True, executor="torch")  # 200 <= min_tokens
    plan = m.plan(q, k, v)
    assert plan.extras["token_indices"] is None
    _, view = _nan_out(q)
    m.run(q, k, v, plan, out=view)
    assert torch.equal(view, m.run(q, k, v, plan))


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "name,knobs,match",
    [
        ("token-sparse", dict(coverage=1.0), "coverage"),
        ("token-sparse", dict(coverage=-0.01), "coverage"),
        ("token-sparse", dict(min_tokens=-1), "min_tokens"),
        ("token-sparse", dict(smooth=4), "smooth"),
        ("token-sparse", dict(budget_split=0.0), "budget_split"),
        ("token-sparse+nosuch", {}, "unknown method"),
        ("token-sparse", dict(inner="nosuch"), "unknown method"),
        ("token-sparse+rectified", dict(inner_nosuch=1), "no knob 'nosuch'"),
        ("token-sparse+rectified", dict(inner_p=-1.0), "p must be"),
        ("token-sparse+rectified", dict(causal=True, inner_causal=False), "causal"),
        ("token-sparse", dict(executor="gpu"), "executor"),
    ],
)
def test_bad_knobs(name, knobs, match):
    with pytest.raises(SpbenchError, match=match):
        spbench.get_method(name, **knobs)


def test_cross_attention_is_refused():
    q, k, v = make_qkv("random", 1, 2, 2, 64, 16, kv_seq=32)
    with pytest.raises(SpbenchError, match="self-attention"):
        TokenSparse(min_tokens=0).plan(q, k, v)
