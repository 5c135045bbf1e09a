"""GAM and its baselines: sizes, causality, paper equations, fast paths, learning, generation.

Run: python -m pytest -q tests/test_models.py
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from baselines import (Mamba, MambaConfig, Transformer, TransformerConfig, rotate, scan_parallel, scan_sequential,
                       selective_scan, selective_scan_chunked)
from extensions.context_memory import BankAndContextMemory, ContextMemory, NormedContextMemory, decayed_memory
from extensions.fused_read import FusedReadMixer
from extensions.generation import generate, new_cache
from extensions.mamba_scan import compiled_scan
from extensions.probe import record
from extensions.recompute import GeluLinear, RecomputedGAMBlock
from gam import GAM, ConfigError, GAMBlock, GAMConfig, GAMMixer
from runtime.models import build_model
from runtime.official_block import PaperGAMBlock

V = 97  # a small vocabulary keeps the tiny models fast


def tiny(kind, **kw):
    """A small model of each kind, built by name as train.py builds it, dropout off so two forward passes agree."""
    size = {"gam": {"n_slots": 16}, "transformer": {"n_head": 4}, "mamba": {}}[kind]
    return build_model(kind, **{"vocab_size": V, "block_size": 32, "n_layer": 2, "n_embd": 32, "dropout": 0.0,
                                **size, **kw})


ALL = [("gam", {}), ("gam", {"memory_read": "fused"}), ("gam", {"variant": "sum"}), ("gam", {"variant": "local"}), ("gam", {"variant": "global"}),
       ("gam", {"variant": "local-gated"}),
       ("gam", {"memory": "context", "n_head": 2, "chunk_size": 8}),
       ("gam", {"memory": "context-norm", "n_head": 2, "chunk_size": 8}),
       ("gam", {"memory": "bank+context", "n_head": 2, "chunk_size": 8}),
       ("transformer", {}), ("transformer", {"attn": "naive"}), ("transformer", {"attn_window": 4}),
       ("transformer", {"attn": "naive", "attn_window": 4}), ("transformer", {"positions": "rope"}),
       ("transformer", {"positions": "rope", "attn": "naive", "attn_window": 4}), ("mamba", {}), ("mamba", {"scan": "sequential"}),
       ("mamba", {"scan": "compiled", "scan_chunk": 8})]
IDS = [k + "".join(f"-{v}" for v in kw.values() if isinstance(v, str))
       + (f"-window{kw['attn_window']}" if "attn_window" in kw else "") for k, kw in ALL]


def n_params(model):
    return sum(p.numel() for p in model.parameters())  # parameters() counts the tied embedding once


def assert_same_values_and_gradients(out, ref, inputs, ref_inputs, rtol=None, atol=None):
    """out == ref, and the gradients of a random weighting of each at inputs and ref_inputs (paired lists) agree;
    a failure names the largest difference."""
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol, msg=lambda m: f"values differ: {m}")
    g = torch.randn_like(ref)
    for i, (a, b) in enumerate(zip(torch.autograd.grad(out, inputs, g, retain_graph=True),
                                   torch.autograd.grad(ref, ref_inputs, g, retain_graph=True))):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"gradient {i} differs: {m}")


# -------------------------------------------------------------------------------------------- sizes and config

@pytest.mark.parametrize("variant,expected", [("gated", 22_599_680), ("sum", 19_447_808), ("local", 17_874_944),
                                              ("global", 19_435_520)])
def test_gam_parameter_counts_match_the_paper(variant, expected):
    assert n_params(GAM(GAMConfig(vocab_size=10_000, variant=variant))) == expected


def test_baseline_parameter_counts_match_the_paper():
    assert n_params(Transformer(TransformerConfig(vocab_size=10_000))) == 24_166_400
    # the paper's Mamba (20,504,576) stacked bare mixers; ours adds one LayerNorm (weight + bias) per layer
    assert n_params(Mamba(MambaConfig(vocab_size=10_000))) == 20_504_576 + 6 * 2 * 512


def test_the_gated_local_control_is_the_conv_path_under_a_gate_of_its_own():
    # not in the paper: what "the gates matter" means without a memory read, at the local variant's size plus a gate
    local, control = GAM(GAMConfig(vocab_size=10_000, variant="local")), GAM(GAMConfig(vocab_size=10_000,
                                                                                        variant="local-gated"))
    assert n_params(control) - n_params(local) == 6 * (512 * 512 + 512)
    mixer = tiny("gam", variant="local-gated").blocks[0].mixer
    assert mixer.memory is None and mixer.context is None
    h = torch.randn(2, 7, 32)
    local = F.conv1d(F.pad(h.transpose(1, 2), (2, 0)), mixer.conv.weight, mixer.conv.bias, groups=32).transpose(1, 2)
    torch.testing.assert_close(mixer(h), torch.sigmoid(mixer.gate(h)) * local)


def test_default_config_is_the_papers():
    c = GAMConfig()
    assert (c.vocab_size, c.block_size, c.n_layer, c.n_embd, c.n_slots, c.kernel_size, c.dropout, c.variant) == \
        (50257, 256, 6, 512, 512, 3, 0.1, "gated")
    assert GAM(GAMConfig(n_layer=6, kernel_size=3, n_embd=8, n_slots=4, vocab_size=10)).receptive_field == 13


ROOT = Path(__file__).resolve().parent.parent


FOLDERS = ("extensions", "runtime")
# who may import whom: gam.py nothing; the other design files gam.py; extensions/ the design files; runtime/ those
# and extensions/; the commands anything. A module imports its own level or below, never up, and never in a circle
LEVEL = {"gam": 0, "baselines": 1, "data": 1, "extensions": 2, "runtime": 3}


def project_modules():
    """Every module of the project by its import name: gam, extensions.context_memory, runtime.checkpoint, ..."""
    files = {f.stem: f for f in ROOT.glob("*.py")}
    for folder in FOLDERS:
        files.update({f"{folder}.{f.stem}": f for f in (ROOT / folder).glob("*.py") if f.stem != "__init__"})
    return files


def project_imports(path, modules):
    """The project's own modules that a file imports, anywhere in it (inside functions too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}  # from runtime import checkpoint
    return names & set(modules)


def level(module):
    return LEVEL.get(module.split(".")[0], 4)  # 4: a command (train.py, sample.py, bench.py, experiments.py)


def test_gam_py_imports_nothing_of_the_project_and_no_import_runs_up_or_in_a_circle():
    modules = project_modules()
    assert sorted(m for m in modules if "." not in m) == ["baselines", "bench", "data", "experiments", "gam", "sample",
                                                           "train"], "the root holds the commands and the design"
    graph = {name: project_imports(path, modules) for name, path in modules.items()}
    assert graph["gam"] == set(), "gam.py is the paper: the files beyond it import it, never the reverse"
    for name, deps in graph.items():
        for dep in deps:
            assert level(dep) <= level(name), f"{name} imports {dep}, which sits above it"

    def visit(name, path):
        assert name not in path, f"import circle: {' -> '.join([*path, name])}"
        for dep in graph[name]:
            visit(dep, [*path, name])

    for name in graph:
        visit(name, [])


def test_a_part_beyond_the_paper_is_built_by_name_alone_and_gam_py_says_so():
    # gam.py builds the paper's model; what a config names beyond it, built there, is a one-line error that points to
    # runtime/models.py, which builds it with no other import first
    code = ("from gam import GAM, GAMConfig, ConfigError\n"
            "for field, value in (('memory', 'context'), ('memory_read', 'fused'), ('recompute', 'mixer')):\n"
            "    try:\n        GAM(GAMConfig(**{field: value}))\n    except ConfigError as e:\n        print(e)\n"
            "from runtime.models import build_model\n"
            "print(build_model('gam', memory='context', n_layer=1).receptive_field)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [f"GAMConfig.{f}={v!r} is not the paper's model, and not in gam.py: build it by name, "
                                "runtime.models.build_model('gam', ...)" for f, v in (("memory", "context"),
                                                                                      ("memory_read", "fused"),
                                                                                      ("recompute", "mixer"))] + ["256"]
    with pytest.raises(ConfigError, match="build it by name"):
        Mamba(MambaConfig(scan="compiled"))


@pytest.mark.parametrize("name,config,message", [
    ("gam", {"variant": "attention"}, "variant must be one of"), ("gam", {"recompute": "all"}, "recompute"),
    ("gam", {"n_embd": 0}, "positive integer"), ("gam", {"dropout": 1.0}, "dropout"),
    ("gam", {"n_layer": 2.5}, "positive integer"), ("gam", {"memory_read": "fast"}, "memory_read"),
    ("gam", {"n_embd": 30, "memory": "context", "n_head": 4}, "divisible"),
    ("gam", {"n_slot": 8}, "has no field 'n_slot'"), ("gpt", {}, "unknown model 'gpt'"),
    ("transformer", {"n_embd": 30, "n_head": 4}, "divisible"), ("transformer", {"attn": "flash"}, "attn"),
    ("transformer", {"attn_window": -1}, "attn_window"), ("transformer", {"positions": "alibi"}, "positions"),
    ("transformer", {"n_embd": 12, "n_head": 4, "positions": "rope"}, "even head size"),
    ("mamba", {"scan": "fast"}, "scan must be one of"), ("mamba", {"d_state": -1}, "positive integer")])
def test_bad_config_is_a_one_line_config_error(name, config, message):
    with pytest.raises(ConfigError, match=message):
        build_model(name, **config)


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


# ------------------------------------------------------------------------------------------------- causality

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


# ------------------------------------------------------------------------------------- the paper's equations

def test_block_equals_the_official_codes_block_values_and_gradients():
    blk = GAMBlock(GAMConfig(n_embd=48, n_slots=40, dropout=0.0))
    x = torch.randn(3, 19, 48, requires_grad=True)
    ours = blk(x)
    ref = PaperGAMBlock.sharing(blk)(x)  # the official code's block, on blk's own parameters
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ours)
    grads = torch.autograd.grad(ours, [x, *blk.parameters()], g)
    ref_grads = torch.autograd.grad(ref, [x, *blk.parameters()], g)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


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


def test_initialisation_is_the_official_codes():
    model = GAM(GAMConfig(vocab_size=1000, n_embd=512, n_layer=1))
    assert model.wte.weight is model.lm_head.weight
    assert model.wte.weight.abs().max() <= 512 ** -0.5  # nn.Linear default U(+-1/sqrt(C))
    assert 0.9 < model.wpe.weight.std() < 1.1  # nn.Embedding default N(0, 1)
    M = model.blocks[0].mixer.memory
    assert M.abs().max() <= (6 / (512 + 512)) ** 0.5  # Xavier-uniform bound
    assert 0.8 < M.norm(dim=1).mean() < 1.2


# ------------------------------------------------------------------------------------------ Mamba's scan

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


@pytest.mark.parametrize("compile", [False, True], ids=["written-out", "compiled"])
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


def test_mamba_initialisation_is_mamba_ssms():
    mixer = tiny("mamba", n_embd=64).blocks[0].mixer
    assert mixer.A_log.dtype == torch.float32 and mixer.A_log.shape == (192, 16)
    torch.testing.assert_close(-torch.exp(mixer.A_log[0]), -torch.arange(1.0, 17.0))
    assert torch.all(mixer.D == 1)
    dt = F.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001


def test_optimizer_decays_everything_by_default_and_can_exclude_vectors():
    model = tiny("mamba")
    (group,) = model.configure_optimizers(0.1, 3e-4, (0.9, 0.95)).param_groups
    assert group["weight_decay"] == 0.1 and len(group["params"]) == len(list(model.parameters()))
    decay, no_decay = model.configure_optimizers(0.1, 3e-4, (0.9, 0.95), decay_all=False).param_groups
    mixer = model.blocks[0].mixer
    assert any(p is mixer.in_proj.weight for p in decay["params"])
    for p in (mixer.A_log, mixer.D, mixer.dt_proj.bias, model.ln_f.weight):
        assert any(p is q for q in no_decay["params"]) and not any(p is q for q in decay["params"])


# ------------------------------------------------------------------------------- the context memory (ours)

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


# --------------------------------------------------------------------------------- learning and generation

@pytest.mark.parametrize("kind", ["gam", "transformer", "mamba"])
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


# ----------------------------------------------------------------------------------------------- bf16 autocast

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
