"""
Gated Associative Memory (GAM), the paper's language model in one file.

Paper: Rishiraj Acharya, "Gated Associative Memory: A Parallel O(N) Architecture for Efficient Sequence
Modeling", arXiv:2509.00605 (2025). Official code: github.com/rishiraj/gam (gam_model.py, benchmark.py).

GAM is a GPT-shaped decoder whose attention is replaced by a mixer with two parallel paths, fused by gates.
One block, with x (B, T, C) the residual stream:

    h                = LayerNorm(x)                                  pre-norm, as in GPT-2
    local            = CausalDepthwiseConv(h)                        §3.2  token t sees h[t-K+1 .. t]
    scores           = h Mᵀ                                          §3.3  eq. (1), (B, T, S), no 1/sqrt(C)
    weights          = softmax(scores) over the S slots              §3.3  eq. (2)
    global           = weights M                                     §3.3  eq. (3), (B, T, C)
    g_local, g_global = sigmoid(h W_g + b_g), split in two halves    §3.4  independent gates, (B, T, C) each
    x                = x + g_local * local + g_global * global       §3.4  fused per token and channel
    x                = x + FFN(LayerNorm(x))                         FFN = Linear(C, 4C), GELU, Linear(4C, C)

Around the blocks, GPT-2's language model: token embedding tied to the output head, learned positions, dropout,
N blocks, final LayerNorm, and cross-entropy on the next token. Paper -> code:
    X, x_t (a block's input)    h, after ln_1 (the official code normalises before the mixer)
    M (memory bank, §3.3)       GAMMixer.memory, (S, C), both the keys and the values of the read
    DWConv (local context)      GAMMixer.conv, nn.Conv1d with groups=C: K taps and a bias per channel
    W_g, b_g (gating, §3.4)     GAMMixer.gate, one Linear(C, 2C) for both gates
    Table 3 ablations           GAMConfig.variant: "gated" (GAM), "sum", "local", "global"

Shape letters: B batch, T time (sequence length), C channels (n_embd), S memory slots (n_slots), K conv width
(kernel_size), V vocabulary. Two facts the paper does not spell out, and that this file keeps visible:
  - M is a parameter shared by all sequences; nothing in the input writes to it. The global path is a function of
    each token's own h, not a look-up into the sequence.
  - So the conv is the only operation that mixes tokens: the logit at t sees tokens t - n_layer*(K-1) .. t, 13 for
    the paper's 6 layers of kernel 3 (GAM.receptive_field).

What is not the paper's model lives in extensions/ and plugs in where the classes below take a part: GAM(block=),
GAMBlock(mixer=), GAMMixer(memory=); GAMConfig names it, and runtime/models.py builds any model by its name.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass
class GAMConfig:
    vocab_size: int = 50257  # GPT-2 BPE, our tokenizer (the paper trained its own 10k BPE)
    block_size: int = 256  # longest sequence; also the number of learned positions
    n_layer: int = 6
    n_embd: int = 512  # C
    n_slots: int = 512  # S, rows of the memory bank M
    kernel_size: int = 3  # K, width of the causal depthwise conv
    dropout: float = 0.1  # on the embeddings and the FFN output, where the official code has it
    pos_init_std: float = 1.0  # learned positions start N(0, pos_init_std): 1 as the paper (PyTorch's default)
    variant: str = "gated"  # "gated" (GAM), or the paper's Table 3 ablations: "sum", "local", "global"
    # beyond the paper (extensions/): what runtime/models.py plugs in
    memory: str = "bank"  # "bank": the paper's M; "context", "context-norm", "bank+context": the sequence writes it
    n_head: int = 8  # a written memory's heads
    chunk_size: int = 64  # a written memory's tokens per chunk of its parallel training form
    recompute: str = "none"  # "none", or what backward reruns instead of storing: "gelu", "mixer", "ffn", "both"
    memory_read: str = "formula"  # eq. (3) as written ("formula"), or by one fused kernel ("fused")


class MLP(nn.Module):
    """The Transformer FFN: Linear(C, 4C), exact GELU, Linear(4C, C), dropout."""

    def __init__(self, n_embd, dropout):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd)
        self.c_proj = nn.Linear(4 * n_embd, n_embd)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))  # (B, T, C) -> (B, T, 4C) -> (B, T, C)


class GAMMixer(nn.Module):
    """The paper's replacement for attention (§3): a local conv path and a global memory path, fused by gates.
    memory: the class of a memory that the sequence writes (extensions/), for GAMConfig.memory other than "bank"."""

    def __init__(self, config, memory=None):
        super().__init__()
        C, S, K = config.n_embd, config.n_slots, config.kernel_size
        self.variant, self.kernel_size = config.variant, K
        self.conv = self.memory = self.context = self.gate = None
        reads = self.variant not in ("local", "local-gated")  # whether the mixer has a global path
        if self.variant != "global":
            self.conv = nn.Conv1d(C, C, K, groups=C)  # depthwise: no channel mixing, no activation
        if reads and config.memory == "bank":
            self.memory = nn.Parameter(torch.empty(S, C))
            nn.init.xavier_uniform_(self.memory)  # rows of norm ~1, so the first scores h.M have std ~1
        if reads and config.memory != "bank":
            self.context = needs(memory, config, "memory")(config)
        if self.variant == "gated":
            self.gate = nn.Linear(C, 2 * C)
        if self.variant == "local-gated":  # a control, not the paper: the conv alone under its own gate
            self.gate = nn.Linear(C, C)

    def local(self, h, cache=None):
        """§3.2 local path: the causal depthwise conv of h (B, T, C) -> (B, T, C). K-1 zeros go before the sequence,
        so that output t sees h[t-K+1 .. t] and nothing after it. A generation step continues a sequence: there the
        cache holds the K-1 inputs before h instead."""
        B, T, C = h.shape
        n = self.kernel_size - 1
        past = h.new_zeros(B, n, C) if cache is None else cache.past(h, n)  # (B, K-1, C)
        u = torch.cat([past, h], dim=1)  # (B, K-1+T, C)
        return self.conv(u.transpose(1, 2)).transpose(1, 2)  # (B, C, K-1+T) -> (B, C, T) -> (B, T, C)

    def read_weights(self, h):
        """Eqs. (1)-(2): how much each token reads from each slot, softmax(h Mᵀ) over S, (B, T, S)."""
        scores = h @ self.memory.T  # (B, T, C) @ (C, S) -> (B, T, S), unscaled, as in the official code
        return torch.softmax(scores, dim=-1)  # (B, T, S)

    def read(self, h):
        """§3.3 global path, eq. (3): the read weights times M, (B, T, S) @ (S, C) -> (B, T, C)."""
        return self.read_weights(h) @ self.memory  # (B, T, C)

    def forward(self, h, cache=None):
        """h = LN(x), (B, T, C) -> the mixer's output (B, T, C). cache: this layer's generation state or None."""
        if self.conv is not None:
            local = self.local(h, cache)  # §3.2, (B, T, C)
        if self.memory is not None:
            glob = self.read(h)  # §3.3, (B, T, C)
        elif self.context is not None:
            glob = self.context(h, cache)  # (B, T, C), not the paper's: a memory the sequence writes
        if self.variant == "local":
            return local
        if self.variant == "global":
            return glob
        if self.variant == "sum":
            return local + glob
        if self.variant == "local-gated":
            return torch.sigmoid(self.gate(h)) * local  # (B, T, C)
        # §3.4: two sigmoid gates per token and channel, computed from the same h; they need not sum to 1
        g_local, g_global = torch.sigmoid(self.gate(h)).chunk(2, dim=-1)  # 2 x (B, T, C)
        return g_local * local + g_global * glob


class GAMBlock(nn.Module):
    """Pre-norm block: x + mixer(LN(x)), then x + FFN(LN(x)). No dropout or projection on the mixer branch.
    mixer: the mixer's class, GAMMixer or one of extensions/."""

    def __init__(self, config, mixer=None):
        super().__init__()
        if config.memory_read != "formula":
            mixer = needs(mixer, config, "memory_read")
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.mixer = (mixer or GAMMixer)(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config.n_embd, config.dropout)

    def forward(self, x, cache=None):
        x = x + self.mixer(self.ln_1(x), cache)  # (B, T, C)
        return x + self.mlp(self.ln_2(x))


class LanguageModel(nn.Module):
    """The skeleton GAM shares with the paper's baselines (baselines.py), so train.py never asks which model it
    has: tied token embedding and head, learned positions, embedding dropout, blocks, final LayerNorm."""

    def __init__(self, config, blocks, receptive_field, learned_positions=True):
        super().__init__()
        self.config = config
        self.receptive_field = receptive_field  # how many trailing tokens can reach the next logit
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wte.weight = self.lm_head.weight  # tied, so the embedding starts from the Linear init, as in the paper
        self.wpe = None  # a model whose blocks see positions some other way (the rotary Transformer) has no table
        if learned_positions:
            self.wpe = nn.Embedding(config.block_size, config.n_embd)
            # the paper keeps PyTorch's N(0, 1), about 40 times the token embeddings at C = 512: it swamps token
            # identity early in training. GPT-2 uses 0.02, which small models need (README)
            nn.init.normal_(self.wpe.weight, std=config.pos_init_std)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(blocks)
        self.ln_f = nn.LayerNorm(config.n_embd)

    def forward(self, idx, targets=None, cache=None):
        """idx (B, T) token ids -> logits (B, T, V), and the mean cross-entropy against targets (B, T) if given
        (-1 marks a position without a target). cache (extensions/generation.py): continue the sequence it holds."""
        start = 0 if cache is None else cache["pos"]
        check_input(idx, start, self.config.block_size)
        x = self.wte(idx)  # (B, T, C)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(start, start + idx.size(1), device=idx.device))  # + (T, C)
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, None if cache is None else cache["layers"][i])  # (B, T, C)
        if cache is not None:
            cache["pos"] += idx.size(1)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def configure_optimizers(self, weight_decay, learning_rate, betas, decay_all=True, device_type="cpu"):
        """AdamW. decay_all=True decays every parameter, as the paper's code does; decay_all=False decays only
        matrices (not biases, norms, or parameters marked _no_weight_decay such as Mamba's A_log and D)."""
        params = list(self.parameters())
        if decay_all:
            groups = [{"params": params, "weight_decay": weight_decay}]
        else:
            decay = [p for p in params if p.dim() >= 2 and not getattr(p, "_no_weight_decay", False)]
            ids = {id(p) for p in decay}
            groups = [{"params": decay, "weight_decay": weight_decay},
                      {"params": [p for p in params if id(p) not in ids], "weight_decay": 0.0}]
        fused = device_type == "cuda"  # one kernel for all parameters; only offered on CUDA
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        """Append max_new_tokens sampled tokens to idx (B, T) and return it; temperature 0 is greedy. Each new token
        reruns the model on the last block_size tokens, as nanoGPT does: plain, and the reference that
        generation.generate, whose cache makes a token cost the same at any position, is tested against."""
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.config.block_size:])  # (B, T, V)
            idx = torch.cat([idx, sample_next(logits[:, -1, :], temperature, top_k)], dim=1)  # (B, T + 1)
        return idx


class GAM(LanguageModel):
    """The GAM language model: n_layer GAM blocks in the shared skeleton. block: GAMBlock or one of extensions/."""

    def __init__(self, config, block=None):
        block = block or GAMBlock
        if config.recompute != "none" and block is GAMBlock:
            needs(None, config, "recompute")
        # each layer's conv reaches K-1 tokens further back; the "global" variant has no conv and sees one token;
        # a memory that the context writes reaches every earlier token
        receptive_field = 1 + config.n_layer * (config.kernel_size - 1) if config.variant != "global" else 1
        if config.memory != "bank" and config.variant not in ("local", "local-gated"):
            receptive_field = config.block_size
        super().__init__(config, [block(config) for _ in range(config.n_layer)], min(receptive_field,
                                                                                      config.block_size))


def sample_next(logits, temperature=1.0, top_k=None):
    """One token id per row, (B, 1), drawn from (B, V) logits; temperature 0 means greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits = logits.masked_fill(logits < v[:, [-1]], -float("inf"))
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)


# ---------------------------------------------------------------------------------------------------- errors

class ConfigError(ValueError):
    """A setting that cannot build a model (a config field, or the flag that set it). Its message is one line, which
    train.py and bench.py print without a traceback; any other error is a bug and keeps its traceback.
    runtime/models.py checks every config field before it builds a model."""


def needs(part, config, field):
    """part, or, where a config names something beyond the paper and no part came with it, a one-line ConfigError
    that says how to build it."""
    if part is None:
        raise ConfigError(f"GAMConfig.{field}={getattr(config, field)!r} is not the paper's model, and not in "
                          "gam.py: build it by name, runtime.models.build_model('gam', ...)")
    return part


def check_input(idx, start, block_size):
    if idx.dim() != 2 or idx.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"idx must be a (B, T) tensor of int32 or int64 token ids, got {tuple(idx.shape)} {idx.dtype}")
    if idx.size(1) == 0:
        raise ValueError("idx is empty (T = 0): give at least one token")
    if start + idx.size(1) > block_size:
        raise ValueError(f"sequence of {start + idx.size(1)} tokens exceeds block_size {block_size}: crop the input "
                         "(idx[:, -block_size:]) or build the model with a larger block_size")
