"""
What the machine running train.py does: the device and number format a run uses, how torch.compile is set up on
it, how the CPU allocator is tuned, and the model FLOP utilisation (MFU) the log reports.
"""

import ctypes
from contextlib import nullcontext

import torch
import torch.nn as nn

from baselines import Transformer
from gam import GAM

# dense bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s, for MFU (first match in the GPU's name wins)
GPU_BF16_TFLOPS = {"H200": 989, "H100": 989, "A100": 312, "A10": 125, "L40S": 362, "L4": 121, "4090": 165}


def pick_device(name):
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def describe(device):
    """The device in words, for a benchmark's title: the GPU's name, or the CPU threads torch uses."""
    return torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"


def pick_dtype(device, dtype):
    """The autocast dtype for --dtype on this device, and why. auto: bf16 where the hardware multiplies bf16
    matrices (a CUDA GPU that supports it; a CPU with AMX or AVX512-BF16, by torch's own checks: 3.8x fp32's
    matmul speed on this project's CPU), else fp32. Parameters, optimizer state and the loss stay fp32."""
    device_type = torch.device(device).type
    if dtype != "auto":
        return dtype, "as --dtype asks"
    if device_type == "cuda":
        return ("bfloat16", "this GPU supports it") if torch.cuda.is_bf16_supported() else \
            ("float32", "this GPU has no bf16")
    if device_type == "cpu":
        checks = (("AMX", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported"))
        units = [name for name, check in checks if getattr(torch.cpu, check, lambda: False)()]
        if units:
            return "bfloat16", f"this CPU has {' and '.join(units)}"
        return "float32", "this CPU has no bf16 matrix units"
    return "float32", f"no bf16 autocast on {device_type} here"


def autocast_for(device, dtype):
    """A context that runs the forward pass in pick_dtype's choice: torch.autocast for bf16, else nothing."""
    dtype, _ = pick_dtype(device, dtype)
    if dtype == "float32":
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def set_up(device, dtype, keep_freed=True):
    """What train.py sets for a run on this device: the allocator (keep_freed_memory, on a CPU), inductor's vector
    width (cpu_bf16_vectors). Returns autocast_for(device, dtype), the context of the forward passes."""
    if torch.device(device).type == "cpu" and keep_freed:
        keep_freed_memory()
    cpu_bf16_vectors(device, dtype)  # for --compile, and for Mamba's --scan compiled
    return autocast_for(device, dtype)


def cpu_bf16_vectors(device, dtype):
    """On a CPU that trains in bf16, have inductor write 256-bit vector code instead of 512-bit. With torch 2.13 on
    an AVX-512 CPU (CPU D in RESULTS.md), the 512-bit code of a GAM block in bf16 autocast gave NaN gradients from
    the first step (GAM at batch 8 x 256, C 128; Mamba too); 256-bit code trains as eager does. A global inductor
    setting: it applies to everything compiled in this process afterwards."""
    if torch.device(device).type == "cpu" and pick_dtype(device, dtype)[0] == "bfloat16":
        from torch._inductor import config as inductor_config

        inductor_config.cpp.simdlen = 256


def keep_freed_memory():
    """Linux (glibc) only: keep freed blocks in the process instead of handing them back to the system. By
    default glibc unmaps every large freed block, so each training step on CPU has the kernel map and zero its
    activations again; keeping them gave 1.56x tokens/s on this project's CPU (README). Returns whether it took."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False  # not glibc (macOS, Windows, musl): nothing to do
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 2**30) and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def flops_per_token(model, T):
    """Matmul FLOPs of one training step per token (forward 2 per multiply-add, backward twice that), nanoGPT's
    6N estimate counted layer by layer: every Linear, the memory bank read (2 S C) where the model has one,
    attention scores and values (2 T C per layer, the full square as nanoGPT counts it; 2 W C with an attention
    window W), the LM head. Not counted: Mamba's scan, the context memory's read and all elementwise work."""
    macs = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    cfg = model.config
    if isinstance(model, GAM) and cfg.memory == "bank" and cfg.variant != "local":
        macs += cfg.n_layer * 2 * cfg.n_slots * cfg.n_embd
    if isinstance(model, Transformer):
        macs += cfg.n_layer * 2 * min(cfg.attn_window or T, T) * cfg.n_embd
    return 6 * macs


def peak_flops(peak_tflops, device, dtype):
    """The FLOP/s that MFU is measured against: peak_tflops (--peak-tflops) if set, else the dense bf16 peak of a
    known GPU that trains in bf16, else None (no MFU in the log)."""
    if peak_tflops > 0:
        return peak_tflops * 1e12
    if torch.device(device).type == "cuda" and dtype == torch.bfloat16:
        name = torch.cuda.get_device_name(device)
        return next((tflops * 1e12 for key, tflops in GPU_BF16_TFLOPS.items() if key in name), None)
    return None
