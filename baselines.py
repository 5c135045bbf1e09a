"""
The paper's two baselines, with the same API as gam.GAM: model(idx, targets=None) -> (logits, loss),
generate(...), configure_optimizers(...); the generation cache is extensions/generation.py's.

- Transformer: GPT-style pre-norm decoder (nanoGPT's shape). Attention by F.scaled_dot_product_attention, or the
  paper's naive masked softmax (attn="naive"), which is what the paper timed. Positions: the paper's learned table
  (positions="learned"), or rotary positions on queries and keys (positions="rope", RoFormer, arXiv:2104.09864),
  as the field's Transformers have them (the Transformer++ of the Mamba paper).
- Mamba: a Mamba LM in plain PyTorch (Gu & Dao 2023, arXiv:2312.00752), mixer as mamba_ssm's `Mamba` with the
  paper's settings (d_state 16, d_conv 4, expand 3). Unlike the paper's code, which stacked bare mixers, every
  mixer sits in a pre-norm residual block, as in mamba_ssm's own language model. The selective scan runs chunk by
  chunk (scan="chunked"): a log-depth scan inside each chunk, only the (B, E, N) state carried between chunks, and
  each chunk recomputed in backward, so memory grows linearly in T with no (B, T, E, N) tensor kept; the
  step-by-step loop (scan="sequential") is the reference. scan="compiled" (extensions/mamba_scan.py, plugged in by
  runtime/models.py as Mamba(config, compiled_scan=...)) runs each chunk, forward and backward, as one
  torch.compile'd step loop, compiled once for a chunk's shape whatever T is.

Both sit in the skeleton they share with GAM (gam.LanguageModel): tied token embedding, learned positions
(N(0, 1) init; none for the rotary Transformer, nor for Mamba with positions="none"), embedding dropout, final
LayerNorm, bias-free head.

Shape letters: B batch, T time, C n_embd, H heads, D head size, E d_inner (= expand * C), N d_state,
R dt_rank, K conv width, V vocabulary.
"""

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.utils import checkpoint as activation_checkpoint

from gam import MLP, ConfigError, LanguageModel


# ----------------------------------------------------------------------------------------------------------------
# Transformer

@dataclass
class TransformerConfig:
    vocab_size: int = 50257
    block_size: int = 256
    n_layer: int = 6
    n_embd: int = 512
    n_head: int = 8
    dropout: float = 0.1  # embeddings, attention probabilities, attention output, FFN output
    pos_init_std: float = 1.0  # learned positions start N(0, pos_init_std), 1 as the paper
    attn: str = "sdpa"  # "sdpa" (fused kernel) or "naive" (materialised T x T scores, the paper's code)
    attn_window: int = 0  # > 0: each token attends to the last attn_window tokens only (itself included); 0: all
    positions: str = "learned"  # "learned": a table added to the embeddings (the paper); "rope": rotary q and k



def rotate(x, pos, base=10000.0):
    """Rotary positions: channel pair (i, i + D/2) of x (B, H, T, D) turned by the angle pos * base^(-2i/D), pos (T,)
    the tokens' positions (the half-split pairing of GPT-NeoX and LLaMA). A rotation keeps norms, and the dot product
    of a query turned by m with a key turned by n depends on m - n only: attention sees relative positions."""
    D = x.size(-1)
    freqs = base ** (-torch.arange(0, D, 2, device=x.device, dtype=torch.float32) / D)  # (D/2,)
    angles = pos.float()[:, None] * freqs  # (T, D/2)
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x.float().chunk(2, dim=-1)  # 2 x (B, H, T, D/2)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)  # (B, H, T, D)


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_head, self.attn, self.dropout = config.n_head, config.attn, config.dropout
        self.window, self.rope = config.attn_window, config.positions == "rope"
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, cache=None):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        P = 0 if cache is None or "k" not in cache else cache["k"].size(2)  # tokens before these, in the cache
        if self.rope:  # turned by their positions P .. P+T-1; the cache keeps keys already turned
            pos = torch.arange(P, P + T, device=x.device)
            q, k = rotate(q, pos), rotate(k, pos)
        if P:  # keys and values of the tokens before these
            k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)  # (B, H, P+T, D)
        if cache is not None:
            cache["k"], cache["v"] = k, v
        # query i sits at position P + i and may see keys 0 .. P + i
        mask = torch.ones(T, P + T, dtype=torch.bool, device=x.device).tril(diagonal=P)  # (T, P+T)
        if self.window:  # sliding window: query P + i sees keys P + i - window + 1 .. P + i
            mask &= ~torch.ones_like(mask).tril(diagonal=P - self.window)
        causal = P == 0 and not self.window
        if self.attn == "sdpa":
            # is_causal (no cache, no window) lets SDPA pick a fused kernel that never builds the T x T matrix; an
            # explicit mask, needed when a chunk continues a cache or attends to a window, falls back to the plain
            # computation
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=None if causal else mask, is_causal=causal,
                                               dropout_p=self.dropout if self.training else 0.0)
        else:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))  # (B, H, T, P+T)
            att = self.attn_dropout(F.softmax(att.masked_fill(~mask, float("-inf")), dim=-1))
            y = att @ v  # (B, H, T, D)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads: (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class TransformerBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config.n_embd, config.dropout)

    def forward(self, x, cache=None):
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


class Transformer(LanguageModel):
    def __init__(self, config):
        # a window of W tokens per layer reaches W - 1 tokens further back with each layer, as GAM's conv does
        field = config.block_size if not config.attn_window else 1 + config.n_layer * (config.attn_window - 1)
        super().__init__(config, [TransformerBlock(config) for _ in range(config.n_layer)],
                         min(field, config.block_size), learned_positions=config.positions == "learned")


# ----------------------------------------------------------------------------------------------------------------
# Mamba

SCANS = ("chunked", "compiled", "sequential")


@dataclass
class MambaConfig:
    vocab_size: int = 50257
    block_size: int = 256
    n_layer: int = 6
    n_embd: int = 512
    d_state: int = 16  # N
    d_conv: int = 4  # K
    expand: int = 3  # E = expand * C; the paper uses 3 (mamba_ssm's default is 2)
    dt_rank: int = 0  # R; 0 means ceil(n_embd / 16), as mamba_ssm's "auto"
    dropout: float = 0.1  # embeddings only, as in the paper's code
    pos_init_std: float = 1.0  # learned positions start N(0, pos_init_std), 1 as the paper
    # "learned": a table added to the embeddings, as the paper's code; "none": no table, as mamba_ssm's own language
    # model, where the recurrence alone orders the tokens
    positions: str = "learned"
    scan: str = "chunked"  # "chunked" (linear memory), "compiled" (chunked, compiled) or "sequential" (reference)
    scan_chunk: int = 8  # scan="chunked" or "compiled": time steps per chunk

    def __post_init__(self):
        if self.dt_rank == 0:
            self.dt_rank = math.ceil(self.n_embd / 16)


def scan_sequential(a, b, h0=None):
    """Reference: h_t = a_t * h_{t-1} + b_t, one time step at a time. a, b (B, T, E, N); h0 (B, E, N) or None.
    Returns every h_t, (B, T, E, N)."""
    h = torch.zeros_like(b[:, 0]) if h0 is None else h0
    hs = []
    for t in range(b.size(1)):
        h = a[:, t] * h + b[:, t]
        hs.append(h)
    return torch.stack(hs, dim=1)


def scan_parallel(a, b, h0=None):
    """The same recurrence in ceil(log2 T) vectorised steps (Hillis & Steele). After the step with stride s,
    b_t holds h_t restricted to inputs t-2s+1 .. t and a_t the product of those decays; any T works."""
    T, stride = b.size(1), 1
    while stride < T:
        b = b + a * F.pad(b[:, :-stride], (0, 0, 0, 0, stride, 0))  # b_t += a_t * b_{t-stride}, 0 before t=0
        a = a * F.pad(a[:, :-stride], (0, 0, 0, 0, stride, 0), value=1.0)  # a_t *= a_{t-stride}
        stride *= 2
    return b if h0 is None else b + a * h0.unsqueeze(1)  # a_t is now the product of all decays up to t


def selective_scan(delta, A, u, Bm, Cm, h0=None, scan=scan_sequential):
    """Mamba's SSM: h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t (zero-order hold for A, Euler for B, as
    mamba_ssm), y_t = h_t . C_t. delta, u (B, T, E); A (E, N); Bm, Cm (B, T, N); h0 (B, E, N) or None.
    Returns y (B, T, E) and the last state (B, E, N); every h_t (B, T, E, N) exists at once."""
    a = torch.exp(delta.unsqueeze(-1) * A)  # (B, T, E, N)
    b = (delta * u).unsqueeze(-1) * Bm.unsqueeze(2)  # (B, T, E, N)
    h = scan(a, b, h0)  # (B, T, E, N)
    # the last state copied: a view would keep all of h alive for as long as the state lives
    return (h @ Cm.unsqueeze(-1)).squeeze(-1), h[:, -1].clone()  # (B, T, E), (B, E, N)


def selective_scan_chunked(delta, A, u, Bm, Cm, h0=None, chunk_size=64):
    """selective_scan, chunk_size time steps at a time, each chunk by the log-depth scan from the state the
    chunk before left. In training each chunk is recomputed in backward, so what is kept is the inputs and one
    (B, E, N) state per chunk: memory linear in T, and log2(chunk_size) scan levels instead of log2(T)."""
    scan = functools.partial(selective_scan, scan=scan_parallel)
    ys = []
    for chunk in zip(*(t.split(chunk_size, dim=1) for t in (delta, u, Bm, Cm))):
        d, uc, bc, cc = chunk
        if torch.is_grad_enabled():
            # reentrant: the other kind keeps a few small objects per chunk, which in glibc's heap pin the freed
            # chunk-sized blocks around them (measured: 4 GB more resident memory at T 1024, C 512, batch 4)
            y, h0 = activation_checkpoint.checkpoint(scan, d, A, uc, bc, cc, h0, use_reentrant=True)
        else:
            y, h0 = scan(d, A, uc, bc, cc, h0)
        ys.append(y)
    return torch.cat(ys, dim=1), h0


class MambaMixer(nn.Module):
    """mamba_ssm's `Mamba` mixer (mamba_simple.py), same parameters and initialisation, in plain PyTorch.
    compiled_scan: the scan that config.scan="compiled" names (extensions/mamba_scan.py)."""

    def __init__(self, config, compiled_scan=None):
        super().__init__()
        if config.scan == "compiled" and compiled_scan is None:
            raise ConfigError("MambaConfig.scan='compiled' is not in baselines.py: build it by name, "
                              "runtime.models.build_model('mamba', scan='compiled', ...)")
        self.compiled_scan = compiled_scan
        C, N, K, R = config.n_embd, config.d_state, config.d_conv, config.dt_rank
        E = config.expand * C
        self.d_conv, self.dt_rank, self.d_state = K, R, N
        self.scan, self.scan_chunk = config.scan, config.scan_chunk
        self.in_proj = nn.Linear(C, 2 * E, bias=False)  # x and the gate z
        self.conv1d = nn.Conv1d(E, E, K, groups=E)
        self.x_proj = nn.Linear(E, R + 2 * N, bias=False)  # input-dependent dt (low rank), B and C
        self.dt_proj = nn.Linear(R, E)
        self.out_proj = nn.Linear(E, C, bias=False)
        # mamba_ssm init: dt_proj weight U(+-R^-0.5); its bias = softplus^-1(dt), dt log-uniform in [1e-3, 0.1]
        nn.init.uniform_(self.dt_proj.weight, -R ** -0.5, R ** -0.5)
        dt = torch.exp(torch.rand(E) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        # S4D-real init A = -(1, 2, ..., N) per channel, stored as log(-A) in fp32 so A stays negative
        self.A_log = nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(E, 1))  # (E, N)
        self.D = nn.Parameter(torch.ones(E))  # skip connection u -> y
        self.A_log._no_weight_decay = self.D._no_weight_decay = True

    def forward(self, x, cache=None):
        B, T, C = x.shape
        u, z = self.in_proj(x).chunk(2, dim=-1)  # 2 x (B, T, E)
        n = self.d_conv - 1  # causal: K-1 zeros before the sequence, or the cached inputs when generating
        past = u.new_zeros(B, n, u.size(2)) if cache is None else cache.past(u, n, "conv")  # (B, K-1, E)
        u = torch.cat([past, u], dim=1)  # (B, K-1+T, E)
        u = F.silu(self.conv1d(u.transpose(1, 2)).transpose(1, 2))  # (B, T, E)
        dt, Bm, Cm = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)  # R, N, N
        delta = F.softplus(self.dt_proj(dt)).float()  # (B, T, E), positive step sizes
        A = -torch.exp(self.A_log.float())  # (E, N)
        h0 = None if cache is None else cache.get("ssm")  # the state the sequence so far left, (B, E, N)
        if self.scan == "compiled":
            y, h = self.compiled_scan(delta, A, u.float(), Bm.float(), Cm.float(), h0, self.scan_chunk)
        elif self.scan == "chunked":
            y, h = selective_scan_chunked(delta, A, u.float(), Bm.float(), Cm.float(), h0, self.scan_chunk)
        else:
            y, h = selective_scan(delta, A, u.float(), Bm.float(), Cm.float(), h0)
        if cache is not None:
            cache["ssm"] = h  # (B, E, N)
        y = y + self.D * u.float()  # (B, T, E)
        return self.out_proj(y.to(x.dtype) * F.silu(z))


class MambaBlock(nn.Module):
    def __init__(self, config, compiled_scan=None):
        super().__init__()
        self.ln = nn.LayerNorm(config.n_embd)
        self.mixer = MambaMixer(config, compiled_scan)

    def forward(self, x, cache=None):
        return x + self.mixer(self.ln(x), cache)


class Mamba(LanguageModel):
    def __init__(self, config, compiled_scan=None):
        super().__init__(config, [MambaBlock(config, compiled_scan) for _ in range(config.n_layer)], config.block_size,
                         learned_positions=config.positions == "learned")
