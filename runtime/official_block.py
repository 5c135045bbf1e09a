"""
The official code's GAM block (github.com/rishiraj/gam, gam_model.py), transcribed as written: the conv padded on
both sides and then sliced, the explicit softmax(h Mᵀ) M, both gates from LN1(x), the FFN with dropout at its end.

The tests hold gam.py's block equal to it (values and gradients), and bench.py speed times gam.py against it, so
it is kept apart from gam.py and written once. Not used for training.
"""

import torch
from torch import nn


class PaperGAMBlock(nn.Module):
    def __init__(self, C, S=512, K=3, dropout=0.1):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.local_conv = nn.Conv1d(C, C, K, padding=K - 1, groups=C)
        self.memory_bank = nn.Parameter(torch.randn(S, C))
        nn.init.xavier_uniform_(self.memory_bank)
        self.gate = nn.Linear(C, 2 * C)
        self.ffn = nn.Sequential(nn.Linear(C, 4 * C), nn.GELU(), nn.Linear(4 * C, C), nn.Dropout(dropout))

    def forward(self, x, cache=None):  # cache: the skeleton's generation slot, unused (no cached generation)
        T = x.size(1)
        h = self.ln1(x)
        local = self.local_conv(h.transpose(1, 2))[..., :T].transpose(1, 2)
        weights = torch.softmax(h @ self.memory_bank.T, dim=-1)
        glob = weights @ self.memory_bank
        g_local, g_global = self.gate(h).chunk(2, dim=-1)
        x = x + torch.sigmoid(g_local) * local + torch.sigmoid(g_global) * glob
        return x + self.ffn(self.ln2(x))

    @classmethod
    def sharing(cls, block):
        """The official block computing with the very parameters of gam.py's GAMBlock `block` (not copies), so
        that gradients from either reach the same tensors."""
        mixer, mlp = block.mixer, block.mlp
        C, K = block.ln_1.normalized_shape[0], mixer.kernel_size
        paper = cls(C, mixer.memory.size(0), K, mlp.dropout.p)
        paper.ln1, paper.ln2, paper.gate = block.ln_1, block.ln_2, mixer.gate
        paper.local_conv.weight, paper.local_conv.bias = mixer.conv.weight, mixer.conv.bias
        paper.memory_bank = mixer.memory
        paper.ffn[0], paper.ffn[2] = mlp.c_fc, mlp.c_proj
        return paper
