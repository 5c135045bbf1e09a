"""
Train GAM, or one of its baselines, on a real corpus with the paper's recipe.

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
SIGTERM stops the run after its current step), model.safetensors when the run has finished, metrics.jsonl (one
JSON object per log line) and loss.png. The loop is run() below; what is not the loop lives in files named for it:
runtime/: models.py (any model by name), checkpoint.py (the run's files, the resume policy), distributed.py
(torchrun), stop_signals.py, hardware.py (device, dtype, allocator, MFU), report.py (what it prints, loss.png).
"""

import argparse
import dataclasses
import json
import math
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from data import STDLIB, DataError, TokenChunks, add_data_args, bits_per_byte, prepare_from_args
from gam import ConfigError
from runtime.checkpoint import Progress, append_metrics, restore, resume, save_run, save_weights, start_metrics
from runtime.distributed import any_process, barrier, close_distributed, init_distributed, rank_zero_first, wrap
from runtime.hardware import flops_per_token, peak_flops, set_up
from runtime.models import MEMORY_KINDS, MEMORY_READS, MODELS, RECOMPUTE, build_model
from runtime.report import Speed, plot_losses, print_epoch, print_header, print_step, print_stop
from runtime.stop_signals import StopSignals


def get_parser(add_help=True):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(), add_help=add_help, allow_abbrev=False,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default="tinystories", help=f"tinystories, wikitext2, {STDLIB} (this Python's "
                   "standard library), or a path to a text file")
    add_data_args(d)
    m = p.add_argument_group("model")
    m.add_argument("--model", choices=list(MODELS), default="gam", help="architecture")
    m.add_argument("--variant", default="gated", help="GAM variant, the paper's Table 3: gated (GAM), sum, local "
                   "or global; or local-gated (a control: the conv path under its own gate, no memory read)")
    m.add_argument("--memory", default="bank", choices=list(MEMORY_KINDS), help="GAM memory: bank (the paper), "
                   "or written by the sequence (extensions/context_memory.py; not in the paper): context, "
                   "context-norm (its read normalised per head), bank+context (the bank's read plus the written one)")
    m.add_argument("--chunk-size", type=int, default=64, help="GAM context memory: tokens per training chunk")
    m.add_argument("--attn", default="sdpa", help="Transformer attention: sdpa or naive (the paper's)")
    m.add_argument("--attn-window", type=int, default=0, help="Transformer: attend to the last N tokens only "
                   "(sliding window; 0: all earlier tokens)")
    m.add_argument("--positions", default="learned", choices=["learned", "rope", "none"], help="how the Transformer "
                   "or Mamba sees positions: learned (a table added to the embeddings, the paper's), rope (the "
                   "Transformer: rotary, on queries and keys) or none (Mamba: its recurrence alone, as mamba_ssm)")
    m.add_argument("--scan", default="chunked", help="Mamba scan: chunked, compiled (each chunk's forward and "
                   "backward by a torch.compile'd loop, extensions/mamba_scan.py; RESULTS uses --scan-chunk 32) or sequential "
                   "(the reference)")
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
                   help="GAM: what backward reruns instead of storing (extensions/recompute.py; same values, less "
                        "memory)")
    m.add_argument("--memory-read", default="formula", choices=list(MEMORY_READS),
                   help="GAM's memory read: formula (eq. 3 as gam.py writes it) or fused (the same sum by one kernel, "
                        "extensions/fused_read.py: 4%% less memory in a block at T 4,096, no faster on a CPU; "
                        "RESULTS.md)")
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


def model_of(cfg, vocab_size):
    """The model named by cfg.model, from the flags its config class has."""
    names = {f.name for f in dataclasses.fields(MODELS[cfg.model])}
    return build_model(cfg.model, **{k: v for k, v in vars(cfg).items() if k in names}, vocab_size=vocab_size)


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


def steps_of(cfg, chunks, world):
    """A step takes batch_size x grad_accum x world rows of the epoch's order, in grad_accum x world pieces. Returns
    the pieces, the rows, the steps of an epoch and the steps in all (--max-steps may end the run inside one)."""
    pieces = cfg.grad_accum * world
    rows = cfg.batch_size * pieces
    n_batches = chunks.num_batches(rows, min_last=pieces)
    total = cfg.epochs * n_batches
    return pieces, rows, n_batches, min(cfg.max_steps, total) if cfg.max_steps > 0 else total


def train(cfg, data=None):
    """Train as cfg (the parsed flags) says: alone, or as one process of several under torchrun (DDP). Returns the
    metric records it also wrote to metrics.jsonl; the last has kind "stopped" if SIGINT or SIGTERM ended it.
    data: (meta, train split, val split) to train on instead of cfg.dataset (experiments.py recall's MQAR)."""
    rank, world, device = init_distributed(cfg.device)
    try:
        with StopSignals() as stop:
            records = run(cfg, rank, world, device, stop, data)
        barrier(world)  # all processes are done before any closes its connections (gloo aborts otherwise)
        return records
    finally:
        close_distributed(world)


def start_or_resume(cfg, world):
    """The flags to train with, and the checkpoint to continue from (None for a new run)."""
    cfg, ckpt = resume(cfg, world, get_parser().parse_args([])) if cfg.resume else (cfg, None)
    for name in ("batch_size", "grad_accum", "epochs", "block_size", "log_every"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    return cfg, ckpt


def load_data(cfg, rank, world):
    """The dataset's meta.json, and its train and val splits cut into chunks of block_size + 1 tokens."""
    with rank_zero_first(rank, world):  # one process tokenizes; the others find the files ready
        folder = prepare_from_args(cfg)
    meta = json.loads((folder / "meta.json").read_text())
    return meta, TokenChunks(folder / "train.bin", cfg.block_size), TokenChunks(folder / "val.bin", cfg.block_size)


def model_and_optimizer(cfg, vocab_size, device, rank, world, ckpt):
    """The model (the same weights in every process) and AdamW, both as the checkpoint left them if there is one."""
    torch.manual_seed(cfg.seed)
    model = model_of(cfg, vocab_size).to(device)
    if world > 1:
        torch.manual_seed(cfg.seed + rank)  # each process its own dropout masks
    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.lr, (cfg.beta1, cfg.beta2), cfg.decay_all,
                                           torch.device(device).type)
    if ckpt is not None:
        restore(ckpt, model, optimizer, rank, device)
    return model, optimizer


def train_step(model, optimizer, x, y, cfg, rank, world, ctx, device):
    """One optimizer step on the step's rows x, y (every process's): this process's grad_accum micro-batches
    forward and backward, then clip and AdamW. Returns the step's mean loss (on the device) and the gradient norm."""
    pieces = cfg.grad_accum * world  # micro-batches of all processes; process r runs r*grad_accum .. (r+1)*grad_accum-1
    mine = list(zip(x.tensor_split(pieces), y.tensor_split(pieces)))[rank * cfg.grad_accum:
                                                                      (rank + 1) * cfg.grad_accum]
    step_loss = torch.zeros((), device=device)
    for i, (xm, ym) in enumerate(mine):
        # micro-batches may differ by a row: weigh each one's mean loss by its share of the step's rows, times
        # world since DDP averages the processes' gradients; the total is the step's mean loss
        weight = xm.size(0) / x.size(0) * world
        last = i == len(mine) - 1  # DDP averages the gradients once, after the last micro-batch
        with ctx, (model.no_sync() if world > 1 and not last else nullcontext()):
            _, loss = model(xm.to(device, non_blocking=True), ym.to(device, non_blocking=True))
            (loss * weight).backward()
        step_loss += loss.detach().float() * xm.size(0) / sum(m[0].size(0) for m in mine)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip) if cfg.grad_clip > 0 else None
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return step_loss, norm


def log(records, out_dir, record):
    records.append(record)
    append_metrics(out_dir, record)


def step_record(at, step_loss, lr, norm, tok_s, mfu, eta):
    return {"kind": "step", "step": at.step, "epoch": at.epoch + 1, "loss": step_loss.item(), "lr": lr,
            "grad_norm": None if norm is None else norm.item(), "tokens_per_s": tok_s, "mfu": mfu, "eta_s": eta}


def val_record(kind, model, val_chunks, cfg, meta, at, device, ctx):
    val_loss = evaluate(model, val_chunks, cfg.batch_size, device, ctx, cfg.eval_batches)
    return {"kind": kind, "step": at.step, "epoch": at.epoch + 1, "val_loss": val_loss,
            "val_ppl": math.exp(min(val_loss, 700)),
            "val_bpb": bits_per_byte(val_loss, meta["val"]["tokens"], meta["val"]["bytes"]),
            "train_time_s": at.train_time_s}


def sync(device):
    """Wait for the GPU, so that a clock read after it times the work queued before."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def run(cfg, rank, world, device, stop, data=None):
    """train()'s loop, for process `rank` of `world` on `device`; `stop` tells whether a signal came."""
    # ---- set up: the flags (a resumed run's own), the data, the model and optimizer, where the run stands
    cfg, ckpt = start_or_resume(cfg, world)
    out_dir, master = Path(cfg.out_dir), rank == 0  # the master process logs, evaluates and writes files
    meta, train_chunks, val_chunks = data or load_data(cfg, rank, world)
    ctx = set_up(device, cfg.dtype, cfg.keep_freed_memory)  # the autocast context; the allocator, compile settings
    raw_model, optimizer = model_and_optimizer(cfg, meta["vocab_size"], device, rank, world, ckpt)
    t0 = time.time()
    compiled = torch.compile(raw_model) if cfg.compile else raw_model
    model = wrap(compiled, device, world)
    at = Progress.of(ckpt)
    pieces, step_rows, n_batches, total_steps = steps_of(cfg, train_chunks, world)
    flops = flops_per_token(raw_model, cfg.block_size)
    peak = peak_flops(cfg.peak_tflops, device, getattr(ctx, "fast_dtype", torch.float32))
    records = []
    if master:
        out_dir.mkdir(parents=True, exist_ok=True)
        records = start_metrics(out_dir, None if ckpt is None else at.step)
        print_header(cfg, meta, raw_model, device, world, ckpt, at, total_steps, train_chunks, n_batches, step_rows)

    model.train()
    first_step, time_before, last_save, stopped = at.step, at.train_time_s, time.time(), None
    while at.epoch < cfg.epochs and at.step < total_steps and stopped is None:
        order = train_chunks.order(cfg.seed, at.epoch)
        loss_sum, loss_count, tokens = torch.zeros((), device=device), 0, 0
        sync(device)
        t_epoch, speed = time.time(), Speed()
        for x, y in train_chunks.batches(step_rows, order, start=at.batch_in_epoch, min_last=pieces):
            # ---- the step
            t_step = time.time()
            lr = lr_at(at.step, cfg, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_loss, norm = train_step(model, optimizer, x, y, cfg, rank, world, ctx, device)
            at.step, at.batch_in_epoch = at.step + 1, at.batch_in_epoch + 1
            loss_sum, loss_count, tokens = loss_sum + step_loss, loss_count + 1, tokens + x.numel()
            save_due = master and cfg.save_every_min > 0 and time.time() - last_save >= 60 * cfg.save_every_min
            stop_due, save_due = any_process([stop.received is not None, save_due], device, world)
            at.train_time_s += time.time() - t_step
            # ---- once in a while: log, evaluate, save
            if master and cfg.compile and at.step == first_step + 1:
                print(f"first step, torch.compile included: {time.time() - t0:.1f} s", flush=True)
            on_schedule = at.step % cfg.log_every == 0 or at.batch_in_epoch == n_batches or at.step == 1
            if master and (on_schedule or at.step == first_step + 1):  # a resumed run also shows its first step
                tok_s = speed.read(tokens, device)
                eta = (total_steps - at.step) * (at.train_time_s - time_before) / (at.step - first_step)
                record = step_record(at, step_loss, lr, norm, tok_s, None if peak is None else flops * tok_s / peak,
                                     eta)
                print_step(record, cfg, n_batches, at, total_steps)
                if on_schedule:  # so that metrics.jsonl holds the records of an uninterrupted run
                    log(records, out_dir, record)
            if master and cfg.eval_every and at.step % cfg.eval_every == 0 and at.batch_in_epoch < n_batches:
                log(records, out_dir, val_record("eval", compiled, val_chunks, cfg, meta, at, device, ctx))
                print(f"  val loss {records[-1]['val_loss']:.4f}", flush=True)
            if stop_due:
                stopped = signal.Signals(stop.received or signal.SIGTERM).name  # another process's, if not ours
                break
            if save_due or (cfg.save_every and at.step % cfg.save_every == 0):
                save_run(out_dir, raw_model, optimizer, cfg, at, device, rank, world)
                last_save = time.time()
            if at.step >= total_steps:
                break
        # ---- stop: on a signal, save and leave; at the end of an epoch (or of --max-steps), evaluate and save
        if stopped is not None:
            save_run(out_dir, raw_model, optimizer, cfg, at, device, rank, world)
            if master:
                log(records, out_dir, {"kind": "stopped", "step": at.step, "epoch": at.epoch + 1, "signal": stopped})
                print_stop(stopped, at, out_dir)
            break
        sync(device)
        epoch_time = time.time() - t_epoch
        finished = at.batch_in_epoch == n_batches  # else --max-steps stopped it inside the epoch
        if master:
            record = val_record("epoch" if finished else "end", compiled, val_chunks, cfg, meta, at, device, ctx)
            record.update(train_loss=(loss_sum / max(loss_count, 1)).item(), epoch_time_s=epoch_time,
                          tokens_per_s=tokens / max(epoch_time, 1e-9))
            log(records, out_dir, record)
            print_epoch(record, finished)
        if finished:
            at.epoch, at.batch_in_epoch = at.epoch + 1, 0
        save_run(out_dir, raw_model, optimizer, cfg, at, device, rank, world)
        last_save = time.time()
        if master:
            plot_losses(out_dir, records)
    if master and stopped is None:
        save_weights(out_dir / "model.safetensors", raw_model, vars(cfg))  # the finished model, to share
    return records


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
