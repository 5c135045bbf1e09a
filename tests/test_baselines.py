"""baselines.py: the Transformer's and Mamba's parameter counts, rotary positions, Mamba's scans against the
sequential recurrence, and its initialisation.

Run: python -m pytest -q tests/test_baselines.py
"""


import pytest
import torch
import torch.nn.functional as F
from conftest import V, n_params, tiny

from baselines import (
    Mamba,
    MambaConfig,
    Transformer,
    TransformerConfig,
    rotate,
    scan_parallel,
    scan_sequential,
    selective_scan,
    selective_scan_chunked,
)


def test_baseline_parameter_counts_match_the_paper():
    assert n_params(Transformer(TransformerConfig(vocab_size=10_000))) == 24_166_400
    # the paper's Mamba (20,504,576) stacked bare mixers; ours adds one LayerNorm (weight + bias) per layer
    assert n_params(Mamba(MambaConfig(vocab_size=10_000))) == 20_504_576 + 6 * 2 * 512


def test_rotary_attention_sees_relative_positions_only():
    # a query turned by m against a key turned by n: the score depends on m - n, and turning keeps the norm
    q, k = torch.randn(2, 3, 1, 8), torch.randn(2, 3, 1, 8)
    scores = [(rotate(q, torch.tensor([m])) * rotate(k, torch.tensor([n]))).sum(-1)
              for m, n in ((5, 2), (105, 102), (3, 0))]
    for other in scores[1:]:
        torch.testing.assert_close(other, scores[0])
    torch.testing.assert_close(rotate(q, torch.tensor([7])).norm(dim=-1), q.norm(dim=-1))
    torch.testing.assert_close(rotate(q, torch.tensor([0])), q)
    # so a rotary Transformer needs no position table, and where its window is full, a logit does not depend on
    # where in the sequence it stands: the last 6 tokens of 10 score as those 6 alone (a window of 3 in 2 layers
    # reaches 5 back); with learned positions they do not
    for positions, same in (("rope", True), ("learned", False)):
        model = tiny("transformer", positions=positions, attn_window=3).eval()
        idx = torch.randint(0, V, (2, 10))
        moved = model(idx)[0][:, -1] - model(idx[:, 4:])[0][:, -1]
        assert (moved.abs().max() < 1e-5) == same, positions
    assert tiny("transformer", positions="rope").wpe is None
    assert n_params(tiny("transformer")) - n_params(tiny("transformer", positions="rope")) == 32 * 32  # T x C


@pytest.mark.parametrize("T", [1, 2, 5, 16, 37, 64])
def test_parallel_scan_equals_sequential_values_and_gradients(T):
    a = torch.rand(2, T, 3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, T, 3, 4, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    for start in (None, h0):
        fast, ref = scan_parallel(a, b, start), scan_sequential(a, b, start)
        torch.testing.assert_close(fast, ref)
        g = torch.randn_like(fast)
        inputs = [a, b] if start is None else [a, b, h0]
        # at T = 1 with no h0 the parallel scan never touches a, whose gradient is then zero
        fast_grads = torch.autograd.grad(fast, inputs, g, allow_unused=True)
        for x, y, inp in zip(fast_grads, torch.autograd.grad(ref, inputs, g), inputs):
            torch.testing.assert_close(torch.zeros_like(inp) if x is None else x, y)


@pytest.mark.parametrize("T", [1, 5, 8, 37])
@pytest.mark.parametrize("with_h0", [False, True])
def test_chunked_selective_scan_equals_the_sequential_values_and_gradients(T, with_h0):
    B, E, N = 2, 3, 4
    delta = F.softplus(torch.randn(B, T, E, dtype=torch.float64)).requires_grad_()
    A = (-torch.rand(E, N, dtype=torch.float64) * 4).requires_grad_()
    u, Bm, Cm = (torch.randn(B, T, k, dtype=torch.float64, requires_grad=True) for k in (E, N, N))
    h0 = torch.randn(B, E, N, dtype=torch.float64, requires_grad=True) if with_h0 else None
    fast = selective_scan_chunked(delta, A, u, Bm, Cm, h0, chunk_size=8)  # 37 = 4 chunks of 8 and one of 5
    ref = selective_scan(delta, A, u, Bm, Cm, h0, scan_sequential)
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b)
    inputs = [delta, A, u, Bm, Cm] + ([h0] if with_h0 else [])
    gy, gh = torch.randn_like(ref[0]), torch.randn_like(ref[1])
    grads = []
    for y, h in (fast, ref):  # .backward, not autograd.grad: the chunks' checkpoints are the reentrant kind
        ((y * gy).sum() + (h * gh).sum()).backward()
        # at T = 1 with no h0 the log-depth scan never touches exp(delta A), so A gets no gradient (zero)
        grads.append([torch.zeros_like(x) if x.grad is None else x.grad for x in inputs])
        for x in inputs:
            x.grad = None
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_chunked_scan_keeps_no_full_size_state_for_backward():
    B, T, E, N = 1, 256, 8, 4
    delta, u = (torch.rand(B, T, E, requires_grad=True) for _ in range(2))
    A = -torch.rand(E, N)
    Bm, Cm = (torch.randn(B, T, N, requires_grad=True) for _ in range(2))
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: kept.append(x.numel()) or x, lambda x: x):
        selective_scan_chunked(delta, A, u, Bm, Cm, chunk_size=16)
    assert max(kept) < B * 16 * E * N  # nothing of (B, T, E, N), nor even of one chunk's (B, 16, E, N)


@pytest.mark.parametrize("scan", ["chunked", "compiled"])
def test_mamba_model_is_the_same_with_every_scan(scan):
    fast = tiny("mamba", scan=scan)
    slow = tiny("mamba", scan="sequential")
    slow.load_state_dict(fast.state_dict())
    idx = torch.randint(0, V, (2, 21))
    a, la = fast(idx, idx)
    b, lb = slow(idx, idx)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    la.backward()
    lb.backward()
    for (name, p), q in zip(fast.named_parameters(), slow.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_mamba_without_positions_has_no_table_and_sees_order_by_its_recurrence():
    learned, none = tiny("mamba"), tiny("mamba", positions="none")
    assert none.wpe is None and n_params(learned) - n_params(none) == 32 * 32  # T x C
    none.eval()
    idx = torch.randint(0, V, (1, 12))
    swapped = idx.clone()
    swapped[0, [3, 4]] = idx[0, [4, 3]]
    # the same tokens in another order give another last logit: order reaches it through the scan alone
    assert (none(idx)[0][0, -1] - none(swapped)[0][0, -1]).abs().max() > 1e-4


def test_mamba_initialisation_is_mamba_ssms():
    mixer = tiny("mamba", n_embd=64).blocks[0].mixer
    assert mixer.A_log.dtype == torch.float32 and mixer.A_log.shape == (192, 16)
    torch.testing.assert_close(-torch.exp(mixer.A_log[0]), -torch.arange(1.0, 17.0))
    assert torch.all(mixer.D == 1)
    dt = F.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
