"""
Memory-saving training for GAM: the same values and gradients as gam.py's block, with less kept for backward.
GAMConfig(recompute=...) or train.py --recompute picks what backward reruns instead of storing:

    none   gam.py's GAMBlock as written
    gelu   the FFN keeps GELU's input, not its output (GeluLinear): 4C fewer floats per token, about free in time
    mixer  gelu, and each block's LN + mixer rerun in backward: the mixer keeps its input x instead of about
           7 tensors the size of x (LN output, padded conv input, two gates, both paths), for a third more of
           the block's forward matmuls (S = C)
    ffn    LN + FFN rerun in backward: about 5 (C + 4C per token) fewer, for two thirds more
    both   mixer and ffn

bench.py speed measures time and peak memory of each against the official block; the tests hold values and
gradients equal to gam.py's block. Not part of the paper's model.
"""

import torch
from torch.nn import functional as F
from torch.utils import checkpoint as activation_checkpoint

from gam import GAMBlock


class GeluLinear(torch.autograd.Function):
    """linear(gelu(a), weight, bias), the FFN's second half, keeping only `a` for backward. Autograd would also
    keep gelu(a): 4C floats per token, the largest tensor a block stores. Backward recomputes gelu(a) for the
    weight gradient, frees it, then applies GELU's derivative in place, a slice at a time, so it never holds
    two (B, T, 4C) tensors either."""

    @staticmethod
    def forward(ctx, a, weight, bias):
        ctx.save_for_backward(a, weight)
        return F.linear(F.gelu(a), weight, bias)

    @staticmethod
    def backward(ctx, grad):
        a, weight = ctx.saved_tensors
        a2, grad2 = a.reshape(-1, a.size(-1)), grad.reshape(-1, grad.size(-1))  # (B*T, 4C), (B*T, C)
        grad_weight = grad2.T @ F.gelu(a2)  # (C, 4C)
        grad_a = grad2 @ weight.to(grad.dtype)  # (B*T, 4C): the gradient at gelu's output, then at its input
        for g, x in zip(grad_a.split(4096), a2.split(4096)):
            g.copy_(torch.ops.aten.gelu_backward(g, x))  # GELU's own backward kernel, on 4096 tokens at a time
        return grad_a.view_as(a), grad_weight, grad2.sum(0)


class RecomputedGAMBlock(GAMBlock):
    """gam.GAMBlock with the same parameters and results, storing less for backward as config.recompute says."""

    def __init__(self, config, mixer=None):
        super().__init__(config, mixer)
        self.recompute = config.recompute

    def forward(self, x, cache=None):
        x = x + self.sublayer("mixer", self.mix, x, cache)
        return x + self.sublayer("ffn", self.ffn, x)

    def mix(self, x, cache=None):
        return self.mixer(self.ln_1(x), cache)

    def ffn(self, x):
        mlp = self.mlp
        return mlp.dropout(GeluLinear.apply(mlp.c_fc(self.ln_2(x)), mlp.c_proj.weight, mlp.c_proj.bias))

    def sublayer(self, name, fn, *args):
        """fn(*args); when training, and recompute names this sub-layer, through torch.utils.checkpoint: fn keeps
        only its input, and backward reruns it. Dropout masks are replayed, so nothing else changes."""
        if self.recompute in (name, "both") and torch.is_grad_enabled():
            return activation_checkpoint.checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)
