"""
Text generation for every model here (GAM and both baselines); not part of the paper's model.

A cache lets each new token cost the same at any position: the model runs on the new token alone and each layer
keeps just what it needs of the past, in a dict of its own. The layout, as new_cache makes it:

    {"pos": the next position, "layers": [one dict per block, filled on the block's first call]}
    GAM            "past": the last K-1 conv inputs (B, K-1, C), a fixed size
      memory="context" adds "prev" (B, 1, C), the last input, and "memory" (B, H, D, D), the written state
    Transformer    "k", "v": the keys and values of every token so far (B, H, P, D)
    Mamba          "conv": the last K-1 conv inputs (B, K-1, E); "ssm": the state (B, E, N)

generate(..., use_cache=False) reruns the whole (cropped) prefix for every token: the slow reference that the
cached path is tested against.
"""

import torch
from torch.nn import functional as F


def new_cache(model, start=0):
    """An empty cache for `model` whose next token sits at position `start`."""
    return {"pos": start, "layers": [{} for _ in model.blocks]}


def pad_past(u, n, cache=None, key="past"):
    """Prepend to u (B, T, X) the n time steps before it: zeros at the start of a sequence, else cache[key] from
    the previous call, and keep the last n steps in cache[key] for the next one. This is all the memory a causal
    conv of width n + 1 needs."""
    past = None if cache is None else cache.get(key)
    if past is None:
        past = u.new_zeros(u.size(0), n, u.size(2))  # (B, n, X)
    u = torch.cat([past, u], dim=1)  # (B, n+T, X)
    if cache is not None:
        cache[key] = u[:, u.size(1) - n:]  # (B, n, X); written this way because u[:, -0:] would keep all
    return u


def sample_next(logits, temperature=1.0, top_k=None):
    """Draw one token id per row from (B, V) logits; temperature 0 means greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits = logits.masked_fill(logits < v[:, [-1]], -float("inf"))
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)


@torch.no_grad()
def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, use_cache=True):
    """Append max_new_tokens sampled tokens to idx (B, T) and return it (B, T + max_new_tokens)."""
    block_size = model.config.block_size
    cache = None
    for _ in range(max_new_tokens):
        if not use_cache:
            logits, _ = model(idx[:, -block_size:])
        elif cache is not None and cache["pos"] < block_size:
            logits, _ = model(idx[:, -1:], cache=cache)  # one new token on top of the cache
        else:
            # the start, or past the last learned position: the reference crops to the last block_size tokens,
            # which shifts every position by one, so rebuild the cache from the tokens that can still reach the
            # next logit (model.receptive_field), placed where the cropped reference puts them
            window = idx[:, -block_size:] if cache is None else idx[:, -model.receptive_field:]
            cache = new_cache(model, start=0 if cache is None else block_size - window.size(1))
            logits, _ = model(window, cache=cache)
        idx = torch.cat([idx, sample_next(logits[:, -1, :], temperature, top_k)], dim=1)
    return idx
