"""
Every model of this project, built by name: build_model("gam" | "transformer" | "mamba", **config). The one way
train.py, sample.py, the checkpoints, the notebooks and the tests make a model, so that any option a config names
works from here alone: where GAMConfig or MambaConfig names something beyond the paper (extensions/), this plugs
it into the classes of gam.py and baselines.py, which take it as a part.

    model = build_model("gam", vocab_size=256, n_layer=4, n_embd=128, memory="context")
"""

import dataclasses
from functools import partial

from baselines import SCANS, Mamba, MambaConfig, Transformer, TransformerConfig
from extensions.context_memory import WRITTEN_MEMORIES
from extensions.fused_read import FusedReadMixer
from extensions.mamba_scan import compiled_scan
from extensions.recompute import RecomputedGAMBlock
from gam import GAM, ConfigError, GAMBlock, GAMConfig, GAMMixer

MODELS = {"gam": GAMConfig, "transformer": TransformerConfig, "mamba": MambaConfig}
VARIANTS = ("gated", "sum", "local", "global", "local-gated")  # the paper's Table 3 ("gated" is GAM), and a control
MEMORY_KINDS = ("bank", *WRITTEN_MEMORIES)  # "bank" is the paper's
RECOMPUTE = ("none", "gelu", "mixer", "ffn", "both")
MEMORY_READS = ("formula", "fused")


def build_model(name, **config):
    """The model `name` with its config's fields as keywords (the rest at their defaults)."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}: use {', '.join(MODELS)}")
    fields = {f.name for f in dataclasses.fields(MODELS[name])}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise ConfigError(f"{MODELS[name].__name__} has no field {unknown[0]!r}")
    config = MODELS[name](**config)
    check(config)
    if name == "transformer":
        return Transformer(config)
    if name == "mamba":
        return Mamba(config, compiled_scan if config.scan == "compiled" else None)
    mixer = partial(FusedReadMixer if config.memory_read == "fused" else GAMMixer,
                    memory=WRITTEN_MEMORIES.get(config.memory))
    block = RecomputedGAMBlock if config.recompute != "none" else GAMBlock
    return GAM(config, block=partial(block, mixer=mixer))


def check(config):
    """Raise a one-line ConfigError for a config field that cannot build its model."""
    name = type(config).__name__
    sizes = {GAMConfig: ("vocab_size", "block_size", "n_layer", "n_embd", "n_slots", "kernel_size", "n_head",
                         "chunk_size"),
             TransformerConfig: ("vocab_size", "block_size", "n_layer", "n_embd", "n_head"),
             MambaConfig: ("vocab_size", "block_size", "n_layer", "n_embd", "d_state", "d_conv", "expand",
                           "dt_rank", "scan_chunk")}[type(config)]
    for field in sizes:
        value = getattr(config, field)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name}.{field} must be a positive integer, got {value!r}")
    if not 0.0 <= config.dropout < 1.0:
        raise ConfigError(f"{name}.dropout must be in [0, 1), got {config.dropout!r}")
    if not config.pos_init_std > 0:
        raise ConfigError(f"{name}.pos_init_std must be positive, got {config.pos_init_std!r}")
    options = {GAMConfig: {"variant": VARIANTS, "memory": MEMORY_KINDS, "recompute": RECOMPUTE,
                           "memory_read": MEMORY_READS},
               TransformerConfig: {"attn": ("sdpa", "naive"), "positions": ("learned", "rope")},
               MambaConfig: {"scan": SCANS, "positions": ("learned", "none")}}[type(config)]
    for field, allowed in options.items():
        if getattr(config, field) not in allowed:
            raise ConfigError(f"{name}.{field} must be one of {', '.join(allowed)}, got {getattr(config, field)!r}")
    heads = config.n_head if isinstance(config, TransformerConfig) or config_writes(config) else 1
    if config.n_embd % heads:
        raise ConfigError(f"n_embd ({config.n_embd}) must be divisible by n_head ({heads})")
    if isinstance(config, TransformerConfig):
        if config.attn_window < 0:
            raise ConfigError(f"TransformerConfig.attn_window must be 0 (all tokens) or more, got {config.attn_window}")
        if config.positions == "rope" and (config.n_embd // config.n_head) % 2:
            raise ConfigError(f"rotary positions need an even head size, got {config.n_embd // config.n_head}")


def config_writes(config):
    """Whether a GAM config has a memory that the sequence writes (whose heads must divide the width)."""
    return isinstance(config, GAMConfig) and config.memory != "bank"
