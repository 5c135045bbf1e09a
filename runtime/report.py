"""What runs write and print for people to read: train.py's console lines (the run's header, a line per logged step
with its speed, the end of each epoch, a stop), tables (Markdown and CSV) and figures."""

import csv
import time
from pathlib import Path

import torch

from runtime.hardware import pick_dtype


def write_table(folder, name, rows, columns, title):
    """Print rows (dicts) as a Markdown table under title, and save it as name.md and name.csv in folder."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"| {' | '.join(columns)} |", f"|{'---|' * len(columns)}"]
    lines += [f"| {' | '.join(str(r.get(c, '')) for c in columns)} |" for r in rows]
    table = "\n".join(lines)
    (folder / f"{name}.md").write_text(f"{title}\n\n{table}\n")
    with open(folder / f"{name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    print(f"\n{title}\n\n{table}\n\n(written to {folder}/{name}.md, .csv)")


def new_figure(**kwargs):
    """A matplotlib Figure to save to a file. Made without pyplot, so the caller's backend (a notebook's inline
    plots, say) is left as it was, and the figure needs no closing."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def plot_losses(out_dir, records):
    """loss.png in out_dir: the training loss at each logged step and the validation loss at each evaluation."""
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
