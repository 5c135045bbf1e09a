"""
Train GAM, or one of its baselines, on a real corpus with the paper's recipe; sample from a checkpoint.

    python train.py --dataset tinystories                      # GAM, paper config, 5 epochs
    python train.py --dataset tinystories --model transformer  # the same budget for the baseline
    python train.py --dataset tinystories --n-layer 2 --n-embd 128 --n-slots 128 --block-size 128 --epochs 1
    python train.py --resume --out-dir out                     # continue exactly where the run stopped
    python sample.py --out-dir out --prompt "Once upon a time"   # text from the trained model
    torchrun --standalone --nproc_per_node=8 train.py --batch-size 4   # 8 GPUs (DDP), the paper's 32 per step

Recipe (paper section 4 and benchmark.py): AdamW lr 3e-4, betas (0.9, 0.95), weight decay 0.1 on every parameter,
100 warmup steps from 0 then cosine to 0, batch 32, block 256, grad clip 1.0, 5 epochs, each epoch one pass over
non-overlapping chunks in a fresh order. Every knob is a flag; `python train.py -h` lists them.

out-dir receives ckpt.pt (written atomically: every epoch, every --save-every-min minutes, and when SIGINT or
SIGTERM stops the run after its current step), model.safetensors when the run has finished (checkpoint.py),
metrics.jsonl (one JSON object per log line) and loss.png.
"""

import argparse
import ctypes
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

from baselines import Transformer
from checkpoint import MODELS, load_checkpoint, save_checkpoint, save_weights
from data import STDLIB, DataError, TokenChunks, add_data_args, bits_per_byte, prepare_from_args
from gam import GAM, RECOMPUTE, ConfigError
# flags that --resume may change; everything else comes from the checkpoint so the run continues unchanged
RESUME_MAY_CHANGE = {"resume", "epochs", "max_steps", "device", "dtype", "compile", "log_every", "save_every",
                     "save_every_min", "eval_every", "eval_batches", "data_dir", "data_root", "out_dir", "recompute",
                     "keep_freed_memory", "peak_tflops"}
# dense bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s, for MFU (first match in the GPU's name wins)
GPU_BF16_TFLOPS = {"H200": 989, "H100": 989, "A100": 312, "A10": 125, "L40S": 362, "L4": 121, "4090": 165}


def get_parser(add_help=True):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(), add_help=add_help,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default="tinystories", help=f"tinystories, wikitext2, {STDLIB} (this Python's "
                   "standard library), or a path to a text file")
    add_data_args(d)
    m = p.add_argument_group("model")
    m.add_argument("--model", choices=list(MODELS), default=None, help="architecture (default gam)")
    m.add_argument("--variant", default="gated", help="GAM variant, the paper's Table 3: gated (GAM), sum, local "
                   "or global")
    m.add_argument("--memory", default="bank", help="GAM memory: bank (the paper) or context (written by the "
                   "sequence; not in the paper)")
    m.add_argument("--chunk-size", type=int, default=64, help="GAM context memory: tokens per training chunk")
    m.add_argument("--attn", default="sdpa", help="Transformer attention: sdpa or naive (the paper's)")
    m.add_argument("--attn-window", type=int, default=0, help="Transformer: attend to the last N tokens only "
                   "(sliding window; 0: all earlier tokens)")
    m.add_argument("--scan", default="chunked", help="Mamba scan: chunked, compiled (the same chunks, each by a "
                   "torch.compile'd loop) or sequential (the reference)")
    m.add_argument("--scan-chunk", type=int, default=8, help="Mamba's chunked and compiled scans: time steps per "
                   "chunk")
    m.add_argument("--n-layer", type=int, default=6, help="number of blocks")
    m.add_argument("--n-embd", type=int, default=512, help="width C")
    m.add_argument("--n-head", type=int, default=8, help="Transformer heads; heads of GAM's context memory")
    m.add_argument("--n-slots", type=int, default=512, help="GAM memory slots S")
    m.add_argument("--kernel-size", type=int, default=3, help="GAM causal conv width")
    m.add_argument("--d-state", type=int, default=16, help="Mamba state size N")
    m.add_argument("--expand", type=int, default=3, help="Mamba inner width factor")
    m.add_argument("--recompute", default="none", choices=list(RECOMPUTE),
                   help="GAM: what backward reruns instead of storing (recompute.py; same values, less memory)")
    m.add_argument("--block-size", type=int, default=256, help="sequence length T")
    m.add_argument("--dropout", type=float, default=0.1, help="dropout rate")
    m.add_argument("--pos-init-std", type=float, default=1.0, help="std of the learned positions at init "
                   "(1: the paper, PyTorch's default; GPT-2 uses 0.02)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--batch-size", type=int, default=32, help="sequences per micro-batch and process: a step "
                   "takes batch-size x grad-accum x processes sequences")
    o.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step and process, their "
                   "gradients summed: the update of a batch that many times larger")
    o.add_argument("--epochs", type=int, default=5, help="passes over the training chunks")
    o.add_argument("--max-steps", type=int, default=0, help="stop after this many steps in all (0: no limit); "
                   "the cosine schedule then ends at this step")
    o.add_argument("--lr", type=float, default=3e-4, help="peak learning rate")
    o.add_argument("--beta1", type=float, default=0.9, help="AdamW beta1")
    o.add_argument("--beta2", type=float, default=0.95, help="AdamW beta2")
    o.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay")
    o.add_argument("--decay-all", action=argparse.BooleanOptionalAction, default=True,
                   help="decay every parameter, as the paper; --no-decay-all spares biases, norms, A_log, D")
    o.add_argument("--warmup-steps", type=int, default=100, help="linear warmup from lr 0, as the paper")
    o.add_argument("--grad-clip", type=float, default=1.0, help="clip the gradient norm (0: off)")
    o.add_argument("--seed", type=int, default=1337, help="seeds the weights, dropout and the data order")
    r = p.add_argument_group("run")
    r.add_argument("--out-dir", default="out", help="checkpoint, metrics.jsonl and loss.png go here")
    r.add_argument("--resume", action="store_true", help="continue the run in --out-dir from its checkpoint")
    r.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), or a torch device")
    r.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="autocast dtype; auto = bfloat16 on a CUDA GPU that supports it and on a CPU with AMX or "
                        "AVX512-BF16, else float32")
    r.add_argument("--compile", action="store_true", help="torch.compile the model (first steps are slow)")
    r.add_argument("--keep-freed-memory", action=argparse.BooleanOptionalAction, default=True,
                   help="CPU on Linux: tell glibc to keep freed memory for reuse (faster; the resident set stays "
                        "at its peak)")
    r.add_argument("--log-every", type=int, default=20, help="steps between log lines")
    r.add_argument("--eval-every", type=int, default=0, help="also evaluate every N steps (0: each epoch only)")
    r.add_argument("--eval-batches", type=int, default=0, help="evaluate on the first N val batches (0: all)")
    r.add_argument("--save-every", type=int, default=0, help="also checkpoint every N steps (0: off)")
    r.add_argument("--save-every-min", type=float, default=10.0, help="also checkpoint when this many minutes "
                   "have passed since the last checkpoint (0: off); every epoch, and SIGINT or SIGTERM, write one")
    r.add_argument("--peak-tflops", type=float, default=0.0, help="the device's peak TFLOP/s, for MFU in the log "
                   "(0: a known GPU's dense bf16 peak when training in bf16; else no MFU)")
    return p


def parse_args(argv=None):
    """The flags, plus cfg.explicit: the names of those given on the command line (for --resume)."""
    parser = get_parser()
    cfg = parser.parse_args(argv)
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    cfg.explicit = sorted(vars(parser.parse_args(argv)))
    return cfg


def build_model(cfg, vocab_size):
    """Make the model named by cfg.model from the flags its config class has."""
    cls, config_cls = MODELS[cfg.model]
    names = {f.name for f in dataclasses.fields(config_cls)}
    kwargs = {k: v for k, v in vars(cfg).items() if k in names}
    kwargs["vocab_size"] = vocab_size
    return cls(config_cls(**kwargs))


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


def pick_device(name):
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


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


def lr_at(step, cfg, total_steps):
    """The paper's LambdaLR: linear from 0 over warmup_steps, then cosine from lr to 0 at total_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate(model, chunks, batch_size, device, ctx, max_batches=0):
    """Mean cross-entropy over every target of the split, or of its first max_batches batches (weighted by
    tokens; the paper averaged batch means, which weighs a short last batch like a full one)."""
    model.eval()
    total, count = torch.zeros((), device=device), 0
    for i, (x, y) in enumerate(chunks.batches(batch_size)):
        if max_batches and i == max_batches:
            break
        with ctx:
            _, loss = model(x.to(device), y.to(device))
        total += loss.float() * y.numel()
        count += y.numel()
    model.train()
    return (total / count).item()


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


def peak_flops(cfg, device, dtype):
    """The FLOP/s that MFU is measured against: --peak-tflops, else the dense bf16 peak of a known GPU that trains
    in bf16, else None (no MFU in the log)."""
    if cfg.peak_tflops > 0:
        return cfg.peak_tflops * 1e12
    if torch.device(device).type == "cuda" and dtype == torch.bfloat16:
        name = torch.cuda.get_device_name(device)
        return next((tflops * 1e12 for key, tflops in GPU_BF16_TFLOPS.items() if key in name), None)
    return None


def duration(seconds):
    """3725 -> '1h02m', 125 -> '2m05s', 7 -> '7s'."""
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def new_figure(**kwargs):
    """A matplotlib Figure to save to a file. Made without pyplot, so the caller's backend (a notebook's inline
    plots, say) is left as it was, and the figure needs no closing."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def plot_losses(out_dir, records):
    steps = [r for r in records if r["kind"] == "step"]
    evals = [r for r in records if "val_loss" in r]
    fig = new_figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], label="train (batch)", alpha=0.7)
    ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="val")
    ax.set(xlabel="step", ylabel="cross-entropy (nats/token)", title=Path(out_dir).name)
    ax.legend()
    fig.tight_layout()
    fig.savefig(Path(out_dir, "loss.png"), dpi=100)


class StopSignals:
    """Inside `with`, SIGINT (Ctrl-C) and SIGTERM (a scheduler's stop) only note the signal in .received, so the
    loop can finish its step, write a checkpoint and stop. A second SIGINT stops at once."""

    def __enter__(self):
        self.received, self.previous = None, {}
        if threading.current_thread() is threading.main_thread():  # Python delivers signals there alone
            for s in (signal.SIGINT, signal.SIGTERM):
                self.previous[s] = signal.signal(s, self.handle)
        return self

    def handle(self, signum, frame):
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def init_distributed(cfg):
    """Under torchrun (RANK in the environment) join the process group, nccl on CUDA with one GPU per process,
    gloo on CPU, and return (rank, world size, device); else (0, 1, the device --device names)."""
    device = pick_device(cfg.device)
    if "RANK" not in os.environ:
        return 0, 1, device
    if device.startswith("cuda"):
        device = f"cuda:{os.environ['LOCAL_RANK']}"
        torch.cuda.set_device(device)
    elif device != "cpu":
        raise ConfigError(f"torchrun runs on CUDA GPUs (nccl) or CPUs (gloo), not on {device}")
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def train(cfg):
    """Train as cfg (the parsed flags) says: alone, or as one process of several under torchrun (DDP). Returns the
    metric records it also wrote to metrics.jsonl; the last has kind "stopped" if SIGINT or SIGTERM ended it."""
    rank, world, device = init_distributed(cfg)
    try:
        with StopSignals() as stop:
            records = run(cfg, rank, world, device, stop)
        if world > 1:
            dist.barrier()  # all processes are done before any closes its connections (gloo aborts otherwise)
        return records
    finally:
        if world > 1:
            dist.destroy_process_group()


def run(cfg, rank, world, device, stop):
    """train()'s loop, for process `rank` of `world` on `device`; `stop` tells whether a signal came."""
    out_dir = Path(cfg.out_dir)
    master = rank == 0  # the one process that logs, evaluates and writes files
    ckpt = None
    if cfg.resume:
        ckpt = load_checkpoint(out_dir)
        saved = ckpt["train_config"]
        if cfg.model not in (None, saved["model"]):
            raise ConfigError(f"{out_dir} holds a {saved['model']} run, not {cfg.model}: pass the matching --model "
                              "or another --out-dir")
        changed = changed_flags(saved, cfg, [k for k in getattr(cfg, "explicit", []) if k != "model"])
        if changed:
            raise ConfigError("--resume continues the run as it was; it cannot change "
                              f"--{changed[0].replace('_', '-')}")
        if ckpt.get("world_size", 1) != world:
            raise ConfigError(f"{out_dir} was trained by {ckpt.get('world_size', 1)} process(es), not {world}: resume "
                              "it with as many (torchrun --nproc_per_node)")
        cfg = argparse.Namespace(**{**vars(get_parser().parse_args([])), **saved,
                                    **{k: getattr(cfg, k) for k in getattr(cfg, "explicit", [])
                                       if k in RESUME_MAY_CHANGE}})
    elif cfg.model is None:
        cfg.model = "gam"
    for name in ("batch_size", "grad_accum", "epochs", "block_size", "log_every"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")

    if world > 1 and not master:
        dist.barrier()  # wait while rank 0 tokenizes, then find the files ready
    folder = prepare_from_args(cfg)
    if world > 1 and master:
        dist.barrier()
    meta = json.loads((folder / "meta.json").read_text())
    train_chunks = TokenChunks(folder / "train.bin", cfg.block_size)
    val_chunks = TokenChunks(folder / "val.bin", cfg.block_size)

    if torch.device(device).type == "cpu" and cfg.keep_freed_memory:
        keep_freed_memory()
    ctx = autocast_for(device, cfg.dtype)
    torch.manual_seed(cfg.seed)
    raw_model = build_model(cfg, meta["vocab_size"]).to(device)
    if world > 1:
        torch.manual_seed(cfg.seed + rank)  # the same weights everywhere, but each process its own dropout masks
    optimizer = raw_model.configure_optimizers(cfg.weight_decay, cfg.lr, (cfg.beta1, cfg.beta2), cfg.decay_all,
                                               torch.device(device).type)
    step, epoch, batch_in_epoch, trained_before = 0, 0, 0, 0.0
    if ckpt is not None:
        raw_model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step, epoch, batch_in_epoch = ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]
        trained_before = ckpt.get("train_time_s", 0.0)  # absent from checkpoints written before it was kept
        torch.set_rng_state(ckpt["rng"][rank])
        if torch.device(device).type == "cuda" and ckpt.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(ckpt["cuda_rng"][rank])
    compiled = torch.compile(raw_model) if cfg.compile else raw_model
    model = DDP(compiled, device_ids=[torch.device(device).index] if device.startswith("cuda") else None) \
        if world > 1 else compiled

    # a step takes batch_size x grad_accum x world rows in one piece of the epoch's order, cut into as many
    # micro-batches; process r runs micro-batches r*grad_accum .. (r+1)*grad_accum - 1
    pieces = cfg.grad_accum * world
    step_rows = cfg.batch_size * pieces
    n_batches = train_chunks.num_batches(step_rows, min_last=pieces)
    total_steps = cfg.epochs * n_batches if cfg.max_steps <= 0 else min(cfg.max_steps, cfg.epochs * n_batches)
    flops = flops_per_token(raw_model, cfg.block_size)
    peak = peak_flops(cfg, device, getattr(ctx, "fast_dtype", torch.float32))
    records, metrics_path = [], out_dir / "metrics.jsonl"
    if master:
        out_dir.mkdir(parents=True, exist_ok=True)
        resumed = ckpt is not None and metrics_path.is_file()  # a checkpoint copied without its metrics resumes too
        records = [json.loads(line) for line in metrics_path.read_text().splitlines()] if resumed else []
        records = [r for r in records if r["step"] <= step]  # drop what a killed run logged after its checkpoint
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in records))
        n_params = sum(p.numel() for p in raw_model.parameters())
        dtype, why = pick_dtype(device, cfg.dtype)
        print(f"{cfg.model}: {n_params:,} parameters | {device}{f' x {world} processes' if world > 1 else ''}, "
              f"{dtype} ({why}) | "
              f"{'resuming at step ' + str(step) + ' | ' if ckpt else ''}{total_steps} steps in all", flush=True)
        print(f"data: {meta['train']['tokens']:,} train tokens, {meta['val']['tokens']:,} val tokens, split "
              f"{meta.get('split', 'as prepared before')} | {train_chunks.n_chunks:,} chunks of {cfg.block_size}, "
              f"{n_batches} steps/epoch | a step: {cfg.batch_size} x {cfg.grad_accum} grad-accum x {world} "
              f"process{'es' if world > 1 else ''} = {step_rows} sequences = {step_rows * cfg.block_size:,} tokens",
              flush=True)

    def log(record):
        records.append(record)
        with open(metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    last_save = time.time()

    def save():
        """Every process calls it (the RNG states of all are gathered); rank 0 writes."""
        nonlocal last_save
        rng = [torch.get_rng_state()]
        cuda_rng = [torch.cuda.get_rng_state()] if torch.device(device).type == "cuda" else None
        if world > 1:
            gathered = [None] * world
            dist.all_gather_object(gathered, (rng[0], None if cuda_rng is None else cuda_rng[0]))
            rng = [r for r, _ in gathered]
            cuda_rng = None if cuda_rng is None else [c for _, c in gathered]
        if master:
            save_checkpoint(out_dir / "ckpt.pt", {
                "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                "model_config": dataclasses.asdict(raw_model.config), "train_config": vars(cfg),
                "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "world_size": world, "rng": rng,
                "cuda_rng": cuda_rng, "train_time_s": trained_before + train_time})
        last_save = time.time()

    def val_record(kind):
        val_loss = evaluate(compiled, val_chunks, cfg.batch_size, device, ctx, cfg.eval_batches)
        # train_time_s: seconds spent in training steps so far, over resumes, evaluation excluded (for comparing
        # models at equal wall-clock time)
        return {"kind": kind, "step": step, "epoch": epoch + 1, "val_loss": val_loss,
                "val_ppl": math.exp(min(val_loss, 700)),
                "val_bpb": bits_per_byte(val_loss, meta["val"]["tokens"], meta["val"]["bytes"]),
                "train_time_s": trained_before + train_time}

    def sync():
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()

    model.train()
    first_step, train_time, stopped = step, 0.0, None
    while epoch < cfg.epochs and step < total_steps and stopped is None:
        order = train_chunks.order(cfg.seed, epoch)
        loss_sum, loss_count, tokens = torch.zeros((), device=device), 0, 0
        sync()
        t_epoch = t_log = time.time()
        tokens_at_log = 0
        for x, y in train_chunks.batches(step_rows, order, start=batch_in_epoch, min_last=pieces):
            t_step = time.time()
            lr = lr_at(step, cfg, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            mine = list(zip(x.tensor_split(pieces), y.tensor_split(pieces)))[rank * cfg.grad_accum:
                                                                              (rank + 1) * cfg.grad_accum]
            step_loss = torch.zeros((), device=device)
            for i, (xm, ym) in enumerate(mine):
                # micro-batches may differ by a row: weigh each one's mean loss by its share of the step's rows,
                # times world since DDP averages the processes' gradients; the total is the step's mean loss
                weight = xm.size(0) / x.size(0) * world
                last = i == len(mine) - 1  # DDP averages the gradients once, after the last micro-batch
                with ctx, (model.no_sync() if world > 1 and not last else nullcontext()):
                    _, loss = model(xm.to(device, non_blocking=True), ym.to(device, non_blocking=True))
                    (loss * weight).backward()
                step_loss += loss.detach().float() * xm.size(0) / sum(m[0].size(0) for m in mine)
            norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip) if cfg.grad_clip > 0 \
                else None
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step, batch_in_epoch = step + 1, batch_in_epoch + 1
            loss_sum += step_loss
            loss_count += 1
            tokens += x.numel()
            save_due = master and cfg.save_every_min > 0 and time.time() - last_save >= 60 * cfg.save_every_min
            stop_due = stop.received is not None
            if world > 1:  # every process must stop, or save, at the same step
                flags = torch.tensor([float(stop_due), float(save_due)], device=device)
                dist.all_reduce(flags, op=dist.ReduceOp.MAX)
                stop_due, save_due = bool(flags[0]), bool(flags[1])
            train_time += time.time() - t_step
            on_schedule = step % cfg.log_every == 0 or batch_in_epoch == n_batches or step == 1
            if master and (on_schedule or step == first_step + 1):  # a resumed run also shows its first step
                loss_value = step_loss.item()  # the only host sync of a training step, and only at log steps
                sync()
                now = time.time()
                tok_s = (tokens - tokens_at_log) / max(now - t_log, 1e-9)
                t_log, tokens_at_log = now, tokens
                eta = (total_steps - step) * train_time / (step - first_step)
                mfu = None if peak is None else flops * tok_s / peak
                print(f"epoch {epoch + 1}/{cfg.epochs} step {batch_in_epoch}/{n_batches} ({step}/{total_steps}) | "
                      f"loss {loss_value:.4f} | lr {lr:.2e} | {tok_s:,.0f} tok/s"
                      f"{'' if mfu is None else f' | MFU {mfu:.1%}'} | ETA {duration(eta)}", flush=True)
                if on_schedule:  # so that metrics.jsonl holds the records of an uninterrupted run
                    log({"kind": "step", "step": step, "epoch": epoch + 1, "loss": loss_value, "lr": lr,
                         "grad_norm": None if norm is None else norm.item(), "tokens_per_s": tok_s, "mfu": mfu,
                         "eta_s": eta})
            if master and cfg.eval_every and step % cfg.eval_every == 0 and batch_in_epoch < n_batches:
                log(val_record("eval"))
                print(f"  val loss {records[-1]['val_loss']:.4f}", flush=True)
            if stop_due:
                stopped = signal.Signals(stop.received or signal.SIGTERM).name  # another process's, if not ours
                break
            if save_due or (cfg.save_every and step % cfg.save_every == 0):
                save()
            if step >= total_steps:
                break
        if stopped is not None:
            save()
            if master:
                log({"kind": "stopped", "step": step, "epoch": epoch + 1, "signal": stopped})
                print(f"stopped by {stopped} after step {step}; checkpoint written. Continue with: python train.py "
                      f"--resume --out-dir {out_dir}", flush=True)
            break
        sync()
        epoch_time = time.time() - t_epoch
        finished = batch_in_epoch == n_batches  # else --max-steps stopped it inside the epoch
        if master:
            record = val_record("epoch" if finished else "end")
            record.update(train_loss=(loss_sum / max(loss_count, 1)).item(), epoch_time_s=epoch_time,
                          tokens_per_s=tokens / max(epoch_time, 1e-9))
            log(record)
            print(f"{'epoch' if finished else 'stopped in epoch'} {epoch + 1}: train loss {record['train_loss']:.4f} "
                  f"| val loss {record['val_loss']:.4f} | val ppl {record['val_ppl']:.2f} | val bpb "
                  f"{record['val_bpb']:.4f} | {epoch_time:.1f} s | {record['tokens_per_s']:,.0f} tok/s", flush=True)
        if finished:
            epoch, batch_in_epoch = epoch + 1, 0
        save()
        if master:
            plot_losses(out_dir, records)
    if master and stopped is None:
        save_weights(out_dir / "model.safetensors", raw_model, vars(cfg))  # the finished model, to share
    return records


def changed_flags(saved, cfg, names, may_change=RESUME_MAY_CHANGE):
    """Those of names (train_config keys) whose value in cfg differs from the saved run's, leaving out the flags
    that a resumed run may change."""
    return [k for k in names if k not in may_change and saved.get(k) != getattr(cfg, k, None)]


def main(argv=None):
    cfg = parse_args(argv)
    try:
        records = train(cfg)
    except (DataError, ConfigError) as e:  # the user's to fix; anything else is a bug: its traceback shows
        sys.exit(f"error: {e}")
    if records and records[-1]["kind"] == "stopped":
        sys.exit(128 + signal.Signals[records[-1]["signal"]])  # as the shell reports a process the signal ended


if __name__ == "__main__":
    main()
