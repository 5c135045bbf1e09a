"""gam.py, the paper's model: its parameter counts, its config, its block against the official code's, its
initialisation and optimizer groups, and the gated local-only control.

Run: python -m pytest -q tests/test_gam.py
"""


import pytest
import torch
import torch.nn.functional as F
from conftest import n_params, tiny

from gam import GAM, GAMBlock, GAMConfig
from runtime.official_block import PaperGAMBlock


@pytest.mark.parametrize("variant,expected", [("gated", 22_599_680), ("sum", 19_447_808), ("local", 17_874_944),
                                              ("global", 19_435_520)])
def test_gam_parameter_counts_match_the_paper(variant, expected):
    assert n_params(GAM(GAMConfig(vocab_size=10_000, variant=variant))) == expected


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


def test_initialisation_is_the_official_codes():
    model = GAM(GAMConfig(vocab_size=1000, n_embd=512, n_layer=1))
    assert model.wte.weight is model.lm_head.weight
    assert model.wte.weight.abs().max() <= 512 ** -0.5  # nn.Linear default U(+-1/sqrt(C))
    assert 0.9 < model.wpe.weight.std() < 1.1  # nn.Embedding default N(0, 1)
    M = model.blocks[0].mixer.memory
    assert M.abs().max() <= (6 / (512 + 512)) ** 0.5  # Xavier-uniform bound
    assert 0.8 < M.norm(dim=1).mean() < 1.2


def test_optimizer_decays_everything_by_default_and_can_exclude_vectors():
    model = tiny("mamba")
    (group,) = model.configure_optimizers(0.1, 3e-4, (0.9, 0.95)).param_groups
    assert group["weight_decay"] == 0.1 and len(group["params"]) == len(list(model.parameters()))
    decay, no_decay = model.configure_optimizers(0.1, 3e-4, (0.9, 0.95), decay_all=False).param_groups
    mixer = model.blocks[0].mixer
    assert any(p is mixer.in_proj.weight for p in decay["params"])
    for p in (mixer.A_log, mixer.D, mixer.dt_proj.bias, model.ln_f.weight):
        assert any(p is q for q in no_decay["params"]) and not any(p is q for q in decay["params"])
