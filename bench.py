"""
Benchmarks that make the paper's claims checkable, each in one command. Every ratio is measured side by side in one
run on one machine; none of them is a test (machines are noisy).

    python bench.py scale     # Table 2: one block of each model, time and memory vs sequence length
    python bench.py compare   # Table 1: GAM vs Transformer vs Mamba, same data, budget and seeds, + a bigram floor
    python bench.py ablate    # Table 3: the four GAM mixers, same protocol
    python bench.py recall    # multi-query associative recall: accuracy vs key-query gap and number of pairs

compare and ablate accept every train.py flag (model size, data, budget); results go to --bench-dir/<command>/
as a Markdown table (also printed), a CSV and PNG plots.
"""

import argparse
import csv
import gc
import math
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import train
from baselines import MambaBlock, MambaConfig, TransformerBlock, TransformerConfig
from data import DataError, TokenChunks, mqar, prepare_from_args
from gam import GAMBlock, GAMConfig


# ------------------------------------------------------------------------------------------------ helpers

def plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot

    return matplotlib.pyplot


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


def proc_status(key):
    """A value in kB from /proc/self/status (Linux), or None elsewhere."""
    try:
        return int(re.search(rf"{key}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))
    except (OSError, AttributeError):
        return None


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


def peak_memory_mb(fn, device):
    """Memory that one call of fn() needs above what was in use before it.
    CUDA: max_memory_allocated (the allocator's view). CPU: growth of the process's resident-set high-water mark
    (Linux VmHWM, reset before the call through /proc/self/clear_refs); None where that is not available."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    base = proc_status("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    fn()
    return (proc_status("VmHWM") - base) / 1024


MEMORY_METHOD = {"cuda": "CUDA max_memory_allocated above the inputs",
                 "cpu": "growth of the process's peak resident set (Linux VmHWM) during the call"}


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

    def forward(self, x):
        T = x.size(1)
        h = self.ln1(x)
        local = self.local_conv(h.transpose(1, 2))[..., :T].transpose(1, 2)
        weights = torch.softmax(h @ self.memory_bank.T, dim=-1)
        glob = weights @ self.memory_bank
        g_local, g_global = self.gate(h).chunk(2, dim=-1)
        x = x + torch.sigmoid(g_local) * local + torch.sigmoid(g_global) * glob
        return x + self.ffn(self.ln2(x))


def make_block(kind, C, n_head):
    if kind == "gam":
        return GAMBlock(GAMConfig(n_embd=C, dropout=0.1))
    if kind.startswith("transformer"):
        attn = "naive" if kind.endswith("naive") else "sdpa"
        return TransformerBlock(TransformerConfig(n_embd=C, n_head=n_head, dropout=0.1, attn=attn))
    return MambaBlock(MambaConfig(n_embd=C))


def scale(args):
    """One block of each model, forward + backward of output.sum() in train mode, as the paper's scale.py."""
    device = torch.device(train.pick_device(args.device))
    ctx = train.autocast_for(str(device), args.dtype)
    rows = []
    for kind in args.blocks.split(","):
        torch.manual_seed(0)
        block = make_block(kind, args.n_embd, args.n_head).to(device).train()
        for T in [int(t) for t in args.lengths.split(",")]:
            x = torch.randn(args.batch_size, T, args.n_embd, device=device, requires_grad=True)

            def step():
                with ctx:
                    y = block(x)
                y.float().sum().backward()
                x.grad = None
                block.zero_grad(set_to_none=True)

            row = {"block": kind, "T": T, "batch": args.batch_size, "C": args.n_embd}
            try:
                row["ms"] = round(1000 * timed(step, device, args.warmup, args.repeats), 2)
                mb = peak_memory_mb(step, device)
                row["peak_MB"] = "" if mb is None else round(mb, 1)
                row["tokens_per_s"] = round(args.batch_size * T / (row["ms"] / 1000))
            except (torch.OutOfMemoryError, RuntimeError) as e:  # CPU allocation failures are RuntimeErrors
                row["ms"] = row["peak_MB"] = row["tokens_per_s"] = "OOM" if "memory" in str(e).lower() else "error"
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            print(row, flush=True)
            rows.append(row)
            del x
    growth = []
    for kind in args.blocks.split(","):
        t = {r["T"]: r["ms"] for r in rows if r["block"] == kind and isinstance(r["ms"], float)}
        for T in sorted(t):
            if 8 * T in t:
                growth.append(f"{kind}: time({8 * T})/time({T}) = {t[8 * T] / t[T]:.1f}")
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    title = (f"Block scaling on {device_name}, {ctx.fast_dtype if hasattr(ctx, 'fast_dtype') else 'float32'}; "
             f"median of {args.repeats} fwd+bwd after {args.warmup} warm-up; memory: {MEMORY_METHOD[device.type]}. "
             "Linear growth gives time(8T)/time(T) = 8, quadratic 64.\n\n" + "\n".join(f"- {g}" for g in growth))
    out = Path(args.bench_dir, "scale")
    write_outputs(out, "scale", rows, ["block", "T", "batch", "C", "ms", "peak_MB", "tokens_per_s"], title)
    p = plt()
    fig, axes = p.subplots(1, 2, figsize=(10, 4))
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

def bigram_loss(train_tokens, val_tokens, vocab_size):
    """Cross-entropy (nats/token) on val of a count-based bigram model: p(w | v) = l c(v, w) / c(v) +
    (1 - l) p(w), with an add-one unigram p(w). l is chosen from a grid on the last 10% of train, then the
    counts are taken on all of train. A floor: any model that sees context should beat it."""
    def counts(tokens):
        pairs = np.unique(tokens[:-1].astype(np.int64) * vocab_size + tokens[1:], return_counts=True)
        return dict(zip(*pairs)), np.bincount(tokens[:-1], minlength=vocab_size)

    def loss(tokens, pair_counts, prev_counts, unigram, lam):
        keys = tokens[:-1].astype(np.int64) * vocab_size + tokens[1:]
        c = np.array([pair_counts.get(k, 0) for k in keys], dtype=np.float64)
        prev = prev_counts[tokens[:-1]].astype(np.float64)
        p_bi = np.divide(c, prev, out=np.zeros_like(c), where=prev > 0)
        p = np.where(prev > 0, lam * p_bi + (1 - lam) * unigram[tokens[1:]], unigram[tokens[1:]])
        return float(-np.log(p).mean())

    def unigram_of(tokens):
        u = np.bincount(tokens, minlength=vocab_size).astype(np.float64) + 1
        return u / u.sum()

    cut = int(len(train_tokens) * 0.9)
    fit, held = train_tokens[:cut], train_tokens[cut:]
    pc, prev = counts(fit)
    uni = unigram_of(fit)
    lam = min((loss(held, pc, prev, uni, lam), lam) for lam in np.linspace(0.05, 0.95, 19))[1]
    pc, prev = counts(train_tokens)
    return loss(val_tokens, pc, prev, unigram_of(train_tokens), lam), lam


def train_runs(args, variants, name):
    """Train each variant (a dict of flag overrides) for every seed through train.py's own loop; summarise."""
    out = Path(args.bench_dir, name)
    results = []
    for label, overrides in variants:
        for seed in range(args.seed, args.seed + args.seeds):
            cfg = argparse.Namespace(**{**vars(args), **overrides, "seed": seed, "resume": False,
                                        "out_dir": str(out / f"{label}-seed{seed}"), "explicit": []})
            print(f"\n== {label}, seed {seed}", flush=True)
            records = train.train(cfg)
            n_params = sum(p.numel() for p in train.build_model(cfg, 50257).parameters())
            results.append({"label": label, "seed": seed, "params": n_params, "records": records})
    rows = []
    for label, _ in variants:
        runs = [r for r in results if r["label"] == label]
        finals = [[x for x in r["records"] if "val_loss" in x and x["kind"] in ("epoch", "end")] for r in runs]

        def stat(values, digits):
            mean = statistics.mean(values)
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{mean:.{digits}f} ± {sd:.{digits}f}"

        rows.append({"model": label, "params": f"{runs[0]['params']:,}", "seeds": len(runs),
                     "time/epoch (s)": stat([statistics.mean(x["epoch_time_s"] for x in f) for f in finals], 1),
                     "tokens/s": stat([statistics.mean(x["tokens_per_s"] for x in f) for f in finals], 0),
                     "final val loss": stat([f[-1]["val_loss"] for f in finals], 4),
                     "final val ppl": stat([f[-1]["val_ppl"] for f in finals], 2),
                     "best val ppl": stat([min(x["val_ppl"] for x in f) for f in finals], 2),
                     "final val bpb": stat([f[-1]["val_bpb"] for f in finals], 4)})
    folder = prepare_from_args(args)
    train_tokens = np.fromfile(folder / "train.bin", dtype=np.uint16)
    val_tokens = np.fromfile(folder / "val.bin", dtype=np.uint16)
    if args.eval_batches:  # the models were scored on the first eval_batches batches only: score the same tokens
        val_tokens = val_tokens[: args.eval_batches * args.batch_size * (args.block_size + 1)]
    b_loss, lam = bigram_loss(train_tokens, val_tokens, 50257)
    meta = train.json.loads((folder / "meta.json").read_text())
    rows.append({"model": f"bigram floor (counts, l={lam:.2f})", "params": "-", "seeds": "-",
                 "final val loss": f"{b_loss:.4f}", "final val ppl": f"{math.exp(b_loss):.2f}",
                 "best val ppl": "-", "final val bpb":
                 f"{train.bits_per_byte(b_loss, meta['val']['tokens'], meta['val']['bytes']):.4f}"})
    size = (f"{args.n_layer} layers, C {args.n_embd}, S {args.n_slots}, T {args.block_size}, batch {args.batch_size}, "
            f"{args.epochs} epoch(s)" + (f", at most {args.max_steps} steps" if args.max_steps else ""))
    device = train.pick_device(args.device)
    title = (f"{name} on {args.dataset} ({meta['train']['tokens']:,} train / {meta['val']['tokens']:,} val tokens"
             f"{', val = first ' + str(args.eval_batches) + ' batches' if args.eval_batches else ''}); {size}; "
             f"{device}; mean ± std over seeds {args.seed}..{args.seed + args.seeds - 1}")
    columns = ["model", "params", "seeds", "time/epoch (s)", "tokens/s", "final val loss", "final val ppl",
               "best val ppl", "final val bpb"]
    write_outputs(out, name, rows, columns, title)
    p = plt()
    fig, ax = p.subplots(figsize=(7, 4))
    for (label, _), color in zip(variants, p.rcParams["axes.prop_cycle"].by_key()["color"]):
        for r in results:
            if r["label"] == label:
                ev = [x for x in r["records"] if "val_loss" in x]
                ax.plot([x["step"] for x in ev], [x["val_loss"] for x in ev], "o-", color=color, alpha=0.6,
                        label=label if r["seed"] == args.seed else None)
    ax.axhline(b_loss, color="gray", ls="--", label="bigram floor")
    ax.set(xlabel="step", ylabel="val loss (nats/token)", title=title[:90])
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=100)
    return rows


def compare(args):
    return train_runs(args, [(m, {"model": m}) for m in args.models.split(",")], "compare")


def ablate(args):
    return train_runs(args, [(f"gam-{m}", {"model": "gam", "mixer": m}) for m in ("gated", "sum", "local", "global")],
                      "ablate")


# ------------------------------------------------------------------------------------------------ recall

def recall(args):
    """Train each model on MQAR, then report test accuracy per (number of pairs, key-query gap) bucket."""
    device = torch.device(train.pick_device(args.device))
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
        cfg = train.parse_args(["--model", kind, "--n-layer", str(args.n_layer), "--n-embd", str(args.n_embd),
                                "--n-slots", str(args.n_embd), "--n-head", str(args.n_head), "--dropout", "0",
                                "--block-size", str(args.seq_len), "--expand", "2",
                                "--pos-init-std", str(args.pos_init_std)])
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


# ------------------------------------------------------------------------------------------------ main

def get_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    sub = p.add_subparsers(dest="command", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    s = sub.add_parser("scale", help="Table 2: block time and memory vs T", formatter_class=fmt)
    s.add_argument("--blocks", default="gam,transformer,transformer-naive,mamba", help="which blocks")
    s.add_argument("--lengths", default="256,512,1024,2048,4096", help="sequence lengths (the paper: up to 8192)")
    s.add_argument("--batch-size", type=int, default=4, help="the paper: 16 (on a GPU)")
    s.add_argument("--n-embd", type=int, default=512, help="width C")
    s.add_argument("--n-head", type=int, default=8, help="Transformer heads")
    s.add_argument("--warmup", type=int, default=1, help="untimed calls first")
    s.add_argument("--repeats", type=int, default=3, help="timed calls; the median is reported")
    s.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="autocast dtype")

    for name, helptext in (("compare", "Table 1: the three models, mean ± std over seeds"),
                           ("ablate", "Table 3: the four GAM mixers, mean ± std over seeds")):
        c = sub.add_parser(name, help=helptext, parents=[train.get_parser(add_help=False)], formatter_class=fmt,
                           conflict_handler="resolve")
        c.add_argument("--seeds", type=int, default=3, help="runs per model, seeds --seed, --seed + 1, ...")
        if name == "compare":
            c.add_argument("--models", default="gam,transformer,mamba", help="which models")

    r = sub.add_parser("recall", help="MQAR accuracy vs gap and number of pairs", formatter_class=fmt)
    r.add_argument("--models", default="gam,transformer,mamba", help="which models")
    r.add_argument("--seq-len", type=int, default=128, help="sequence length")
    r.add_argument("--pairs", default="4,8,16", help="numbers of key-value pairs (trained on all, tested on each)")
    r.add_argument("--vocab-size", type=int, default=256, help="keys from the lower half, values the upper")
    r.add_argument("--gap-edges", default="0,8,16,32,64,128", help="key-query distance buckets")
    r.add_argument("--n-layer", type=int, default=2, help="layers")
    r.add_argument("--n-embd", type=int, default=64, help="width (and GAM memory slots)")
    r.add_argument("--n-head", type=int, default=4, help="Transformer heads")
    r.add_argument("--steps", type=int, default=1500, help="training steps")
    r.add_argument("--batch-size", type=int, default=64, help="sequences per step")
    r.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    r.add_argument("--pos-init-std", type=float, default=0.02,
                   help="std of the learned positions at init; the paper's 1.0 stops even attention from learning")
    r.add_argument("--test-size", type=int, default=500, help="test sequences per number of pairs")

    for s in sub.choices.values():
        if s.get_default("device") is None:
            s.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), or a torch device")
        if s.get_default("seed") is None:
            s.add_argument("--seed", type=int, default=1337, help="random seed")
        s.add_argument("--bench-dir", default="bench_out", help="results go to BENCH_DIR/<command>/")
    return p


COMMANDS = {"scale": scale, "compare": compare, "ablate": ablate, "recall": recall}


def main(argv=None):
    args = get_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (DataError, ValueError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
