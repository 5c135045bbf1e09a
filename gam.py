"""
Gated Associative Memory (GAM) language model, in one file.

Paper: Rishiraj Acharya, "Gated Associative Memory: A Parallel O(N) Architecture for Efficient Sequence
Modeling", arXiv:2509.00605 (2025). Official code: github.com/rishiraj/gam (gam_model.py, benchmark.py).

GAM is a GPT-shaped decoder whose attention is replaced by a "mixer" with two parallel paths:
  local  = causal depthwise conv of h over the last kernel_size tokens, per channel
  global = softmax(h M^T) M, a read from a learned memory bank M (S slots x C channels)
  fused  = sigmoid(a_local) * local + sigmoid(a_global) * global, with [a_local, a_global] = Linear(h)
where h = LayerNorm(x). Two facts the paper does not spell out, and which this file keeps visible:
  - M is a parameter shared by all sequences. Nothing in the input writes to it, so the "global" path is a
    per-token function of h, not a look-up into the sequence.
  - The conv is therefore the only operation that mixes tokens: a logit at position t sees tokens
    t - n_layer*(kernel_size-1) ... t only, 13 tokens for the paper's 6 layers of kernel 3 (`receptive_field`).
GAMConfig(memory="context") swaps M for what the paper's name promises and its code lacks (our addition): a
memory that each token writes a key-value pair into, with a learned decay, read by a query (`decayed_memory`).

Shape letters used in comments:
  B batch size, T sequence length (time), C channels (n_embd), S memory slots (n_slots),
  K conv kernel size, V vocabulary size; H heads and D = C/H head size of the context memory.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

MIXERS = ("gated", "sum", "local", "global")  # the paper's Table 3 ablations; "gated" is GAM itself
RECOMPUTE = ("none", "mixer", "ffn", "both")  # activation checkpointing: which part of each block backward reruns


def check_config(config, int_fields):
    """Raise a one-line ValueError for a size that is not a positive int or a dropout outside [0, 1)."""
    for name in int_fields:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{type(config).__name__}.{name} must be a positive integer, got {value!r}")
    if not 0.0 <= config.dropout < 1.0:
        raise ValueError(f"{type(config).__name__}.dropout must be in [0, 1), got {config.dropout!r}")
    if not config.pos_init_std > 0:
        raise ValueError(f"{type(config).__name__}.pos_init_std must be positive, got {config.pos_init_std!r}")


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
    mixer: str = "gated"  # one of MIXERS: "gated" (GAM), "sum" (local + global), "local", "global"
    recompute: str = "none"  # training: "mixer", "ffn" or "both" parts of each block are rerun in backward, not stored
    memory: str = "bank"  # "bank": the paper's learned M; "context": a memory the sequence writes (not the paper)
    n_head: int = 8  # memory="context": heads, each with a (C/n_head x C/n_head) state
    chunk_size: int = 64  # memory="context": training computes the memory in chunks of this many tokens

    def __post_init__(self):
        check_config(self, ("vocab_size", "block_size", "n_layer", "n_embd", "n_slots", "kernel_size", "n_head",
                            "chunk_size"))
        if self.mixer not in MIXERS:
            raise ValueError(f"GAMConfig.mixer must be one of {MIXERS}, got {self.mixer!r}")
        if self.memory not in ("bank", "context"):
            raise ValueError(f"GAMConfig.memory must be 'bank' or 'context', got {self.memory!r}")
        if self.recompute not in RECOMPUTE:
            raise ValueError(f"GAMConfig.recompute must be one of {RECOMPUTE}, got {self.recompute!r}")
        if self.memory == "context" and self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")


class GeluLinear(torch.autograd.Function):
    """linear(gelu(a), weight, bias), the FFN's second half, keeping only `a` for backward. Autograd would also
    keep gelu(a): 4C floats per token, the largest tensor a block stores. Backward recomputes gelu(a) for the
    weight gradient, frees it, then applies GELU's derivative in place, a slice at a time, so it never holds
    two (B, T, 4C) tensors either. Same values and gradients as F.linear(F.gelu(a), weight, bias) (tests)."""

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


class MLP(nn.Module):
    """The Transformer FFN: Linear(C, 4C), exact GELU, Linear(4C, C), dropout."""

    def __init__(self, n_embd, dropout):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd)
        self.c_proj = nn.Linear(4 * n_embd, n_embd)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        # c_proj(gelu(c_fc(x))), by GeluLinear so that training does not store gelu's output
        return self.dropout(GeluLinear.apply(self.c_fc(x), self.c_proj.weight, self.c_proj.bias))


def with_past(u, n, state=None, key="past"):
    """Prepend to u (B, T, X) the n time steps before it: zeros at the start of a sequence, else state[key]
    from the previous call. Saves the last n steps in state[key] for the next call. This is all the memory a
    causal conv of width n + 1 needs, so a cached step costs the same at any position."""
    past = None if state is None else state.get(key)
    if past is None:
        past = u.new_zeros(u.size(0), n, u.size(2))  # (B, n, X)
    u = torch.cat([past, u], dim=1)  # (B, n+T, X)
    if state is not None:
        state[key] = u[:, u.size(1) - n:]  # (B, n, X); written this way because u[:, -0:] would keep all
    return u


def decayed_memory(q, k, v, log_decay, state=None, chunk_size=64):
    """A memory that the sequence writes: state_t = g_t state_{t-1} + k_t v_t^T, read as o_t = state_t^T q_t,
    per head. q, k, v (B, H, T, D); log_decay (B, H, T) = log g_t <= 0; state (B, H, D, D) before the first token.
    Returns o (B, H, T, D) and the last state. Chunked: inside a chunk the sum is a masked, decayed attention
    (matrix products); across chunks only the state is carried, so the cost is O(T * chunk_size), not O(T^2).
    The step-by-step recurrence is in the tests as the reference."""
    B, H, _, D = q.shape
    if state is None:
        state = q.new_zeros(B, H, D, D)
    outs = []
    # split, not slice: the backward of T/chunk_size slices would add T/chunk_size full-size gradients (O(T^2))
    chunks = zip(*(t.split(chunk_size, dim=2) for t in (q, k, v)), log_decay.split(chunk_size, dim=2))
    for qc, kc, vc, log_decay_c in chunks:
        cum = log_decay_c.cumsum(-1)  # (B, H, L): log of g_1 ... g_i inside the chunk
        L = cum.size(-1)
        causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
        # token j's write, decayed until token i: exp(cum_i - cum_j) for j <= i (masked before exp: no overflow)
        decay = torch.exp((cum.unsqueeze(-1) - cum.unsqueeze(-2)).masked_fill(~causal, float("-inf")))  # (B,H,L,L)
        o = ((qc @ kc.transpose(-1, -2)) * decay) @ vc  # writes inside the chunk
        o = o + (qc * cum.exp().unsqueeze(-1)) @ state  # plus the state from before the chunk, decayed
        writes = (kc * (cum[..., -1:] - cum).exp().unsqueeze(-1)).transpose(-1, -2) @ vc  # (B, H, D, D)
        state = cum[..., -1:, None].exp() * state + writes
        outs.append(o)
    return torch.cat(outs, dim=2), state


class GAMMixer(nn.Module):
    """The paper's replacement for attention: local conv path, global memory path, sigmoid gates."""

    def __init__(self, config):
        super().__init__()
        C, S, K = config.n_embd, config.n_slots, config.kernel_size
        self.mixer = config.mixer
        self.kernel_size = K
        if self.mixer != "global":
            # depthwise (groups=C): each channel has its own K taps and bias; no channel mixing, no activation
            self.conv = nn.Conv1d(C, C, K, groups=C)
        self.context = config.memory == "context"
        if self.mixer != "local" and not self.context:
            self.memory = nn.Parameter(torch.empty(S, C))
            nn.init.xavier_uniform_(self.memory)  # rows of norm ~1, so initial scores h.M have std ~1
        if self.mixer != "local" and self.context:
            self.n_head, self.chunk_size = config.n_head, config.chunk_size
            self.key = nn.Linear(C, C, bias=False)  # keys come from the previous token
            self.query_value = nn.Linear(C, 2 * C, bias=False)
            self.decay = nn.Linear(C, config.n_head)  # per token and head: how much of the memory to keep
            # start with slow forgetting, 1 - g from 1/512 (head 0) to 1/16 (last head): a range of time scales
            keep = 1 - torch.exp(torch.linspace(math.log(1 / 512), math.log(1 / 16), config.n_head))
            with torch.no_grad():
                self.decay.bias.copy_(torch.log(keep / (1 - keep)))  # sigmoid(bias) = keep
        if self.mixer == "gated":
            self.gate = nn.Linear(C, 2 * C)

    def local(self, h, state=None):
        """Causal depthwise conv of h (B, T, C): output t sees h[t-K+1 .. t], zeros before the sequence."""
        u = with_past(h, self.kernel_size - 1, state, "past")  # (B, K-1+T, C): left padding only
        return self.conv(u.transpose(1, 2)).transpose(1, 2)  # (B, C, K-1+T) -> (B, C, T) -> (B, T, C)

    def read_context(self, h, state=None):
        """memory="context": token t writes the pair (key from h[t-1], value from h[t]) into a decaying per-head
        memory and reads it with a query from h[t], so it retrieves what followed earlier occurrences of
        tokens like itself (an induction head, in one layer)."""
        B, T, C = h.shape
        H, D = self.n_head, C // self.n_head
        prev = with_past(h, 1, state, "prev")[:, :T]  # (B, T, C): h[t-1], zeros before the sequence
        k = F.normalize(self.key(prev).view(B, T, H, D).transpose(1, 2), dim=-1)  # (B, H, T, D), unit keys
        q, v = self.query_value(h).view(B, T, 2, H, D).permute(2, 0, 3, 1, 4)  # 2 x (B, H, T, D)
        log_decay = F.logsigmoid(self.decay(h)).transpose(1, 2)  # (B, H, T)
        o, memory = decayed_memory(F.normalize(q, dim=-1), k, v, log_decay,
                                   None if state is None else state.get("memory"), self.chunk_size)
        if state is not None:
            state["memory"] = memory  # (B, H, D, D): all a generation step needs, whatever the context length
        return o.transpose(1, 2).reshape(B, T, C)  # (B, H, T, D) -> (B, T, H, D) -> (B, T, C)

    def read(self, h, state=None, trace=None):
        """The global path: softmax(h M^T) M, each token reads a convex mix of memory rows (M is both keys and
        values); with memory="context", the memory the sequence wrote."""
        if self.context:
            return self.read_context(h, state)
        M = self.memory
        if trace is None:
            # the same sum as below, by SDPA: faster, and it never stores the (B, T, S) weights
            B, T, C = h.shape
            M = M.expand(B, 1, *M.shape)  # (B, 1, S, C): one "head", the same keys/values for every sequence
            return F.scaled_dot_product_attention(h.unsqueeze(1), M, M, scale=1.0).squeeze(1)  # (B, T, C)
        weights = torch.softmax(h @ M.T, dim=-1)  # (B, T, S); unscaled scores, as in the official code
        trace["read_weights"] = weights
        return weights @ M  # (B, T, C)

    def forward(self, h, state=None, trace=None):
        if self.mixer == "local":
            return self.local(h, state)
        if self.mixer == "global":
            return self.read(h, state, trace)
        local, glob = self.local(h, state), self.read(h, state, trace)
        if self.mixer == "sum":
            return local + glob
        g_local, g_global = torch.sigmoid(self.gate(h)).chunk(2, dim=-1)  # 2 x (B, T, C), independent gates
        if trace is not None:
            trace["gate_local"], trace["gate_global"] = g_local, g_global
        return g_local * local + g_global * glob


class GAMBlock(nn.Module):
    """Pre-norm block: x + mixer(LN(x)), then x + FFN(LN(x)). No dropout or projection on the mixer branch."""

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.mixer = GAMMixer(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config.n_embd, config.dropout)
        self.recompute = config.recompute

    def forward(self, x, state=None, trace=None):
        x = x + self.part("mixer", self.mix, x, state, trace)
        return x + self.part("ffn", self.ffn, x)

    def mix(self, x, state=None, trace=None):
        return self.mixer(self.ln_1(x), state, trace)

    def ffn(self, x):
        return self.mlp(self.ln_2(x))

    def part(self, name, fn, *args):
        """fn(*args); in training, if config.recompute names this part, through a checkpoint: fn keeps only its
        input, and backward reruns it. The mixer stores about 7 tensors the size of x (LN output, padded conv
        input, two gates, both paths) and rerunning it costs a third of the block's forward matmuls (S = C); the
        FFN stores about 5 (C + 4C per token, see GeluLinear) for two thirds. Dropout masks are replayed, so
        values and gradients are unchanged."""
        if self.recompute in (name, "both") and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)


def sample_next(logits, temperature=1.0, top_k=None):
    """Draw one token id per row from (B, V) logits; temperature 0 means greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits = logits.masked_fill(logits < v[:, [-1]], -float("inf"))
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)


class LanguageModel(nn.Module):
    """The skeleton GAM shares with the paper's baselines (baselines.py), so train.py never asks which model
    it has: tied token embedding and head, learned positions, embedding dropout, a stack of blocks, final
    LayerNorm. A block is called as block(x, state) where state is its part of the generation cache."""

    def __init__(self, config, blocks, receptive_field):
        super().__init__()
        self.config = config
        self.receptive_field = receptive_field  # how many trailing tokens can reach the next logit
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wte.weight = self.lm_head.weight  # tied, so the embedding starts from the Linear init, as in the paper
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        # the paper keeps PyTorch's N(0, 1), about 40 times the token embeddings at C = 512; this swamps token
        # identity, and with it in-context recall (bench.py recall); GPT-2 uses 0.02
        nn.init.normal_(self.wpe.weight, std=config.pos_init_std)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(blocks)
        self.ln_f = nn.LayerNorm(config.n_embd)

    def new_cache(self, batch_size, start=0):
        """Generation state: the next position, and one dict per layer that the layer fills on its first call
        (GAM: the last K-1 conv inputs, a fixed size; Transformer: all keys and values; Mamba: conv window and
        SSM state, a fixed size)."""
        return {"pos": start, "layers": [{} for _ in self.blocks]}

    def forward(self, idx, targets=None, cache=None, trace=None):
        """idx (B, T) -> logits (B, T, V), and the mean cross-entropy against targets (B, T) if given
        (-1 marks a position without a target).
        cache: from new_cache; forward continues the sequence it holds and advances it.
        trace: a list; if given, each layer appends a dict of what it saw (GAM: gate_local and gate_global
        (B, T, C), read_weights (B, T, S)). Nothing is recorded, or stored, without it."""
        start = 0 if cache is None else cache["pos"]
        self.check_input(idx, start)
        pos = torch.arange(start, start + idx.size(1), device=idx.device)  # (T,)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            state = None if cache is None else cache["layers"][i]
            if trace is None:
                x = block(x, state)
            else:
                trace.append({})
                x = block(x, state, trace[-1])
        if cache is not None:
            cache["pos"] += idx.size(1)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def check_input(self, idx, start=0):
        if idx.dim() != 2 or idx.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"idx must be a (B, T) tensor of int64 token ids, got {tuple(idx.shape)} {idx.dtype}")
        if idx.size(1) == 0:
            raise ValueError("idx is empty (T = 0): give at least one token")
        if start + idx.size(1) > self.config.block_size:
            raise ValueError(f"sequence of {start + idx.size(1)} tokens exceeds block_size {self.config.block_size}:"
                             " crop the input (idx[:, -block_size:]) or build the model with a larger block_size")

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
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, use_cache=True):
        """Append max_new_tokens sampled tokens to idx (B, T). use_cache=False reruns the whole (cropped) prefix
        for every token: the slow reference that the cached path is tested against."""
        block_size = self.config.block_size
        cache = None
        for _ in range(max_new_tokens):
            if not use_cache:
                logits, _ = self(idx[:, -block_size:])
            elif cache is not None and cache["pos"] < block_size:
                logits, _ = self(idx[:, -1:], cache=cache)  # one new token on top of the cache
            else:
                # start, or past the last learned position: the reference crops to the last block_size tokens,
                # which shifts every position by one, so rebuild the cache from the tokens that can still
                # reach the next logit, placed where the cropped reference puts them
                window = idx[:, -block_size:] if cache is None else idx[:, -self.receptive_field:]
                cache = self.new_cache(idx.size(0), start=0 if cache is None else block_size - window.size(1))
                logits, _ = self(window, cache=cache)
            idx = torch.cat([idx, sample_next(logits[:, -1, :], temperature, top_k)], dim=1)
        return idx


class GAM(LanguageModel):
    """The GAM language model: n_layer GAM blocks in the shared skeleton."""

    def __init__(self, config):
        # with the paper's memory bank the conv is the only token mixing, and each layer reaches K-1 tokens
        # further back; a memory written by the context reaches every earlier token
        receptive_field = min(1 + config.n_layer * (config.kernel_size - 1), config.block_size)
        if config.memory == "context" and config.mixer != "local":
            receptive_field = config.block_size
        super().__init__(config, [GAMBlock(config) for _ in range(config.n_layer)], receptive_field)
