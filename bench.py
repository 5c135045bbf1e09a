"""
Benchmarks that make the paper's claims checkable, each in one command. Every ratio is measured side by side in one
run on one machine; none of them is a test (machines are noisy).

    python bench.py scale     # Table 2: one block of each model, time and memory vs sequence length
    python bench.py compare   # Table 1: GAM vs Transformer vs Mamba, same data, budget and seeds, + a bigram floor
    python bench.py ablate    # Table 3: the four GAM variants, same protocol
    python bench.py recall    # multi-query associative recall: accuracy vs key-query gap and number of pairs
    python bench.py speed     # gam.py vs the official code: block, model, whole training step; MFU; Mamba's scans
    python bench.py gpu       # on a GPU: bf16 and compile loss parity, tokens/s, MFU; Table 2 up to T 8192
    python bench.py generate  # per-token generation time vs context length, with and without the cache
    python bench.py curves out-a out-b   # overlay the loss curves of train.py runs
    python bench.py position out-a out-b # validation loss by token position: how much context each model uses

compare and ablate accept every train.py flag (model size, data, budget); results go to --bench-dir/<command>/
as a Markdown table (also printed), a CSV and PNG plots.
"""

import argparse
import csv
import gc
import json
import math
import multiprocessing
import os
import re
import statistics
import sys
import time
from itertools import cycle, islice
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn as nn

import checkpoint
import hardware
import train
from baselines import Mamba, MambaBlock, MambaConfig, Transformer, TransformerBlock, TransformerConfig
from data import DataError, TokenChunks, bits_per_byte, mqar, prepare_from_args
from gam import GAM, VARIANTS, ConfigError, GAMBlock, GAMConfig
from generation import new_cache
from plots import new_figure
from recompute import RecomputedGAMBlock


# ------------------------------------------------------------------------------------------------ helpers

def write_outputs(folder, name, rows, columns, title):
    """Print rows as a Markdown table and save it as name.md and name.csv in folder."""
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


def describe(device):
    return torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"


def proc_status(key, path="/proc/self/status"):
    """A value in kB from /proc/self/status (Linux), or None elsewhere."""
    try:
        return int(re.search(rf"{key}:\s+(\d+)", Path(path).read_text()).group(1))
    except (OSError, AttributeError):
        return None


def proc_meminfo(key):
    return proc_status(key, "/proc/meminfo")


def timed(fn, device, warmup, repeats):
    """Median wall time of fn() over repeats, after warmup calls; synchronised on CUDA."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def peak_memory_mb(spec, device, dtype="auto"):
    """Memory that one training step of `spec` (see make_step) needs above what its inputs and weights hold,
    in a steady state: measured over the second step, after one warm-up step. CUDA: max_memory_allocated, the
    allocator's view. CPU: the growth of the resident-set high-water mark (Linux VmHWM) in a fresh process whose
    glibc returns every block over 128 KiB to the system when it is freed (MALLOC_MMAP_THRESHOLD_), so the
    resident set follows what is live; None where /proc is missing, "OOM" where the process was killed."""
    if device.type == "cuda":
        step = make_step(spec, device, dtype)
        step()
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    if proc_status("VmHWM") is None:
        return None
    # read by glibc when the child starts: blocks over 128 KiB are mapped on their own and unmapped at free, and
    # nothing is kept on top of the heap, whatever the caller's environment asks for (see README: Speed)
    malloc_env = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072", "MALLOC_TOP_PAD_": "0"}
    exitcode, mb = in_fresh_process(_cpu_peak_mb, (spec,), malloc_env)
    if exitcode == 0:
        return mb
    return "OOM" if exitcode == -9 else "error"  # the kernel's OOM killer sends SIGKILL


def _cpu_peak_mb(spec):
    step = make_step(spec, torch.device("cpu"))
    step()  # first-call costs (library buffers, thread pools) are not the step's
    gc.collect()
    base = proc_status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
    step()
    return (proc_status("VmHWM") - base) / 1024


def in_fresh_process(fn, args, env=None):
    """fn(*args) in a new Python process (spawned) with this one's thread count and the variables in env set for
    it alone, since glibc reads its MALLOC_ settings once, at start. Returns (exit code, fn's result or None)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_run_in_child, args=(fn, args, torch.get_num_threads(), queue))
    env = env or {}
    saved_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        child.start()
    finally:
        for k, v in saved_env.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v
    child.join()
    return child.exitcode, queue.get() if child.exitcode == 0 else None


def _run_in_child(fn, args, threads, queue):
    torch.set_num_threads(threads)
    queue.put(fn(*args))


MEMORY_METHOD = {"cuda": "CUDA max_memory_allocated above the inputs, second step",
                 "cpu": "growth of the peak resident set (Linux VmHWM) over the second step in a fresh process, "
                        "freed blocks returned to the system"}


def make_step(spec, device, dtype="auto"):
    """A training step (forward, backward, in train mode) of what spec names: ("block", kind, B, T, C, n_head)
    for one block on random input, with loss = output.sum() as the paper's scale.py; ("model", kind, B, T)
    for a whole paper-size model on random tokens."""
    torch.manual_seed(0)
    ctx = hardware.autocast_for(str(device), dtype)
    if spec[0] == "block":
        _, kind, B, T, C, n_head = spec
        net = make_block(kind, C, n_head).to(device).train()
        x = torch.randn(B, T, C, device=device, requires_grad=True)
        inputs = (x,)
    else:
        _, kind, B, T = spec
        net = make_model(kind, T).to(device).train()
        idx = torch.randint(0, net.config.vocab_size, (B, T), device=device)
        inputs = (idx, idx)

    def step():
        with ctx:
            out = net(*inputs)
        (out.float().sum() if spec[0] == "block" else out[1]).backward()
        net.zero_grad(set_to_none=True)
        if spec[0] == "block":
            x.grad = None

    return step


# ------------------------------------------------------------------------------------------------ scale

class PaperGAMBlock(nn.Module):
    """The official code's GAMBlock (rishiraj/gam, gam_model.py), transcribed as written: conv padded on both
    sides then sliced, explicit softmax(h M^T) M, gates from LN1(x). The baseline that `speed` measures gam.py
    against; kept here, not in gam.py."""

    def __init__(self, C, S=512, K=3, dropout=0.1):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.local_conv = nn.Conv1d(C, C, K, padding=K - 1, groups=C)
        self.memory_bank = nn.Parameter(torch.randn(S, C))
        nn.init.xavier_uniform_(self.memory_bank)
        self.gate = nn.Linear(C, 2 * C)
        self.ffn = nn.Sequential(nn.Linear(C, 4 * C), nn.GELU(), nn.Linear(4 * C, C), nn.Dropout(dropout))

    def forward(self, x, state=None):  # state: the skeleton's cache slot, unused (no cached generation)
        T = x.size(1)
        h = self.ln1(x)
        local = self.local_conv(h.transpose(1, 2))[..., :T].transpose(1, 2)
        weights = torch.softmax(h @ self.memory_bank.T, dim=-1)
        glob = weights @ self.memory_bank
        g_local, g_global = self.gate(h).chunk(2, dim=-1)
        x = x + torch.sigmoid(g_local) * local + torch.sigmoid(g_global) * glob
        return x + self.ffn(self.ln2(x))


def recompute_of(kind):
    """"gam-recompute-mixer" -> "mixer" (GAMConfig.recompute); "none" for any other kind."""
    return kind.removeprefix("gam-recompute-") if kind.startswith("gam-recompute-") else "none"


def make_model(kind, T, vocab_size=50257):
    """A paper-size model (6 layers, C 512) with T positions; "paper-gam" is GAM built from PaperGAMBlocks."""
    if kind in ("gam", "paper-gam", "gam-context") or kind.startswith("gam-recompute-"):
        model = GAM(GAMConfig(vocab_size=vocab_size, block_size=T, recompute=recompute_of(kind),
                              memory="context" if kind == "gam-context" else "bank"))
        if kind == "paper-gam":
            model.blocks = nn.ModuleList(PaperGAMBlock(512) for _ in range(6))
        return model
    if kind == "transformer":
        return Transformer(TransformerConfig(vocab_size=vocab_size, block_size=T))
    if kind == "mamba":
        return Mamba(MambaConfig(vocab_size=vocab_size, block_size=T))
    raise ConfigError(f"unknown model {kind!r}: use gam, gam-context, gam-recompute-{{gelu,mixer,ffn,both}}, "
                      "transformer or mamba")


def make_block(kind, C, n_head):
    if kind == "gam":
        return GAMBlock(GAMConfig(n_embd=C, dropout=0.1))
    if kind.startswith("gam-recompute-"):
        return RecomputedGAMBlock(GAMConfig(n_embd=C, dropout=0.1, recompute=recompute_of(kind)))
    if kind == "paper-gam":
        return PaperGAMBlock(C)
    if kind == "gam-context":
        return GAMBlock(GAMConfig(n_embd=C, dropout=0.1, memory="context", n_head=n_head))
    if kind in ("transformer", "transformer-naive"):
        attn = "naive" if kind.endswith("naive") else "sdpa"
        return TransformerBlock(TransformerConfig(n_embd=C, n_head=n_head, dropout=0.1, attn=attn))
    if kind == "mamba":
        return MambaBlock(MambaConfig(n_embd=C))
    if kind == "mamba-compiled":  # chunks of 32 steps, each by the compiled loop: compiled once, whatever T is
        return MambaBlock(MambaConfig(n_embd=C, scan="compiled", scan_chunk=32))
    raise ConfigError(f"unknown block {kind!r}: use gam, gam-context, gam-recompute-{{gelu,mixer,ffn,both}}, "
                      "transformer, transformer-naive, mamba or mamba-compiled")


def mamba_bytes(spec):
    """A rough upper bound on what a Mamba block's fwd + bwd holds: about 16 (B, T, E) fp32 tensors, and the scan
    levels of one chunk, 3 (B, L, E, N) tensors each (the chunked scan keeps no (B, T, E, N) tensor)."""
    _, _, B, T, C, _ = spec
    config = MambaConfig(n_embd=C)
    E, L = config.expand * C, config.scan_chunk
    return 4 * B * E * (16 * T + 3 * L * config.d_state * (math.ceil(math.log2(L)) + 1))


def measure(spec, device, args):
    """Time (median ms), throughput and peak memory of one training step of spec; the first call's time apart,
    as it includes torch.compile's work where the block compiles anything."""
    try:
        step = make_step(spec, device, args.dtype)
        first = timed(step, device, 0, 1)
        ms = 1000 * timed(step, device, max(args.warmup - 1, 0), args.repeats)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {"ms": "OOM", "peak_MB": "OOM", "tokens_per_s": "OOM", "first call (s)": "OOM"}
    mb = peak_memory_mb(spec, device, args.dtype)
    return {"ms": round(ms, 2), "peak_MB": round(mb, 1) if isinstance(mb, float) else mb or "",
            "tokens_per_s": round(spec[2] * spec[3] / (ms / 1000)), "first call (s)": round(first, 1)}


def fits(spec, device):
    """False for a CPU Mamba block too big for this machine (mamba_bytes), which the kernel would otherwise kill
    with the whole process."""
    return not (spec[1].startswith("mamba") and device.type == "cpu" and mamba_bytes(spec) > 0.5 * free_bytes())


def free_bytes():
    return (proc_meminfo("MemAvailable") or 8 * 2**20) * 1024


def scale(args):
    """One block of each model, forward + backward of output.sum() in train mode, as the paper's scale.py."""
    device = torch.device(hardware.pick_device(args.device))
    ctx = hardware.autocast_for(str(device), args.dtype)
    rows = []
    for kind in args.blocks.split(","):
        for T in [int(t) for t in args.lengths.split(",")]:
            spec = ("block", kind, args.batch_size, T, args.n_embd, args.n_head)
            row = {"block": kind, "T": T, "batch": args.batch_size, "C": args.n_embd}
            if not fits(spec, device):
                row["ms"] = row["peak_MB"] = row["tokens_per_s"] = row["first call (s)"] = "skipped (memory)"
            else:
                row.update(measure(spec, device, args))
            print(row, flush=True)
            rows.append(row)
    growth = []
    for kind in args.blocks.split(","):
        t = {r["T"]: r["ms"] for r in rows if r["block"] == kind and isinstance(r["ms"], float)}
        for T in sorted(t):
            if 8 * T in t:
                growth.append(f"{kind}: time({8 * T})/time({T}) = {t[8 * T] / t[T]:.1f}")
    gam_ms = {r["T"]: r["ms"] for r in rows if r["block"] == "gam" and isinstance(r["ms"], float)}
    for r in rows:  # each block's time against GAM's, measured in this run
        if r["block"] != "gam" and isinstance(r["ms"], float) and r["T"] in gam_ms:
            growth.append(f"{r['block']} / gam at T {r['T']}: {r['ms'] / gam_ms[r['T']]:.2f}x")
    device_name = describe(device)
    title = (f"Block scaling on {device_name}, {ctx.fast_dtype if hasattr(ctx, 'fast_dtype') else 'float32'}; "
             f"median of {args.repeats} fwd+bwd after {args.warmup} warm-up; memory: {MEMORY_METHOD[device.type]}. "
             "Linear growth gives time(8T)/time(T) = 8, quadratic 64.\n\n" + "\n".join(f"- {g}" for g in growth))
    out = Path(args.bench_dir, "scale")
    write_outputs(out, "scale", rows, ["block", "T", "batch", "C", "ms", "peak_MB", "tokens_per_s", "first call (s)"],
                  title)
    fig = new_figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    for kind in args.blocks.split(","):
        ok = [r for r in rows if r["block"] == kind and isinstance(r["ms"], float)]
        axes[0].plot([r["T"] for r in ok], [r["ms"] for r in ok], "o-", label=kind)
        mem = [r for r in ok if isinstance(r["peak_MB"], float)]
        axes[1].plot([r["T"] for r in mem], [r["peak_MB"] for r in mem], "o-", label=kind)
    for ax, label in zip(axes, ["time per fwd+bwd (ms)", "peak memory (MB)"]):
        ax.set(xscale="log", yscale="log", xlabel="sequence length T", ylabel=label)
        ax.legend()
    fig.suptitle(f"one block, batch {args.batch_size}, C {args.n_embd}, {device_name}")
    fig.tight_layout()
    fig.savefig(out / "scale.png", dpi=100)
    return rows


# ------------------------------------------------------------------------------------------------ compare / ablate

def bigram_model(train_tokens, vocab_size):
    """A count-based bigram model: p(w | v) = l c(v, w) / c(v) + (1 - l) p(w), with an add-one unigram p(w). l is
    chosen from a grid on the last 10% of train, then the counts are taken on all of train. Returns nll(prev, next)
    -> the cross-entropy (nats) of each next token given its previous one, and l."""
    def counts(tokens):
        pairs = np.unique(tokens[:-1].astype(np.int64) * vocab_size + tokens[1:], return_counts=True)
        return dict(zip(*pairs)), np.bincount(tokens[:-1], minlength=vocab_size)

    def unigram_of(tokens):
        u = np.bincount(tokens, minlength=vocab_size).astype(np.float64) + 1
        return u / u.sum()

    def nll_with(pair_counts, prev_counts, unigram, lam):
        def nll(prev_tokens, next_tokens):
            keys = prev_tokens.astype(np.int64) * vocab_size + next_tokens
            c = np.array([pair_counts.get(k, 0) for k in keys.ravel()], dtype=np.float64).reshape(keys.shape)
            prev = prev_counts[prev_tokens].astype(np.float64)
            p_bi = np.divide(c, prev, out=np.zeros_like(c), where=prev > 0)
            return -np.log(np.where(prev > 0, lam * p_bi + (1 - lam) * unigram[next_tokens], unigram[next_tokens]))
        return nll

    cut = int(len(train_tokens) * 0.9)
    fit, held = train_tokens[:cut], train_tokens[cut:]
    pc, prev = counts(fit)
    uni = unigram_of(fit)
    lam = min((nll_with(pc, prev, uni, lam)(held[:-1], held[1:]).mean(), lam)
              for lam in np.linspace(0.05, 0.95, 19))[1]
    pc, prev = counts(train_tokens)
    return nll_with(pc, prev, unigram_of(train_tokens), lam), lam


def bigram_loss(train_tokens, val_tokens, vocab_size):
    """Cross-entropy (nats/token) on val of bigram_model, and its l. A floor: any model that sees context should
    beat it."""
    nll, lam = bigram_model(train_tokens, vocab_size)
    return float(nll(val_tokens[:-1], val_tokens[1:]).mean()), lam


# flags that train.py --resume may change but that change what a table measures: a run folder trained with other
# values of them is refused, not read back under this table's title (nor scored beside a bigram floor of other
# validation tokens)
RUN_BUDGET = {"epochs", "max_steps", "eval_every", "eval_batches"}


def train_runs(args, setups, name):
    """Train each setup (a label and a dict of flag overrides) for every seed through train.py's own loop; summarise."""
    out = Path(args.bench_dir, name)
    folder = prepare_from_args(args)
    meta = json.loads((folder / "meta.json").read_text())
    # a run is judged by train.py's flags only: bench.py's own (--command, --models, --seeds) do not define it, so
    # compare's GAM runs can serve as ablate's gated ones
    flags = {a.dest for a in train.get_parser()._actions}
    results = []
    for label, overrides in setups:
        for seed in range(args.seed, args.seed + args.seeds):
            run_dir = out / f"{label}-seed{seed}"
            # a folder with a checkpoint is resumed: a finished run is only read back, a stopped one continues, and
            # runs can be trained apart (e.g. side by side with train.py --out-dir) and summarised here
            cfg = argparse.Namespace(**{**vars(args), **overrides, "seed": seed,
                                        "resume": (run_dir / "ckpt.pt").exists(), "out_dir": str(run_dir),
                                        "explicit": []})
            if cfg.resume:  # a run is read back only if it was trained, and evaluated, as this table asks
                saved = checkpoint.load_checkpoint(run_dir)["train_config"]
                changed = checkpoint.changed_flags(saved, cfg, [k for k in saved if k in flags and k != "resume"],
                                                   checkpoint.RESUME_MAY_CHANGE - RUN_BUDGET)
                if changed:
                    k = changed[0]
                    raise ConfigError(f"{run_dir} holds a run with --{k.replace('_', '-')} {saved[k]}, not "
                                      f"{getattr(cfg, k, None)}: pass another --bench-dir, or delete the folder")
            print(f"\n== {label}, seed {seed}{' (resumed)' if cfg.resume else ''}", flush=True)
            records = train.train(cfg)
            n_params = sum(p.numel() for p in train.build_model(cfg, meta["vocab_size"]).parameters())
            evals = [x for x in records if "val_loss" in x]
            results.append({"label": label, "seed": seed, "params": n_params, "evals": evals,
                            "finals": [x for x in evals if x["kind"] in ("epoch", "end")]})
    # equal wall-clock time: t_eq is the training time (evaluation excluded) of the model that finished first,
    # the longest of its seeds; every run is scored by the best val loss it had reached by then
    t_eq = fastest = None
    if all("train_time_s" in x for r in results for x in r["evals"]):  # absent from runs trained before it was kept
        total = {label: statistics.mean(r["evals"][-1]["train_time_s"] for r in results if r["label"] == label)
                 for label, _ in setups}
        fastest = min(total, key=total.get)
        t_eq = max(r["evals"][-1]["train_time_s"] for r in results if r["label"] == fastest)

    def stat(values, digits):
        if any(math.isnan(v) for v in values):
            return "-"
        mean = statistics.mean(values)
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{mean:.{digits}f} ± {sd:.{digits}f}"

    def best_by(ev, t):
        reached = [x["val_loss"] for x in ev if x["train_time_s"] <= t]
        return math.exp(min(reached)) if reached else math.nan

    rows = []
    for label, _ in setups:
        runs = [r for r in results if r["label"] == label]
        last = [r["finals"] for r in runs]
        rows.append({"model": label, "params": f"{runs[0]['params']:,}", "seeds": len(runs),
                     "time/epoch (s)": stat([statistics.mean(x["epoch_time_s"] for x in f) for f in last], 1),
                     "tokens/s": stat([statistics.mean(x["tokens_per_s"] for x in f) for f in last], 0),
                     "final val loss": stat([f[-1]["val_loss"] for f in last], 4),
                     "final val ppl": stat([f[-1]["val_ppl"] for f in last], 2),
                     "best val ppl": stat([min(x["val_ppl"] for x in f) for f in last], 2),
                     "final val bpb": stat([f[-1]["val_bpb"] for f in last], 4),
                     "val ppl at equal time": "-" if t_eq is None else
                     stat([best_by(r["evals"], t_eq) for r in runs], 2)})
    train_tokens = np.fromfile(folder / "train.bin", dtype=np.uint16)
    val_tokens = np.fromfile(folder / "val.bin", dtype=np.uint16)
    if args.eval_batches:  # the models were scored on the first eval_batches batches only: score the same tokens
        val_tokens = val_tokens[: args.eval_batches * args.batch_size * (args.block_size + 1)]
    b_loss, lam = bigram_loss(train_tokens, val_tokens, meta["vocab_size"])
    rows.append({"model": f"bigram floor (counts, l={lam:.2f})", "params": "-", "seeds": "-",
                 "final val loss": f"{b_loss:.4f}", "final val ppl": f"{math.exp(b_loss):.2f}",
                 "best val ppl": "-", "final val bpb":
                 f"{bits_per_byte(b_loss, meta['val']['tokens'], meta['val']['bytes']):.4f}"})
    size = (f"{args.n_layer} layers, C {args.n_embd}, S {args.n_slots}, T {args.block_size}, batch {args.batch_size}, "
            f"{args.epochs} epoch(s)" + (f", at most {args.max_steps} steps" if args.max_steps else ""))
    device = hardware.pick_device(args.device)
    title = (f"{name} on {args.dataset} ({meta['train']['tokens']:,} train / {meta['val']['tokens']:,} val tokens"
             f"{', val = first ' + str(args.eval_batches) + ' batches' if args.eval_batches else ''}); {size}; "
             f"{device}; mean ± std over seeds {args.seed}..{args.seed + args.seeds - 1}"
             + ("" if t_eq is None else f"; equal time = {t_eq:.0f} s of training ({fastest}'s)"))
    columns = ["model", "params", "seeds", "time/epoch (s)", "tokens/s", "final val loss", "final val ppl",
               "best val ppl", "final val bpb", "val ppl at equal time"]
    write_outputs(out, name, rows, columns, title)
    # left: val loss by step (every model took the same steps); right: by training time, t_eq dotted
    fig = new_figure(figsize=(11, 4.2))
    by_step, by_time = fig.subplots(1, 2)
    for (label, _), color in zip(setups, cycle(matplotlib.rcParams["axes.prop_cycle"].by_key()["color"])):
        for r in results:
            if r["label"] == label:
                ev = r["evals"]
                first = r["seed"] == args.seed
                by_step.plot([x["step"] for x in ev], [x["val_loss"] for x in ev], "o-", ms=3, color=color,
                             alpha=0.7, label=label if first else None)
                if t_eq is not None:
                    by_time.plot([x["train_time_s"] for x in ev], [x["val_loss"] for x in ev], "o-", ms=3,
                                 color=color, alpha=0.7, label=label if first else None)
    for ax in (by_step, by_time):
        ax.axhline(b_loss, color="gray", ls="--", label="bigram floor")
        ax.set_ylabel("val loss (nats/token)")
    by_step.set(xlabel="step", title=f"{name}: {size}"[:70])
    by_step.legend(fontsize=8)
    if t_eq is not None:
        by_time.axvline(t_eq, color="gray", ls=":")
        by_time.set(xlabel="training time (s), evaluation excluded", title=f"dotted: equal time, {fastest}'s")
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=100)
    return rows


def model_flags(label):
    """Flags for a model label: a train.py --model name, gam-context (GAM with --memory context), mamba-compiled
    (Mamba with --scan compiled) or transformer-windowN (the Transformer with --attn-window N)."""
    if label == "gam-context":
        return {"model": "gam", "memory": "context"}
    if label == "mamba-compiled":
        return {"model": "mamba", "scan": "compiled", "scan_chunk": 32}
    window = re.fullmatch(r"transformer-window([1-9][0-9]*)", label)
    if window:
        return {"model": "transformer", "attn_window": int(window[1])}
    if label not in checkpoint.MODELS:
        raise ConfigError(f"unknown model {label!r}: use {', '.join(checkpoint.MODELS)}, gam-context, "
                          "mamba-compiled or transformer-windowN")
    return {"model": label}


def compare(args):
    return train_runs(args, [(m, model_flags(m)) for m in args.models.split(",")], "compare")


def ablate(args):
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"unknown variant {unknown[0]!r}: use {', '.join(VARIANTS)}")
    return train_runs(args, [(f"gam-{v}", {"model": "gam", "variant": v}) for v in variants], "ablate")


# ------------------------------------------------------------------------------------------------ recall

def recall(args):
    """Train each model on MQAR, then report test accuracy per (number of pairs, key-query gap) bucket."""
    device = torch.device(hardware.pick_device(args.device))
    pairs = [int(k) for k in args.pairs.split(",")]
    n_train = args.steps * args.batch_size
    train_sets = [mqar(n_train // len(pairs), args.seq_len, k, args.vocab_size, seed=args.seed + k, power_a=1.0)
                  for k in pairs]
    inputs, targets = (torch.cat([s[i] for s in train_sets]) for i in (0, 1))
    test_sets = {k: mqar(args.test_size, args.seq_len, k, args.vocab_size, seed=2**31 - 1 - k, power_a=1.0)
                 for k in pairs}  # test seeds far from the training seeds, as zoology does
    edges = [int(e) for e in args.gap_edges.split(",")]
    rows = []
    for kind in args.models.split(","):
        cfg = train.parse_args(["--n-layer", str(args.n_layer), "--n-embd", str(args.n_embd),
                                "--n-slots", str(args.n_embd), "--n-head", str(args.n_head), "--dropout", "0",
                                "--block-size", str(args.seq_len), "--expand", "2",
                                "--pos-init-std", str(args.pos_init_std)])
        vars(cfg).update(model_flags(kind))
        torch.manual_seed(args.seed)
        model = train.build_model(cfg, args.vocab_size).to(device)
        opt = model.configure_optimizers(0.1, args.lr, (0.9, 0.95), decay_all=False, device_type=device.type)
        order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(args.seed))
        t0 = time.time()
        for step in range(args.steps):
            batch = order[step * args.batch_size:(step + 1) * args.batch_size]
            for group in opt.param_groups:
                group["lr"] = args.lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
            _, loss = model(inputs[batch].to(device), targets[batch].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if step % max(1, args.steps // 5) == 0 or step == args.steps - 1:
                print(f"{kind} step {step} loss {loss.item():.3f} ({time.time() - t0:.0f} s)", flush=True)
        model.eval()
        row = {"model": kind, "params": f"{sum(p.numel() for p in model.parameters()):,}",
               "receptive field": model.receptive_field}
        with torch.no_grad():
            for k, (x, y, gap) in test_sets.items():
                logits, _ = model(x.to(device))
                correct = (logits.argmax(-1).cpu() == y)[y >= 0]
                g = gap[y >= 0]
                row[f"{k} pairs"] = f"{correct.float().mean():.3f}"
                for lo, hi in zip(edges[:-1], edges[1:]):
                    sel = (g >= lo) & (g < hi)
                    if k == max(pairs) and sel.any():
                        row[f"gap {lo}-{hi - 1}"] = f"{correct[sel].float().mean():.3f}"
        rows.append(row)
        print(row, flush=True)
    columns = list(dict.fromkeys(c for r in rows for c in r))
    chance = 1 / (args.vocab_size - args.vocab_size // 2)
    title = (f"MQAR accuracy on held-out sequences: T {args.seq_len}, vocab {args.vocab_size} (chance "
             f"{chance:.3f}), {args.n_layer} layers, C {args.n_embd}, positions N(0, {args.pos_init_std}), "
             f"{args.steps} steps of batch {args.batch_size}, "
             f"trained on {','.join(map(str, pairs))} pairs; gap columns: the {max(pairs)}-pair test set by "
             f"key-to-query distance; {device}")
    write_outputs(Path(args.bench_dir, "recall"), "recall", rows, columns, title)
    return rows


# ------------------------------------------------------------------------------------------------ speed

def matmul_peak(device, n=2048, repeats=5):
    """FLOP/s of a large fp32 matmul on this device: the 'peak' that MFU is measured against."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    return 2 * n**3 / timed(lambda: a @ b, device, 2, repeats)


def block_matmuls(B, T, C, S, device):
    """The matrix products of one GAM block's training step alone, on random operands: for each product (gate
    C -> 2C, memory scores C -> S and read S -> C, FFN C -> 4C -> C) the forward one and backward's two. Any
    implementation that keeps these products takes at least this long, so official time / this time bounds the
    speed-up that all the rest (elementwise work, memory traffic, the conv) can give."""
    N = B * T
    operands = [(torch.randn(N, i, device=device), torch.randn(o, i, device=device), torch.randn(N, o, device=device))
                for i, o in ((C, 2 * C), (C, S), (S, C), (C, 4 * C), (4 * C, C))]  # (input, weight, output grad)

    def step():
        for x, w, dy in operands:
            x @ w.T  # forward
            dy @ w  # input gradient
            dy.T @ x  # weight gradient
    return step


NAMES = {"paper-gam": "official code", "gam": "gam.py", **{f"gam-recompute-{r}": f"gam.py --recompute {r}"
                                                            for r in ("gelu", "mixer", "both")}}


def speed(args):
    """gam.py's block and model against the official code's, side by side; MFU of the three models; Mamba's scan."""
    device = torch.device(hardware.pick_device(args.device))
    rows = []
    for T in [int(t) for t in args.lengths.split(",")]:
        for what, kinds, B in (("block", ("paper-gam", "gam", "gam-recompute-gelu", "gam-recompute-mixer"),
                                args.batch_size),
                               ("model", ("paper-gam", "gam", "gam-recompute-gelu", "gam-recompute-mixer",
                                          "gam-recompute-both"),
                                args.model_batch_size)):
            results = {}
            for kind in kinds:
                spec = ("block", kind, B, T, 512, 8) if what == "block" else ("model", kind, B, T)
                results[kind] = measure(spec, device, args)
                rows.append({"what": f"{what}: {NAMES[kind]}", "T": T, "batch": B, **results[kind]})
                print(rows[-1], flush=True)
            ref = results["paper-gam"]
            for kind in kinds[1:]:
                ours = results[kind]
                ratio = {"what": f"{what}: {NAMES[kind]} / official", "T": T, "batch": B}
                if isinstance(ref["ms"], float) and isinstance(ours["ms"], float):
                    ratio["tokens_per_s"] = f"{ours['tokens_per_s'] / ref['tokens_per_s']:.2f}x"
                if isinstance(ref["peak_MB"], float) and isinstance(ours["peak_MB"], float):
                    ratio["peak_MB"] = f"{ours['peak_MB'] / ref['peak_MB']:.2f}x"
                rows.append(ratio)
            if what == "block":
                ms = 1000 * timed(block_matmuls(B, T, 512, 512, device), device, args.warmup, args.repeats)
                rows.append({"what": "block: its matmuls alone", "T": T, "batch": B, "ms": round(ms, 2),
                             "tokens_per_s": round(B * T / (ms / 1000))})
                rows.append({"what": "block: matmuls alone / official (the most any change elsewhere can give)",
                             "T": T, "batch": B, "tokens_per_s": f"{ref['ms'] / ms:.2f}x"
                             if isinstance(ref["ms"], float) else ""})
    peak = matmul_peak(device)
    mfu = []
    for kind in args.mfu_models.split(","):
        T = args.mfu_length
        spec = ("model", kind, args.model_batch_size, T)
        ms = 1000 * timed(make_step(spec, device, args.dtype), device, args.warmup, args.repeats)
        flops = hardware.flops_per_token(make_model(kind, T), T) * args.model_batch_size * T
        mfu.append({"what": f"MFU {kind} (paper size, T {T})", "T": T, "batch": args.model_batch_size,
                    "ms": round(ms, 1), "tokens_per_s": round(args.model_batch_size * T / ms * 1000),
                    "MFU": f"{flops / (ms / 1000) / peak:.1%}"})
        print(mfu[-1], flush=True)
    scans = {}
    for scan in ("sequential", "chunked"):
        mixer = MambaBlock(MambaConfig(n_embd=args.scan_width, scan=scan)).to(device)
        x = torch.randn(args.scan_batch, args.scan_length, args.scan_width, device=device, requires_grad=True)
        scans[scan] = timed(lambda: mixer(x).sum().backward(), device, 0, 1)
    scan_row = {"what": f"Mamba block, chunked / sequential scan (C {args.scan_width})", "T": args.scan_length,
                "batch": args.scan_batch, "ms": f"{1000 * scans['chunked']:.0f} vs {1000 * scans['sequential']:.0f}",
                "tokens_per_s": f"{scans['sequential'] / scans['chunked']:.1f}x"}
    print(scan_row, flush=True)
    steps = end_to_end(args, device)
    device_name = describe(device)
    title = (f"Speed on {device_name}: fwd+bwd training steps, median of {args.repeats} after {args.warmup} warm-up; "
             f"block and model rows in {args.dtype}; block: C 512, S 512; model: paper size, vocab 50,257; "
             f"memory: {MEMORY_METHOD[device.type]}; matmul peak {peak / 1e9:.1f} GFLOP/s (fp32 {2048}x{2048}); "
             "train step: forward, loss, backward, grad clip and AdamW, each setting in a fresh process")
    everything = rows + mfu + [scan_row] + steps
    write_outputs(Path(args.bench_dir, "speed"), "speed", everything,
                  ["what", "T", "batch", "ms", "tokens_per_s", "peak_MB", "MFU"], title)
    return everything


# the whole training step, as each code base trains by default: (label, model kind, --dtype, keep freed memory)
STEP_SETTINGS = [("official code, fp32 (as its benchmark.py trains)", "paper-gam", "float32", False),
                 ("gam.py, fp32, freed memory kept", "gam", "float32", True),
                 ("gam.py as train.py runs it (--dtype auto, freed memory kept)", "gam", "auto", True)]


def end_to_end(args, device):
    """Tokens/s of a whole paper-size training step (model, loss, backward, clip, AdamW) in each STEP_SETTINGS,
    on CPU each in a fresh process, since train.py's allocator setting is for the whole process."""
    rows = []
    B, T = args.step_batch_size, args.step_length
    for label, kind, dtype, keep in STEP_SETTINGS:
        spec = (kind, dtype, keep, B, T, args.warmup, args.repeats)
        if device.type == "cpu":
            _, seconds = in_fresh_process(time_train_step, (spec, device))
        else:
            seconds = time_train_step(spec, device)
        rows.append({"what": f"train step: {label}", "T": T, "batch": B,
                     "ms": "" if seconds is None else round(1000 * seconds, 1),
                     "tokens_per_s": "" if seconds is None else round(B * T / seconds)})
        print(rows[-1], flush=True)
    ref, ours = rows[0]["ms"], rows[-1]["ms"]
    rows.append({"what": "train step: gam.py as train.py runs it / official code", "T": T, "batch": B,
                 "tokens_per_s": f"{ref / ours:.2f}x" if ref and ours else ""})
    return rows


def time_train_step(spec, device):
    """Median seconds of one training step of spec = (kind, dtype, keep freed memory, B, T, warmup, repeats)."""
    kind, dtype, keep, B, T, warmup, repeats = spec
    if keep and device.type == "cpu":
        hardware.keep_freed_memory()
    torch.manual_seed(0)
    model = make_model(kind, T).to(device).train()
    optimizer = model.configure_optimizers(0.1, 3e-4, (0.9, 0.95), device_type=device.type)
    ctx = hardware.autocast_for(str(device), dtype)
    idx = torch.randint(0, model.config.vocab_size, (B, T + 1), device=device)

    return timed(lambda: training_step(model, model, optimizer, ctx, idx), device, warmup, repeats)


def training_step(net, model, optimizer, ctx, idx):
    """One step as train.py takes it: forward and loss of net (model, or its compiled form) under ctx, backward,
    gradients clipped at norm 1, optimizer step. idx (B, T + 1): inputs and next-token targets. Returns the loss."""
    with ctx:
        _, loss = net(idx[:, :-1], idx[:, 1:])
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


# ------------------------------------------------------------------------------------------------ gpu

GPU_SETTINGS = {"fp32": ("fp32", "float32", False), "bf16": ("bf16 autocast", "bfloat16", False),
                "bf16-compile": ("bf16 + compile", "bfloat16", True)}


def gpu(args):
    """The checks that matter on a GPU, in one command: training steps of each model in fp32, bf16 autocast and
    bf16 + torch.compile, from the same weights on the same batches (loss parity), with their tokens/s and MFU
    against the device's bf16 peak; then Table 2's block timings (scale) up to T 8192. It runs on any device: on
    a CPU, at a small size, it is what the tests run."""
    device = torch.device(hardware.pick_device(args.device))
    peak = hardware.peak_flops(args.peak_tflops, str(device), torch.bfloat16)
    settings = args.settings.split(",")
    unknown = [s for s in settings if s not in GPU_SETTINGS]
    if unknown:  # before any model trains, not after the first one's settings
        raise ConfigError(f"unknown setting {unknown[0]!r}: use {', '.join(GPU_SETTINGS)}")
    B, T = args.step_batch_size, args.step_length
    batches = torch.randint(0, args.vocab_size, (args.n_batches, B, T + 1),
                            generator=torch.Generator().manual_seed(args.seed)).to(device)
    rows = []
    for kind in args.models.split(","):
        flags = [f for name, value in model_flags(kind).items() for f in (f"--{name.replace('_', '-')}", str(value))]
        flags += ["--n-layer", str(args.n_layer), "--n-embd", str(args.n_embd), "--n-slots", str(args.n_embd),
                  "--n-head", str(args.n_head), "--block-size", str(T), "--dropout", "0"]
        reference = None
        for setting in settings:
            label, dtype, compiled = GPU_SETTINGS[setting]
            torch.manual_seed(args.seed)
            model = train.build_model(train.parse_args(flags), args.vocab_size).to(device).train()
            optimizer = model.configure_optimizers(0.1, args.lr, (0.9, 0.95), device_type=device.type)
            hardware.cpu_bf16_vectors(str(device), dtype)  # also for what Mamba's compiled scan compiles
            net = torch.compile(model) if compiled else model
            ctx = hardware.autocast_for(str(device), dtype)
            losses, times = [], []
            for step in range(args.steps):
                idx = batches[step % args.n_batches]
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                losses.append(training_step(net, model, optimizer, ctx, idx).item())  # .item() synchronises
                times.append(time.perf_counter() - t)
            if setting == "fp32":
                reference = losses
            seconds = statistics.median(times[len(times) // 2:])  # the second half: compilation is long done
            tok_s = B * T / seconds
            mfu = "" if peak is None else f"{hardware.flops_per_token(model, T) * tok_s / peak:.1%}"
            if not all(map(math.isfinite, losses)):
                gap = "nan"  # max() would pass over it
            elif reference is None:
                gap = "-"  # no fp32 setting to compare with
            else:
                gap = f"{max(abs(a - b) for a, b in zip(losses, reference)):.4f}"
            rows.append({"model": kind, "setting": label, "first loss": round(losses[0], 4),
                         "last loss": round(losses[-1], 4), "largest loss gap to fp32": gap,
                         "tokens_per_s": round(tok_s), "MFU (bf16 peak)": mfu,
                         "first step (s)": round(times[0], 1)})  # compiling, where the setting compiles
            print(rows[-1], flush=True)
    title = (f"Training steps on {describe(device)}: {args.n_layer} layers, C {args.n_embd}, vocab {args.vocab_size}, "
             f"batch {B} x {T}, {args.steps} AdamW steps (lr {args.lr}) cycling over {args.n_batches} fixed random "
             "batches from the same initial weights; tokens/s: median of the second half of the steps; MFU "
             f"against {'an unknown peak (pass --peak-tflops)' if peak is None else f'{peak / 1e12:.0f} TFLOP/s'}")
    write_outputs(Path(args.bench_dir, "gpu"), "gpu", rows, list(rows[0]), title)
    return rows + scale(args)


# ------------------------------------------------------------------------------------------------ curves

def curves(args):
    """Overlay the loss curves of finished train.py runs (their metrics.jsonl) in one plot, and tabulate each
    run's last val loss and its difference from the first run's."""
    runs = {}
    for folder in args.runs:
        path = Path(folder, "metrics.jsonl")
        if not path.is_file():
            raise DataError(f"no metrics.jsonl in {folder}: name the --out-dir of a train.py run")
        runs[folder] = [json.loads(line) for line in path.read_text().splitlines()]
    fig = new_figure(figsize=(7.5, 4.2))
    ax = fig.subplots()
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    rows, first = [], None
    for (folder, records), color in zip(runs.items(), colors):
        steps = [r for r in records if r["kind"] == "step"]
        evals = [r for r in records if "val_loss" in r]
        ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], color=color, alpha=0.35, lw=1)
        ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", color=color, label=folder)
        last = evals[-1]["val_loss"] if evals else float("nan")
        first = last if first is None else first
        rows.append({"run": folder, "steps": records[-1]["step"], "last val loss": round(last, 4),
                     "minus the first run's": f"{last - first:+.4f}", "last val ppl": round(math.exp(last), 2)})
    ax.set(xlabel="step", ylabel="cross-entropy (nats/token)", title=args.title)
    ax.legend()
    fig.tight_layout()
    out = Path(args.out or Path(args.bench_dir, "curves", "curves.png"))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    print("\n".join(str(r) for r in rows), f"\n(plot written to {out}; faint lines: training batches, dots: val)")
    return rows


# ------------------------------------------------------------------------------------------------ position

def bigram_position_losses(folder, vocab_size, chunks, batch_size, max_batches=0):
    """position_losses of the bigram model (bigram_model) of folder's train.bin on the same batches: a model that
    sees one previous token and no position, so any trend of its curve with position is in the text sampled,
    not in a model."""
    nll, _ = bigram_model(np.fromfile(folder / "train.bin", dtype=np.uint16), vocab_size)
    batches = islice(chunks.batches(batch_size), max_batches or None)
    losses = np.concatenate([nll(x.numpy(), y.numpy()) for x, y in batches])  # (rows, T)
    return torch.from_numpy(losses.mean(axis=0))  # (T,)


@torch.no_grad()
def position_losses(model, chunks, batch_size, device, max_batches=0):
    """Mean validation cross-entropy at each position 0..T-1 of the chunks, a (T,) float64 tensor. The chunks are
    cut from the token stream at arbitrary points, so every position sees the same text; only the context before
    it grows. A model that uses its context gets better with position; GAM should stop at its receptive field."""
    model.eval()
    total = torch.zeros(chunks.length - 1, dtype=torch.float64)  # (T,)
    rows = 0
    for x, y in islice(chunks.batches(batch_size), max_batches or None):  # all, or the first max_batches
        logits, _ = model(x.to(device))  # (B, T, V)
        # flattened, not transposed to (B, V, T): the softmax then runs over contiguous rows, many times faster
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.to(device).flatten(),
                                                 reduction="none").view_as(y)  # (B, T)
        total += loss.sum(dim=0).double().cpu()
        rows += x.size(0)
    return total / rows


def position(args):
    """Validation loss by token position for trained train.py runs (their --out-dir folders), as a table of
    position buckets and a plot with each GAM's receptive field marked, beside the same for a bigram model."""
    device = torch.device(hardware.pick_device(args.device))
    edges = [int(e) for e in args.buckets.split(",")]
    curves, rows = {}, []

    def add(name, model_name, curve, field):
        T = len(curve)
        curves[name] = (curve, field)
        row = {"run": name, "model": model_name, "T": T, "receptive field": field,
               "val loss": round(curve.mean().item(), 4)}
        for a, b in zip(edges, edges[1:] + [T]):
            if a < T:
                row[f"{a}" if b - a == 1 else f"{a}-{min(b, T) - 1}"] = round(curve[a:b].mean().item(), 4)
        rows.append(row)
        print(row, flush=True)

    windows = [int(w) for w in args.attn_windows.split(",")]
    for folder in args.runs:
        ckpt = checkpoint.load_checkpoint(folder)
        run_args = argparse.Namespace(**ckpt["train_config"])
        data_folder = prepare_from_args(run_args)
        chunks = TokenChunks(data_folder / "val.bin", ckpt["model_config"]["block_size"])
        batch_size = args.batch_size or run_args.batch_size
        # a Transformer once per window: the same weights, each token attending to the last w tokens only
        for w in windows if run_args.model == "transformer" else [0]:
            model = checkpoint.model_from_checkpoint(ckpt, folder, **({"attn_window": w} if w else {}))
            add(f"{folder}, attention window {w}" if w else folder, run_args.model,
                position_losses(model.to(device), chunks, batch_size, device, args.eval_batches),
                model.receptive_field)
        if folder == args.runs[0]:
            bigram = bigram_position_losses(data_folder, model.config.vocab_size, chunks, batch_size,
                                            args.eval_batches)
    add(f"bigram (counts, on {args.runs[0]}'s data)", "bigram", bigram, 1)
    columns = list(dict.fromkeys(c for r in rows for c in r))
    title = (f"Validation loss (nats/token) by position in the sequence, mean over "
             f"{'the first ' + str(args.eval_batches) + ' batches' if args.eval_batches else 'every chunk'} "
             f"of each run's validation split, on {describe(device)}")
    out = Path(args.bench_dir, "position")
    write_outputs(out, "position", rows, columns, title)
    with open(out / "position-curves.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["position", *curves])
        longest = max(len(c) for c, _ in curves.values())
        for t in range(longest):
            w.writerow([t, *(f"{c[t].item():.5f}" if t < len(c) else "" for c, _ in curves.values())])
    # left: the curves; right: each model's curve minus the bigram's on the same tokens, which takes out what
    # varies with the text sampled at each position (the bigram sees no position)
    fig = new_figure(figsize=(11, 4.2))
    left, right = fig.subplots(1, 2)
    *runs, (bigram_name, _) = curves.items()
    for (name, (curve, field)), color in zip(runs, cycle(matplotlib.rcParams["axes.prop_cycle"].by_key()["color"])):
        x = range(1, len(curve) + 1)
        left.plot(x, curve.numpy(), color=color, lw=1, label=name)
        if len(curve) == len(bigram):
            right.plot(x, (curve - bigram).numpy(), color=color, lw=1, label=name)
        for ax in (left, right):
            if field < len(curve):
                ax.axvline(field, color=color, ls=":", lw=1)  # the first position whose window is full
    left.plot(range(1, len(bigram) + 1), bigram.numpy(), color="gray", ls="--", lw=1, label=bigram_name)
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xlabel("tokens seen (position + 1); dotted: receptive field")
    left.set(ylabel="val loss (nats/token)", title="Loss by position")
    right.set(ylabel="minus the bigram's loss (nats/token)", title="Loss by position, minus a model that sees none")
    left.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "position.png", dpi=100)
    return rows


# ------------------------------------------------------------------------------------------------ generate

@torch.no_grad()
def generate_bench(args):
    """Per-token latency of generation after a context of L tokens, with the cache and without."""
    device = torch.device(hardware.pick_device(args.device))
    contexts = [int(c) for c in args.contexts.split(",")]
    rows = []
    for kind in args.models.split(","):
        torch.manual_seed(0)
        model = make_model(kind, max(contexts) + args.new_tokens + 1).to(device).eval()  # +1: the warm-up call
        for L in contexts:
            idx = torch.randint(0, model.config.vocab_size, (1, L), device=device)
            cache = new_cache(model)
            model(idx, cache=cache)
            nxt = idx[:, -1:]

            def cached_step():
                model(nxt, cache=cache)

            def uncached_step():
                model(torch.cat([idx, nxt], dim=1))

            row = {"model": kind, "context": L}
            for name, fn in (("cached", cached_step), ("uncached", uncached_step)):
                ms = 1000 * timed(fn, device, 1, args.new_tokens)
                row[f"{name} ms/token"] = round(ms, 2)
                row[f"{name} tokens/s"] = round(1000 / ms, 1)
            rows.append(row)
            print(row, flush=True)
    device_name = describe(device)
    title = (f"Generation, batch 1, paper-size models (vocab 50,257) on {device_name}: time for one more token "
             f"after a context of L tokens, median of {args.new_tokens}; cached = the model's cache (GAM: last "
             "K-1 conv inputs per layer, fixed size; Transformer: keys and values; Mamba: conv window + state), "
             "uncached = rerun the whole context")
    out = Path(args.bench_dir, "generate")
    write_outputs(out, "generate", rows, list(rows[0]), title)
    fig = new_figure(figsize=(7, 4))
    ax = fig.subplots()
    for kind in args.models.split(","):
        mine = [r for r in rows if r["model"] == kind]
        for name, style in (("cached", "o-"), ("uncached", "x--")):
            ax.plot([r["context"] for r in mine], [r[f"{name} ms/token"] for r in mine], style, label=f"{kind} {name}")
    ax.set(xscale="log", yscale="log", xlabel="context length L", ylabel="ms per generated token")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "generate.png", dpi=100)
    return rows


# ------------------------------------------------------------------------------------------------ main

def get_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    sub = p.add_subparsers(dest="command", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    s = sub.add_parser("scale", help="Table 2: block time and memory vs T", formatter_class=fmt)
    s.add_argument("--blocks", default="gam,gam-context,transformer,transformer-naive,mamba", help="which blocks")
    s.add_argument("--lengths", default="256,512,1024,2048,4096", help="sequence lengths (the paper: up to 8192)")
    s.add_argument("--batch-size", type=int, default=4, help="the paper: 16 (on a GPU)")
    s.add_argument("--n-embd", type=int, default=512, help="width C")
    s.add_argument("--n-head", type=int, default=8, help="Transformer heads")
    s.add_argument("--warmup", type=int, default=1, help="untimed calls first")
    s.add_argument("--repeats", type=int, default=3, help="timed calls; the median is reported")
    s.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16"],
                   help="autocast dtype of the timed steps (the official code trains in fp32; auto: as train.py)")

    for name, helptext in (("compare", "Table 1: the three models, mean ± std over seeds"),
                           ("ablate", "Table 3: the four GAM variants, mean ± std over seeds")):
        c = sub.add_parser(name, help=helptext, parents=[train.get_parser(add_help=False)], formatter_class=fmt,
                           conflict_handler="resolve")
        c.add_argument("--seeds", type=int, default=3, help="runs per model, seeds --seed, --seed + 1, ...")
        if name == "compare":
            c.add_argument("--models", default="gam,transformer,mamba", help="which models (also gam-context)")
        else:
            c.add_argument("--variants", default=",".join(VARIANTS), help="which GAM variants")

    r = sub.add_parser("recall", help="MQAR accuracy vs gap and number of pairs", formatter_class=fmt)
    r.add_argument("--models", default="gam,gam-context,transformer,mamba", help="which models")
    r.add_argument("--seq-len", type=int, default=128, help="sequence length")
    r.add_argument("--pairs", default="4,8,16", help="numbers of key-value pairs (trained on all, tested on each)")
    r.add_argument("--vocab-size", type=int, default=256, help="keys from the lower half, values the upper")
    r.add_argument("--gap-edges", default="0,8,16,32,64,128", help="key-query distance buckets")
    r.add_argument("--n-layer", type=int, default=2, help="layers")
    r.add_argument("--n-embd", type=int, default=64, help="width (and GAM memory slots)")
    r.add_argument("--n-head", type=int, default=4, help="Transformer heads")
    r.add_argument("--steps", type=int, default=1500, help="training steps")
    r.add_argument("--batch-size", type=int, default=64, help="sequences per step")
    r.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    r.add_argument("--pos-init-std", type=float, default=0.02,
                   help="std of the learned positions at init; the paper's 1.0 stops even attention from learning")
    r.add_argument("--test-size", type=int, default=500, help="test sequences per number of pairs")

    s = sub.add_parser("speed", help="gam.py vs the official block; MFU; Mamba scan", formatter_class=fmt)
    s.add_argument("--lengths", default="256,4096", help="sequence lengths")
    s.add_argument("--batch-size", type=int, default=4, help="batch for the single-block comparison")
    s.add_argument("--model-batch-size", type=int, default=1, help="batch for whole models")
    s.add_argument("--mfu-models", default="gam,transformer,mamba", help="models whose MFU is measured")
    s.add_argument("--mfu-length", type=int, default=256, help="sequence length for MFU")
    s.add_argument("--scan-width", type=int, default=128, help="Mamba C for the scan comparison")
    s.add_argument("--scan-length", type=int, default=1024, help="T for the scan comparison")
    s.add_argument("--scan-batch", type=int, default=2, help="batch for the scan comparison")
    s.add_argument("--step-batch-size", type=int, default=8, help="batch of the whole-training-step rows")
    s.add_argument("--step-length", type=int, default=256, help="T of the whole-training-step rows")
    s.add_argument("--warmup", type=int, default=1, help="untimed calls first")
    s.add_argument("--repeats", type=int, default=3, help="timed calls; the median is reported")
    s.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16"],
                   help="autocast dtype of the timed steps (the official code trains in fp32; auto: as train.py)")

    u = sub.add_parser("gpu", help="on a GPU: bf16 and compile parity, tokens/s, MFU; Table 2 to T 8192",
                       formatter_class=fmt)
    u.add_argument("--models", default="gam,transformer", help="models whose training steps are checked (also "
                   "mamba, gam-context)")
    u.add_argument("--n-layer", type=int, default=6, help="layers (the paper: 6)")
    u.add_argument("--n-embd", type=int, default=512, help="width C, GAM's slots, and the scale blocks' width")
    u.add_argument("--n-head", type=int, default=8, help="Transformer heads")
    u.add_argument("--vocab-size", type=int, default=50257, help="vocabulary")
    u.add_argument("--step-batch-size", type=int, default=32, help="batch of the training steps (the paper: 32)")
    u.add_argument("--step-length", type=int, default=256, help="T of the training steps (the paper: 256)")
    u.add_argument("--steps", type=int, default=100, help="training steps per setting")
    u.add_argument("--settings", default=",".join(GPU_SETTINGS), help="which: fp32 (the reference of the loss "
                   "gaps), bf16 (autocast), bf16-compile")
    u.add_argument("--n-batches", type=int, default=4, help="fixed batches the steps cycle over")
    u.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate")
    u.add_argument("--peak-tflops", type=float, default=0.0, help="the device's bf16 peak (0: look the GPU up)")
    u.add_argument("--blocks", default="gam,transformer,transformer-naive,mamba", help="blocks for Table 2")
    u.add_argument("--lengths", default="256,512,1024,2048,4096,8192", help="Table 2's sequence lengths")
    u.add_argument("--batch-size", type=int, default=16, help="Table 2's batch (the paper: 16)")
    u.add_argument("--warmup", type=int, default=1, help="Table 2: untimed calls first")
    u.add_argument("--repeats", type=int, default=3, help="Table 2: timed calls; the median is reported")
    u.add_argument("--dtype", default="bfloat16", choices=["auto", "float32", "bfloat16"],
                   help="Table 2's autocast dtype")
    v = sub.add_parser("curves", help="overlay the loss curves of train.py runs", formatter_class=fmt)
    v.add_argument("runs", nargs="+", help="--out-dir folders of train.py runs")
    v.add_argument("--out", default=None, help="the plot's file (default BENCH_DIR/curves/curves.png)")
    v.add_argument("--title", default="", help="the plot's title")
    o = sub.add_parser("position", help="validation loss by token position for train.py runs", formatter_class=fmt)
    o.add_argument("runs", nargs="+", help="--out-dir folders of train.py runs")
    o.add_argument("--buckets", default="0,1,4,13,32,128", help="first position of each bucket in the table")
    o.add_argument("--batch-size", type=int, default=0, help="validation batch (0: the run's own)")
    o.add_argument("--eval-batches", type=int, default=0, help="only the first N validation batches (0: all)")
    o.add_argument("--attn-windows", default="0", help="Transformer runs: also score them with attention cut to "
                   "the last W tokens, for each W listed (0: as trained)")
    g = sub.add_parser("generate", help="per-token generation latency vs context", formatter_class=fmt)
    g.add_argument("--models", default="gam,transformer,mamba", help="which models")
    g.add_argument("--contexts", default="16,64,256,1024,2048", help="context lengths")
    g.add_argument("--new-tokens", type=int, default=8, help="timed tokens per context")

    for s in sub.choices.values():
        if s.get_default("device") is None:
            s.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), or a torch device")
        if s.get_default("seed") is None:
            s.add_argument("--seed", type=int, default=1337, help="random seed")
        s.add_argument("--bench-dir", default="bench_out", help="results go to BENCH_DIR/<command>/")
    return p


COMMANDS = {"scale": scale, "compare": compare, "ablate": ablate, "recall": recall, "speed": speed,
            "gpu": gpu, "curves": curves, "position": position, "generate": generate_bench}


def main(argv=None):
    args = get_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (DataError, ConfigError) as e:  # the user's to fix; anything else is a bug: its traceback shows
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
