"""What every model keeps, whichever file it comes from (gam.py, baselines.py, extensions/): causality, its
receptive field, clear errors on bad input, fitting a tiny batch, bf16 autocast.

Run: python -m pytest -q tests/test_every_model.py
"""


import pytest
import torch
from conftest import ALL, IDS, V, tiny

from extensions.generation import generate, new_cache


@pytest.mark.parametrize("kind", ["gam", "transformer", "mamba"])
def test_bad_input_is_a_clear_value_error(kind):
    model = tiny(kind)
    with pytest.raises(ValueError, match="exceeds block_size"):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        model(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="int64"):
        model(torch.zeros(1, 5))


@pytest.mark.parametrize("kind,kw", ALL, ids=IDS)
def test_future_tokens_never_change_past_logits(kind, kw):
    model = tiny(kind, **kw).eval()
    idx = torch.randint(0, V, (2, 24))
    for t in (0, 7, 22):
        changed = idx.clone()
        changed[:, t + 1:] = torch.randint(0, V, changed[:, t + 1:].shape)
        a, _ = model(idx)
        b, _ = model(changed)
        torch.testing.assert_close(a[:, :t + 1], b[:, :t + 1], rtol=0, atol=1e-5)
        assert not torch.allclose(a[:, t + 1:], b[:, t + 1:]), "the changed tokens should matter downstream"


@pytest.mark.parametrize("kind,kw", [("gam", {"kernel_size": 3}), ("transformer", {"attn_window": 3}),
                                     ("transformer", {"attn": "naive", "attn_window": 3}),
                                     ("transformer", {"attn_window": 3, "positions": "rope"})])
def test_windowed_models_see_exactly_their_receptive_field(kind, kw):
    # GAM's only token mixing is the conv: with L layers of kernel K a logit sees the last 1 + L(K-1) tokens; a
    # Transformer whose attention sees the last W tokens reaches 1 + L(W-1) the same way
    model = tiny(kind, n_layer=3, **kw).eval()
    assert model.receptive_field == 7
    idx = torch.randint(0, V, (1, 20))
    t = 15
    base, _ = model(idx)
    for s in range(t + 1):
        changed = idx.clone()
        changed[0, s] = (changed[0, s] + 1) % V
        out, _ = model(changed)
        moved = not torch.allclose(out[0, t], base[0, t], rtol=0, atol=1e-6)
        assert moved == (s > t - 7), f"token {s} {'moved' if moved else 'did not move'} the logit at {t}"


@pytest.mark.parametrize("kind", ["gam", "transformer", pytest.param("mamba", marks=pytest.mark.slow)])
def test_each_model_can_fit_a_tiny_batch(kind):
    model = tiny(kind)
    idx = torch.randint(0, V, (4, 24))
    opt = model.configure_optimizers(0.0, 3e-3, (0.9, 0.95))
    _, first = model(idx[:, :-1], idx[:, 1:])
    for _ in range(40):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first.item(), f"{kind}: loss {first.item():.2f} -> {loss.item():.2f}"


@pytest.mark.parametrize("kind,kw", [("gam", {}), ("gam", {"memory": "context", "n_head": 2, "chunk_size": 8}),
                                     ("transformer", {}), ("mamba", {})], ids=["gam", "gam-context", "transformer",
                                                                              "mamba"])
def test_every_model_trains_and_generates_under_cpu_bf16_autocast(kind, kw):
    # what train.py runs with --dtype bfloat16, and with auto on a CPU that has bf16 matrix units
    torch.manual_seed(0)
    model = tiny(kind, **kw)
    idx = torch.randint(0, V, (2, 20))
    _, fp32_loss = model(idx, idx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = model(idx, idx)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert abs(loss.item() - fp32_loss.item()) < 0.02
    loss.backward()
    assert all(p.dtype == p.grad.dtype == torch.float32 and p.grad.isfinite().all() for p in model.parameters())
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full, _ = model(idx)
        cache = new_cache(model)
        parts = [model(idx[:, a:b], cache=cache)[0] for a, b in [(0, 1), (1, 7), (7, 20)]]
        out = generate(model, idx[:, :4], 40, temperature=0)  # past block_size: the window rebuild too
    torch.testing.assert_close(torch.cat(parts, dim=1).float(), full.float(), rtol=0, atol=0.05)
    assert out.shape == (2, 44) and out.max() < V
