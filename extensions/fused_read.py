"""
GAM's memory read by one fused kernel: GAMConfig(memory_read="fused"), train.py --memory-read fused. The same sum
as gam.GAMMixer.read, softmax(h Mᵀ) M (eq. 3), computed by scaled_dot_product_attention with one head, M as keys and
values, and scale 1, which in eager mode never stores the (B, T, S) read weights; the tests hold the two equal,
values and gradients. RESULTS.md measures both.
"""

import torch
from torch.nn import functional as F

from gam import GAMMixer


class FusedReadMixer(GAMMixer):
    """gam.GAMMixer, its read (eq. 3) by scaled_dot_product_attention."""

    def read(self, h):
        if torch.compiler.is_compiling():
            # torch.compile on a CUDA GPU made the expanded M below launch an SDPA kernel that has no variant for it
            # ("cutlassF: no kernel found", torch 2.11, H200); M broadcast over the batch compiles and trains alike
            M = self.memory[None, None]  # (1, 1, S, C)
        else:
            M = self.memory.expand(h.size(0), 1, *self.memory.shape)  # (B, 1, S, C), the same M for every sequence
        return F.scaled_dot_product_attention(h.unsqueeze(1), M, M, scale=1.0).squeeze(1)  # (B, T, C)
