"""
Data-parallel training under torchrun (DDP): joining the process group, and the few things the processes of one
run must agree on (who prepares the data, when to stop or save, every process's RNG state for the checkpoint).
Alone (no torchrun), every function here does the single-process thing.
"""

import os
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from gam import ConfigError
from runtime.hardware import pick_device


def init_distributed(device_name):
    """Under torchrun (RANK in the environment) join the process group, nccl on CUDA with one GPU per process,
    gloo on CPU, and return (rank, world size, device); else (0, 1, the device device_name picks)."""
    device = pick_device(device_name)
    if "RANK" not in os.environ:
        return 0, 1, device
    if device.startswith("cuda"):
        device = f"cuda:{os.environ['LOCAL_RANK']}"
        torch.cuda.set_device(device)
    elif device != "cpu":
        raise ConfigError(f"torchrun runs on CUDA GPUs (nccl) or CPUs (gloo), not on {device}")
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def barrier(world):
    if world > 1:
        dist.barrier()


def close_distributed(world):
    if world > 1:
        dist.destroy_process_group()


def wrap(model, device, world):
    """The model as the loop calls it: in DDP, which averages the gradients of all processes, if there are several."""
    if world == 1:
        return model
    return DDP(model, device_ids=[torch.device(device).index] if device.startswith("cuda") else None)


@contextmanager
def rank_zero_first(rank, world):
    """Rank 0 runs the body (tokenizing, say) while the others wait; then they run it, and find its files ready."""
    if world > 1 and rank != 0:
        dist.barrier()
    yield
    if world > 1 and rank == 0:
        dist.barrier()


def any_process(flags, device, world):
    """Each flag true if it is true in any process: every process must stop, or save, at the same step."""
    if world == 1:
        return flags
    t = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(f) for f in t]


def rng_states(device, world):
    """The CPU RNG state of every process, and the CUDA one on a GPU (else None): lists indexed by rank."""
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state() if torch.device(device).type == "cuda" else None
    if world == 1:
        return [rng], None if cuda_rng is None else [cuda_rng]
    gathered = [None] * world
    dist.all_gather_object(gathered, (rng, cuda_rng))
    return [r for r, _ in gathered], None if cuda_rng is None else [c for _, c in gathered]
