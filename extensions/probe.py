"""
What GAM's mixers compute inside, for the notebooks: gates and read weights, layer by layer.

    logits, layers = record(model, idx)
    layers[i]["gate_local"]     (B, T, C)  sigmoid gate on the local (conv) path      variant "gated", "local-gated"
    layers[i]["gate_global"]    (B, T, C)  sigmoid gate on the global (memory) path   variant "gated"
    layers[i]["read_weights"]   (B, T, S)  softmax(h Mᵀ) over the memory slots        memory "bank"
                                (B, H, T, T) token-to-token weights of the read       memory "context"
    layers[i]["local"]          (B, T, C)  the local path's output, conv(h)               every variant but "global"
    layers[i]["global"]         (B, T, C)  the global path's output, the memory's read     every variant but "local"
    layers[i]["h"]              (B, T, C)  the mixer's input, LN(x)

What a path adds to the residual stream is its gate times its output (g_local * local), not the gate alone.

The model runs as usual; forward pre-hooks catch each mixer's input, and the mixer's own functions (gam.py,
context_memory.py) then compute the rest, so nothing here can drift from the model.
"""

import torch

from gam import GAMMixer


@torch.no_grad()
def record(model, idx):
    """Run model on idx (B, T); return its logits (B, T, V) and one dict per layer (see the module docstring)."""
    mixers = [m for m in model.modules() if isinstance(m, GAMMixer)]
    if not mixers:
        raise ValueError(f"record() reads GAM's gates and memory; a {type(model).__name__} has neither")
    inputs = []
    hooks = [m.register_forward_pre_hook(lambda module, args: inputs.append(args[0])) for m in mixers]
    try:
        logits, _ = model(idx)
    finally:
        for hook in hooks:
            hook.remove()
    layers = []
    for mixer, h in zip(mixers, inputs):
        layer = {"h": h}
        if mixer.conv is not None:
            layer["local"] = mixer.local(h)
        if mixer.memory is not None:
            layer["global"] = mixer.read(h)
        if mixer.context is not None:
            layer["global"] = mixer.context(h)
        if mixer.variant == "local-gated":
            layer["gate_local"] = torch.sigmoid(mixer.gate(h))
        elif mixer.gate is not None:
            layer["gate_local"], layer["gate_global"] = torch.sigmoid(mixer.gate(h)).chunk(2, dim=-1)
        if mixer.memory is not None:
            layer["read_weights"] = mixer.read_weights(h)
        if mixer.context is not None:
            layer["read_weights"] = mixer.context.read_weights(h)
        layers.append(layer)
    return logits, layers
