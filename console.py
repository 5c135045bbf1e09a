"""
What train.py prints while it trains: the run's header, a line per logged step with its speed, the end of each
epoch, a stop.
"""

import time

import torch

from hardware import pick_dtype


def duration(seconds):
    """3725 -> '1h02m', 125 -> '2m05s', 7 -> '7s'."""
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def print_header(cfg, meta, model, device, world, ckpt, at, total_steps, train_chunks, n_batches, step_rows):
    n_params = sum(p.numel() for p in model.parameters())
    dtype, why = pick_dtype(device, cfg.dtype)
    print(f"{cfg.model}: {n_params:,} parameters | {device}{f' x {world} processes' if world > 1 else ''}, "
          f"{dtype} ({why}) | {'resuming at step ' + str(at.step) + ' | ' if ckpt else ''}{total_steps} steps in all",
          flush=True)
    print(f"data: {meta['train']['tokens']:,} train tokens, {meta['val']['tokens']:,} val tokens, split "
          f"{meta.get('split', 'as prepared before')} | {train_chunks.n_chunks:,} chunks of {cfg.block_size}, "
          f"{n_batches} steps/epoch | a step: {cfg.batch_size} x {cfg.grad_accum} grad-accum x {world} "
          f"process{'es' if world > 1 else ''} = {step_rows} sequences = {step_rows * cfg.block_size:,} tokens",
          flush=True)


def print_step(r, cfg, n_batches, at, total_steps):
    mfu = "" if r["mfu"] is None else f" | MFU {r['mfu']:.1%}"
    print(f"epoch {r['epoch']}/{cfg.epochs} step {at.batch_in_epoch}/{n_batches} ({r['step']}/{total_steps}) | "
          f"loss {r['loss']:.4f} | lr {r['lr']:.2e} | {r['tokens_per_s']:,.0f} tok/s{mfu} | ETA "
          f"{duration(r['eta_s'])}", flush=True)


def print_stop(signal_name, at, out_dir):
    print(f"stopped by {signal_name} after step {at.step}; checkpoint written. Continue with: python train.py "
          f"--resume --out-dir {out_dir}", flush=True)


def print_epoch(r, finished):
    print(f"{'epoch' if finished else 'stopped in epoch'} {r['epoch']}: train loss {r['train_loss']:.4f} | val loss "
          f"{r['val_loss']:.4f} | val ppl {r['val_ppl']:.2f} | val bpb {r['val_bpb']:.4f} | "
          f"{r['epoch_time_s']:.1f} s | {r['tokens_per_s']:,.0f} tok/s", flush=True)


class Speed:
    """Tokens per second between two log lines."""

    def __init__(self):
        self.tokens, self.time = 0, time.time()

    def read(self, tokens, device):
        """The rate since the last reading, given the tokens counted so far."""
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()  # the GPU's queued steps count where they end
        now = time.time()
        rate = (tokens - self.tokens) / max(now - self.time, 1e-9)
        self.tokens, self.time = tokens, now
        return rate
