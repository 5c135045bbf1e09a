"""
Text generation with a cache, for every model here (GAM and both baselines); not part of the paper's model.

A model's own generate() (gam.py) reruns the whole prefix for every new token. With a cache, each new token costs
the same at any position: the model runs on the new token alone and each layer keeps just what it needs of the
past, in a LayerCache of its own. The layout, as new_cache makes it:

    {"pos": the next position, "layers": [one LayerCache per block, filled on the block's first call]}
    GAM            "past": the last K-1 conv inputs (B, K-1, C), a fixed size
      memory="context" adds "prev" (B, 1, C), the last input, and "memory" (B, H, D, D), the written state
    Transformer    "k", "v": the keys and values of every token so far (B, H, P, D)
    Mamba          "conv": the last K-1 conv inputs (B, K-1, E); "ssm": the state (B, E, N)

generate() here gives the same tokens as model.generate(); the tests hold them equal, past block_size too.
"""

import torch

from gam import sample_next


class LayerCache(dict):
    """One layer's state between generation calls: a dict of tensors, and past() for the causal convs."""

    def past(self, u, n, key="past"):
        """The n time steps before u (B, T, X): zeros at the start of a sequence, else the last n steps of the
        inputs of the previous calls. Keeps the last n steps of (past, u) under key for the next call: all the
        memory a causal conv of width n + 1 needs."""
        past = self.get(key)
        if past is None:
            past = u.new_zeros(u.size(0), n, u.size(2))  # (B, n, X)
        both = torch.cat([past, u], dim=1)  # (B, n+T, X)
        self[key] = both[:, both.size(1) - n:]  # (B, n, X); written this way because [:, -0:] would keep all
        return past


def new_cache(model, start=0):
    """An empty cache for `model` whose next token sits at position `start`."""
    return {"pos": start, "layers": [LayerCache() for _ in model.blocks]}


@torch.no_grad()
def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None):
    """model.generate(idx, max_new_tokens, temperature, top_k) with a cache: the same tokens, (B, T +
    max_new_tokens), each new one at the cost of one position."""
    block_size = model.config.block_size
    cache = None
    for _ in range(max_new_tokens):
        if cache is not None and cache["pos"] < block_size:
            logits, _ = model(idx[:, -1:], cache=cache)  # one new token on top of the cache
        else:
            # the start, or past the last learned position: model.generate crops to the last block_size tokens,
            # which shifts every position by one, so rebuild the cache from the tokens that can still reach the
            # next logit (model.receptive_field), placed where the cropped prefix puts them
            window = idx[:, -block_size:] if cache is None else idx[:, -model.receptive_field:]
            cache = new_cache(model, start=0 if cache is None else block_size - window.size(1))
            logits, _ = model(window, cache=cache)
        idx = torch.cat([idx, sample_next(logits[:, -1, :], temperature, top_k)], dim=1)
    return idx
