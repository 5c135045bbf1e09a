"""extensions/: each part beyond the paper against the plain version it replaces (the fused memory read, the
recomputing block, the written memory, the compiled scan, cached generation, the probe).

Run: python -m pytest -q tests/test_extensions.py
"""


import pytest
import torch
import torch.nn.functional as F
from conftest import ALL, IDS, V, assert_same_values_and_gradients, n_params, tiny

from baselines import scan_sequential, selective_scan
from extensions.context_memory import BankAndContextMemory, ContextMemory, NormedContextMemory, decayed_memory
from extensions.fused_read import FusedReadMixer
from extensions.generation import generate, new_cache
from extensions.mamba_scan import compiled_scan
from extensions.probe import record
from extensions.recompute import GeluLinear, RecomputedGAMBlock
from gam import GAMBlock, GAMConfig, GAMMixer
from runtime.models import build_model


def test_the_fused_memory_read_equals_the_papers_formula_values_and_gradients():
    plain = GAMMixer(GAMConfig(n_embd=24, n_slots=40))
    fused = FusedReadMixer(GAMConfig(n_embd=24, n_slots=40, memory_read="fused"))
    fused.load_state_dict(plain.state_dict())
    h = torch.randn(3, 17, 24, requires_grad=True)
    formula = torch.softmax(h @ plain.memory.T, dim=-1) @ plain.memory  # softmax(h Mᵀ) M, eqs. (1)-(3)
    torch.testing.assert_close(plain.read(h), formula, rtol=0, atol=0)
    assert_same_values_and_gradients(fused.read(h), formula, [h, fused.memory], [h, plain.memory], rtol=1e-4,
                                     atol=1e-6)
    assert_same_values_and_gradients(fused(h), plain(h), [h, *fused.parameters()], [h, *plain.parameters()],
                                     rtol=1e-4, atol=1e-6)


def test_gelu_linear_equals_plain_autograd_values_and_gradients():
    a = torch.randn(3, 3001, 16, requires_grad=True)  # 9,003 tokens: three slices of GELU's in-place backward
    lin = torch.nn.Linear(16, 8)
    ours = GeluLinear.apply(a, lin.weight, lin.bias)
    ref = lin(F.gelu(a))
    torch.testing.assert_close(ours, ref)
    g = torch.randn_like(ref)
    for x, y in zip(torch.autograd.grad(ours, [a, *lin.parameters()], g),
                    torch.autograd.grad(ref, [a, *lin.parameters()], g)):
        torch.testing.assert_close(x, y)
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        GeluLinear.apply(a, lin.weight, lin.bias)
    assert sorted(t.numel() for t in kept) == [lin.weight.numel(), a.numel()]  # not gelu(a)


@pytest.mark.parametrize("recompute", ["gelu", "mixer", "ffn", "both"])
def test_recomputing_parts_of_a_block_changes_nothing_but_memory(recompute):
    plain = GAMBlock(GAMConfig(n_embd=32, n_slots=16, dropout=0.1))
    lean = RecomputedGAMBlock(GAMConfig(n_embd=32, n_slots=16, dropout=0.1, recompute=recompute))
    lean.load_state_dict(plain.state_dict())
    x = torch.randn(2, 9, 32, requires_grad=True)
    outs, grads, stored = [], [], []
    for blk in (plain, lean):
        torch.manual_seed(5)  # the same dropout mask in both
        stored.append(0)

        def count(t):
            stored[-1] += t.numel()
            return t
        with torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
            y = blk(x)
        outs.append(y)
        grads.append(torch.autograd.grad(y.pow(2).sum(), [x, *blk.parameters()]))
    torch.testing.assert_close(outs[0], outs[1])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    assert stored[1] < stored[0]  # the point of it: the forward keeps fewer activations for backward


def test_model_builds_the_recomputing_block_only_when_asked():
    assert all(type(b) is GAMBlock for b in tiny("gam").blocks)
    lean = tiny("gam", recompute="mixer")
    assert all(type(b) is RecomputedGAMBlock for b in lean.blocks)
    assert lean.state_dict().keys() == tiny("gam").state_dict().keys()  # checkpoints load either way


def memory_sequential(q, k, v, log_decay, S):
    """Reference: S_t = g_t S_{t-1} + k_t v_t^T, o_t = S_t^T q_t, one token at a time."""
    outs = []
    for t in range(q.size(2)):
        S = log_decay[:, :, t].exp()[..., None, None] * S + k[:, :, t, :, None] * v[:, :, t, None, :]
        outs.append((q[:, :, t, None, :] @ S).squeeze(-2))
    return torch.stack(outs, dim=2), S


@pytest.mark.parametrize("T,chunk", [(1, 4), (13, 4), (16, 16), (37, 8), (37, 64)])
def test_chunked_memory_equals_the_recurrence_values_and_gradients(T, chunk):
    q, k, v = (torch.randn(2, 3, T, 5, dtype=torch.float64, requires_grad=True) for _ in range(3))
    log_decay = F.logsigmoid(torch.randn(2, 3, T, dtype=torch.float64) + 2).requires_grad_()
    S0 = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    fast, fast_S = decayed_memory(q, k, v, log_decay, S0, chunk)
    ref, ref_S = memory_sequential(q, k, v, log_decay, S0)
    torch.testing.assert_close(fast, ref)
    torch.testing.assert_close(fast_S, ref_S)
    g, gS = torch.randn_like(fast), torch.randn_like(fast_S)
    inputs = [q, k, v, log_decay, S0]
    fast_grads = torch.autograd.grad((fast * g).sum() + (fast_S * gS).sum(), inputs)
    ref_grads = torch.autograd.grad((ref * g).sum() + (ref_S * gS).sum(), inputs)
    for a, b in zip(fast_grads, ref_grads):
        torch.testing.assert_close(a, b)


def test_context_memory_reaches_past_the_conv_window():
    model = tiny("gam", memory="context", n_head=2, chunk_size=8).eval()
    assert model.receptive_field == 32
    idx = torch.randint(0, V, (1, 30))
    changed = idx.clone()
    changed[0, 0] = (changed[0, 0] + 1) % V
    assert not torch.allclose(model(idx)[0][0, -1], model(changed)[0][0, -1])  # 29 tokens back still counts


def test_context_memory_read_weights_give_its_output():
    model = tiny("gam", memory="context", n_head=2, chunk_size=8).eval()
    idx = torch.randint(0, V, (2, 21))
    _, layers = record(model, idx)
    memory = model.blocks[0].mixer.context
    weights = layers[0]["read_weights"]  # (B, H, T, T)
    assert weights.shape == (2, 2, 21, 21) and torch.all(weights.triu(1) == 0)
    _, _, v, _ = memory.project(layers[0]["h"])
    by_weights = (weights @ v).transpose(1, 2).reshape(2, 21, 32)
    torch.testing.assert_close(by_weights, memory(layers[0]["h"]), rtol=1e-5, atol=1e-6)


def test_the_other_written_memories_are_the_plain_one_normed_or_beside_the_bank():
    torch.manual_seed(0)
    config = GAMConfig(n_embd=32, n_slots=12, n_head=2, chunk_size=8)
    h = torch.randn(2, 19, 32, requires_grad=True)
    plain = ContextMemory(config)
    normed = NormedContextMemory(config)
    normed.load_state_dict({**plain.state_dict(), "gain": torch.randn(32)})
    o = plain(h).view(2, 19, 2, 16)
    ref = (o / o.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()).reshape(2, 19, 32) * normed.gain
    out = normed(h)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, [h, normed.gain], g), torch.autograd.grad(ref, [h, normed.gain], g)):
        torch.testing.assert_close(a, b)
    both = BankAndContextMemory(config)
    both.written.load_state_dict(plain.state_dict())
    bank = torch.softmax(h @ both.memory.T, dim=-1) @ both.memory  # eqs. (1)-(3) on its own bank
    torch.testing.assert_close(both(h), bank + plain(h))
    n = {kind: n_params(build_model("gam", vocab_size=V, n_layer=1, n_embd=32, n_slots=12, n_head=2, memory=kind))
         for kind in ("bank", "context", "context-norm", "bank+context")}
    assert n["context-norm"] == n["context"] + 32 and n["bank+context"] == n["context"] + 12 * 32


@pytest.mark.parametrize("compile", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["written-out", "compiled"])
def test_compiled_scan_equals_the_sequential_values_and_gradients(compile):
    """mamba_scan.py's chunk loops and their hand-written backward against autograd through the step-by-step scan;
    uncompiled in float64 (the formulas), compiled in float32 (what inductor makes of them)."""
    # 37 = 4 chunks of 8 (one compilation for all four) and one of 5, which runs uncompiled
    B, T, E, N = 2, 37, 3, 4
    dtype, tol = (torch.float32, {"rtol": 1e-4, "atol": 1e-5}) if compile else (torch.float64, {})
    torch.manual_seed(0)
    delta = F.softplus(torch.randn(B, T, E, dtype=dtype)).requires_grad_()
    A = (-torch.rand(E, N, dtype=dtype) * 4).requires_grad_()
    u, Bm, Cm = (torch.randn(B, T, k, dtype=dtype, requires_grad=True) for k in (E, N, N))
    h0 = torch.randn(B, E, N, dtype=dtype, requires_grad=True)
    inputs = [delta, A, u, Bm, Cm, h0]
    ref = selective_scan(delta, A, u, Bm, Cm, h0, scan_sequential)
    fast = compiled_scan(delta, A, u, Bm, Cm, h0, chunk_size=8, compile=compile)
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, **tol)
    gy, gh = torch.randn_like(ref[0]), torch.randn_like(ref[1])
    for name, a, b in zip(("delta", "A", "u", "B", "C", "h0"),
                          *(torch.autograd.grad((y * gy).sum() + (h * gh).sum(), inputs) for y, h in (fast, ref))):
        torch.testing.assert_close(a, b, **tol, msg=name)
    with torch.no_grad():  # evaluation: the forward alone
        y, h = compiled_scan(delta, A, u, Bm, Cm, h0, chunk_size=8, compile=compile)
    torch.testing.assert_close(y, ref[0], **tol)
    if compile:  # compiled once for a chunk's shape: another length, in training and in evaluation, compiles nothing
        other = [torch.randn(B, 21, x.size(2), requires_grad=True) for x in (delta, u, Bm, Cm)]
        with torch._dynamo.config.patch(error_on_recompile=True):
            y, h = compiled_scan(other[0].exp(), A, *other[1:], h0, chunk_size=8)
            torch.autograd.grad(y.sum() + h.sum(), other + [A, h0])
            with torch.no_grad():
                compiled_scan(other[0].exp(), A, *other[1:], h0, chunk_size=8)


@pytest.mark.slow
@pytest.mark.parametrize("kind,kw", [("gam", {}), ("gam", {"memory": "context", "n_head": 2, "chunk_size": 8}),
                                     ("transformer", {}), ("mamba", {"scan_chunk": 8}),
                                     ("mamba", {"scan": "compiled", "scan_chunk": 8})],
                         ids=["gam", "gam-context", "transformer", "mamba", "mamba-compiled-scan"])
def test_compiled_model_equals_eager_values_and_gradients(kind, kw):
    """train.py --compile: torch.compile(model) (inductor's C++ on a CPU) computes what the eager model does."""
    torch.manual_seed(0)
    eager = tiny(kind, block_size=16, n_layer=1, **kw)
    compiled_copy = tiny(kind, block_size=16, n_layer=1, **kw)
    compiled_copy.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_copy)
    idx = torch.randint(0, V, (2, 16))
    (a, la), (b, lb) = eager(idx, idx), compiled(idx, idx)
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    la.backward()
    lb.backward()
    for (name, p), q in zip(eager.named_parameters(), compiled_copy.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_recorded_gates_and_read_weights_are_what_the_paper_says():
    model = tiny("gam").eval()
    idx = torch.randint(0, V, (2, 16))
    logits, layers = record(model, idx)
    torch.testing.assert_close(logits, model(idx)[0])
    assert len(layers) == 2
    for layer, block in zip(layers, model.blocks):
        assert layer["gate_local"].shape == layer["gate_global"].shape == (2, 16, 32)
        assert layer["read_weights"].shape == (2, 16, 16)
        for g in (layer["gate_local"], layer["gate_global"]):
            assert g.min() > 0 and g.max() < 1
        assert layer["read_weights"].min() >= 0
        torch.testing.assert_close(layer["read_weights"].sum(-1), torch.ones(2, 16))
        # the recorded pieces rebuild the mixer's output: g_local * conv + g_global * (weights @ M)
        mixer, h = block.mixer, layer["h"]
        local = F.conv1d(F.pad(h.transpose(1, 2), (2, 0)), mixer.conv.weight, mixer.conv.bias, groups=32)
        glob = layer["read_weights"] @ mixer.memory
        rebuilt = layer["gate_local"] * local.transpose(1, 2) + layer["gate_global"] * glob
        torch.testing.assert_close(rebuilt, mixer(h), rtol=1e-5, atol=1e-6)
        # and so do the recorded paths, which the notebooks weigh by their gates
        torch.testing.assert_close(layer["local"], local.transpose(1, 2), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(layer["global"], glob, rtol=1e-5, atol=1e-6)
    _, layers = record(tiny("gam", variant="local"), idx)
    assert list(layers[0]) == ["h", "local"]


@pytest.mark.parametrize("kind", ["transformer", "mamba"])
def test_recording_a_baseline_is_a_clear_error(kind):
    with pytest.raises(ValueError, match=f"a {kind.capitalize()} has neither"):
        record(tiny(kind), torch.randint(0, V, (1, 8)))


@pytest.mark.parametrize("kind,kw", ALL, ids=IDS)
def test_cached_forward_equals_full_forward(kind, kw):
    model = tiny(kind, **kw).eval()
    idx = torch.randint(0, V, (2, 20))
    full, _ = model(idx)
    cache = new_cache(model)
    parts = [model(idx[:, a:b], cache=cache)[0] for a, b in [(0, 1), (1, 7), (7, 8), (8, 20)]]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache["pos"] == 20


@pytest.mark.parametrize("kind,kw", ALL, ids=IDS)
def test_generation_with_a_cache_equals_without(kind, kw):
    # 45 new tokens run past block_size (32), where the window starts to slide
    model = tiny(kind, **kw).eval()
    prompt = torch.randint(0, V, (2, 5))
    cached = generate(model, prompt, 45, temperature=0)
    uncached = model.generate(prompt, 45, temperature=0)
    assert torch.equal(cached, uncached)
    torch.manual_seed(3)
    cached = generate(model, prompt, 45, temperature=1.0, top_k=10)
    torch.manual_seed(3)
    assert torch.equal(cached, model.generate(prompt, 45, temperature=1.0, top_k=10))  # the same draws too


@pytest.mark.parametrize("kind", ["gam", "transformer", "mamba"])
def test_generate_shape_length_and_seed(kind):
    model = tiny(kind).eval()
    prompt = torch.randint(0, V, (3, 30))
    out = model.generate(prompt, 10, temperature=1.0, top_k=5)
    assert out.shape == (3, 40) and torch.equal(out[:, :30], prompt)
    assert out.min() >= 0 and out.max() < V
    torch.manual_seed(1)
    a = model.generate(prompt, 10, temperature=0.8, top_k=10)
    torch.manual_seed(1)
    b = model.generate(prompt, 10, temperature=0.8, top_k=10)
    assert torch.equal(a, b)


def test_top_k_one_is_greedy():
    model = tiny("gam").eval()
    prompt = torch.randint(0, V, (2, 4))
    assert torch.equal(model.generate(prompt, 8, top_k=1), model.generate(prompt, 8, temperature=0))
