"""
A memory that the sequence writes, for GAM's global path: GAMConfig(memory="context"), train.py --memory context.
Not in the paper, and not in its code.

The paper's memory bank M is a learned parameter that no token writes, so GAM cannot look anything up in its own
context beyond the conv's 13-token window (gam.py). This memory is what the paper's name promises: each token
writes a key-value pair into a per-head (D x D) state that decays at a learned, token-dependent rate, and reads it
with a query (a linear-attention memory with a forget gate, as in RetNet, GLA or Mamba-2):

    state_t = γ_t state_{t-1} + k_t v_tᵀ        γ_t = sigmoid(W_γ h_t + b_γ) in (0, 1), per head
    o_t     = state_tᵀ q_t                      q_t, k_t unit vectors; k_t from h_{t-1}, q_t and v_t from h_t

The key comes from the previous token and the value from the current one, so a query equal to a key seen earlier
retrieves what followed it: an induction head in one layer (notebook 04 shows it at work).

Three forms, by GAMConfig.memory: "context" (the above), "context-norm" (each head's read scaled to unit RMS) and
"bank+context" (the paper's bank read plus this one). runtime/models.py plugs them into gam.GAMMixer.

Shape letters: B batch, T time, C channels, H heads (n_head), D = C / H.
"""

import math

import torch
import torch.nn as nn
from torch.nn import functional as F



def decayed_memory(q, k, v, log_decay, state=None, chunk_size=64):
    """o_t = state_tᵀ q_t with state_t = γ_t state_{t-1} + k_t v_tᵀ, per head. q, k, v (B, H, T, D); log_decay
    (B, H, T) = log γ_t <= 0; state (B, H, D, D) before the first token. Returns o (B, H, T, D) and the last state.
    Chunked: inside a chunk the sum is a masked, decayed attention (matrix products); across chunks only the
    state is carried, so the cost is O(T * chunk_size), not O(T^2). The tests check it against the recurrence."""
    B, H, _, D = q.shape
    if state is None:
        state = q.new_zeros(B, H, D, D)
    outs = []
    # split, not slice: the backward of T/chunk_size slices would add T/chunk_size full-size gradients (O(T^2))
    chunks = zip(*(t.split(chunk_size, dim=2) for t in (q, k, v)), log_decay.split(chunk_size, dim=2))
    for qc, kc, vc, log_decay_c in chunks:
        cum = log_decay_c.cumsum(-1)  # (B, H, L): log of γ_1 ... γ_i inside the chunk
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


class ContextMemory(nn.Module):
    """memory="context": the global path reads a memory that the sequence wrote, instead of the learned bank."""

    def __init__(self, config):
        super().__init__()
        C, H = config.n_embd, config.n_head
        self.n_head, self.chunk_size = H, config.chunk_size
        self.key = nn.Linear(C, C, bias=False)  # keys come from the previous token
        self.query_value = nn.Linear(C, 2 * C, bias=False)
        self.decay = nn.Linear(C, H)  # per token and head: how much of the memory to keep
        # start with slow forgetting, 1 - g from 1/512 (head 0) to 1/16 (last head): a range of time scales
        keep = 1 - torch.exp(torch.linspace(math.log(1 / 512), math.log(1 / 16), H))
        with torch.no_grad():
            self.decay.bias.copy_(torch.log(keep / (1 - keep)))  # sigmoid(bias) = keep

    def project(self, h, cache=None):
        """h (B, T, C) -> unit queries and keys, values (B, H, T, D) each, and log g (B, H, T)."""
        B, T, C = h.shape
        H, D = self.n_head, C // self.n_head
        before = h.new_zeros(B, 1, C) if cache is None else cache.past(h, 1, "prev")  # (B, 1, C)
        prev = torch.cat([before, h[:, :-1]], dim=1)  # (B, T, C): h[t-1], zeros before the sequence
        k = F.normalize(self.key(prev).view(B, T, H, D).transpose(1, 2), dim=-1)  # (B, H, T, D)
        q, v = self.query_value(h).view(B, T, 2, H, D).permute(2, 0, 3, 1, 4)  # 2 x (B, H, T, D)
        log_decay = F.logsigmoid(self.decay(h)).transpose(1, 2)  # (B, H, T)
        return F.normalize(q, dim=-1), k, v, log_decay

    def forward(self, h, cache=None):
        """h (B, T, C) -> what each token reads, (B, T, C). cache: a layer's generation state, which keeps the
        (B, H, D, D) memory: all a generation step needs, whatever the context length."""
        q, k, v, log_decay = self.project(h, cache)
        o, state = decayed_memory(q, k, v, log_decay, None if cache is None else cache.get("memory"),
                                  self.chunk_size)
        if cache is not None:
            cache["memory"] = state
        B, T, C = h.shape
        return o.transpose(1, 2).reshape(B, T, C)  # (B, H, T, D) -> (B, T, H, D) -> (B, T, C)

    def read_weights(self, h):
        """How much token i's read takes from token j's write, (B, H, T, T): (q_i . k_j) times the decay between
        them, zero for j > i. forward's output is read_weights(h) @ v; this form costs O(T^2) and serves
        inspection (probe.py) and the tests."""
        q, k, _, log_decay = self.project(h)
        cum = log_decay.cumsum(-1)  # (B, H, T)
        T = cum.size(-1)
        causal = torch.ones(T, T, dtype=torch.bool, device=h.device).tril()
        decay = torch.exp((cum.unsqueeze(-1) - cum.unsqueeze(-2)).masked_fill(~causal, float("-inf")))
        return (q @ k.transpose(-1, -2)) * decay  # (B, H, T, T)


class NormedContextMemory(ContextMemory):
    """memory="context-norm": the same memory, each head's read scaled to unit RMS, then a learned gain per channel
    (as RetNet and GLA normalise theirs). The plain read grows with the number of writes its decay keeps, up to
    about 1 / (1 - g) of them: 512 for the slowest head at init."""

    def __init__(self, config):
        super().__init__(config)
        self.gain = nn.Parameter(torch.ones(config.n_embd))

    def forward(self, h, cache=None):
        B, T, C = h.shape
        o = super().forward(h, cache).view(B, T, self.n_head, C // self.n_head)  # (B, T, H, D)
        return F.rms_norm(o, (C // self.n_head,), eps=1e-6).reshape(B, T, C) * self.gain  # (B, T, C)


class BankAndContextMemory(nn.Module):
    """memory="bank+context": the paper's learned bank read, eqs. (1)-(3), plus the written memory's read, summed
    into one global path: the bank's per-token features where the context holds little yet (the first tokens of a
    sequence, where the written memory alone trails the bank), the written memory beyond the conv's window."""

    def __init__(self, config):
        super().__init__()
        self.memory = nn.Parameter(torch.empty(config.n_slots, config.n_embd))  # M, (S, C), as gam.py's
        nn.init.xavier_uniform_(self.memory)
        self.written = ContextMemory(config)

    def forward(self, h, cache=None):
        bank = torch.softmax(h @ self.memory.T, dim=-1) @ self.memory  # (B, T, S) -> (B, T, C)
        return bank + self.written(h, cache)  # (B, T, C)

    def read_weights(self, h):
        """The written memory's token-to-token weights, (B, H, T, T), as ContextMemory.read_weights."""
        return self.written.read_weights(h)


# what each GAMConfig.memory beyond the paper's "bank" builds as the global path (runtime/models.py plugs it in)
WRITTEN_MEMORIES = {"context": ContextMemory, "context-norm": NormedContextMemory, "bank+context": BankAndContextMemory}
