"""
Training experiments that make the paper's claims checkable, each in one command. Every model trains through
train.py's own loop (train.train), with the same data, budget and seeds; bench.py holds the timing benchmarks.

    python experiments.py compare     # Table 1: GAM vs Transformer vs Mamba, mean ± std over seeds, + a bigram floor
    python experiments.py ablate      # Table 3: the four GAM variants, same protocol
    python experiments.py sweep --values 5e-4,1e-3,2e-3,4e-3   # each model at each learning rate (or any flag)
    python experiments.py recall      # multi-query associative recall: accuracy vs key-query gap and number of pairs
    python experiments.py curves out-a out-b     # overlay the loss curves of train.py runs
    python experiments.py position out-a out-b   # validation loss by token position: how much context each model uses

compare and ablate accept every train.py flag (model size, data, budget) and keep each run in
--bench-dir/<command>/<model>-seed<N>, a train.py --out-dir: a finished run is read back, a stopped one continues.
Results go to --bench-dir/<command>/ as a Markdown table (also printed), a CSV and PNG plots.
"""

import argparse
import csv
import json
import math
import re
import statistics
import sys
import textwrap
from itertools import cycle, islice
from pathlib import Path

import matplotlib
import numpy as np
import torch

import train
from data import DataError, Sequences, TokenChunks, bits_per_byte, mqar, prepare_from_args
from gam import ConfigError
from runtime import checkpoint, hardware
from runtime.models import MEMORY_KINDS, MODELS, VARIANTS
from runtime.report import new_figure, write_table


# the labels beyond train.py's --model names that model_flags reads
LABELS = ("gam-context (or another gam-MEMORY), mamba-compiled, mamba-nopos, mamba-compiled-nopos, transformer-rope, "
          "transformer-windowN, transformer-rope-windowN")


def model_flags(label):
    """Flags for a model label: a train.py --model name, gam-MEMORY (GAM with --memory MEMORY: gam-context,
    gam-context-norm, gam-bank+context), mamba-compiled (Mamba with --scan compiled), mamba-nopos or
    mamba-compiled-nopos (with --positions none), transformer-rope (the Transformer with --positions rope),
    transformer-windowN (with --attn-window N) or transformer-rope-windowN."""
    if label.startswith("gam-") and label[4:] in MEMORY_KINDS[1:]:
        return {"model": "gam", "memory": label[4:]}
    mamba = re.fullmatch(r"mamba(-compiled)?(-nopos)?", label)
    if mamba and label != "mamba":
        compiled, nopos = mamba.groups()
        return {"model": "mamba", **({"scan": "compiled", "scan_chunk": 32} if compiled else {}),
                **({"positions": "none"} if nopos else {})}
    transformer = re.fullmatch(r"transformer(-rope)?(?:-window([1-9][0-9]*))?", label)
    if transformer and label != "transformer":
        rope, window = transformer.groups()
        return {"model": "transformer", **({"positions": "rope"} if rope else {}),
                **({"attn_window": int(window)} if window else {})}
    if label not in MODELS:
        raise ConfigError(f"unknown model {label!r}: use {', '.join(MODELS)}, {LABELS}")
    return {"model": label}


def as_flags(settings):
    """{"attn_window": 3} -> ["--attn-window", "3"]: train.py's flags for model_flags' settings."""
    return [f for name, value in settings.items() for f in (f"--{name.replace('_', '-')}", str(value))]


# ------------------------------------------------------------------------------------------------ compare / ablate

def stat(values, digits):
    """mean ± sample std of values, or the one value alone (a single run has no spread to show); "-" if any is NaN."""
    if any(math.isnan(v) for v in values):
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


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
            n_params = sum(p.numel() for p in train.model_of(cfg, meta["vocab_size"]).parameters())
            evals = [x for x in records if "val_loss" in x]
            results.append({"label": label, "seed": seed, "params": n_params, "evals": evals,
                            "finals": [x for x in evals if x["kind"] in ("epoch", "end")]})
    rows = []
    for label, overrides in setups:
        runs = [r for r in results if r["label"] == label]
        last = [r["finals"] for r in runs]
        rows.append({"model": label, "runs": runs, "lr": overrides.get("lr", args.lr),
                     "params": f"{runs[0]['params']:,}", "seeds": len(runs),
                     "time/epoch (s)": stat([statistics.mean(x["epoch_time_s"] for x in f) for f in last], 1),
                     "tokens/s": stat([statistics.mean(x["tokens_per_s"] for x in f) for f in last], 0),
                     "final val loss": stat([f[-1]["val_loss"] for f in last], 4),
                     "final val ppl": stat([f[-1]["val_ppl"] for f in last], 2),
                     "best val ppl": stat([min(x["val_ppl"] for x in f) for f in last], 2),
                     "final val bpb": stat([f[-1]["val_bpb"] for f in last], 4)})
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
             f"{device}; mean ± std over seeds {args.seed}..{args.seed + args.seeds - 1}")
    first = setups[0][0]
    finals = {row["model"]: [r["finals"][-1]["val_bpb"] for r in row["runs"]] for row in rows[:-1]}
    # the seed spread of this table: the largest std of final val bpb among the models trained with several seeds
    sigma = max((statistics.stdev(v) for v in finals.values() if len(v) > 1), default=None)
    for row in rows[1:-1]:
        row[f"bpb minus {first}'s"] = versus(finals[row["model"]], finals[first], sigma)
        row[f"below {first} from"] = lead_from(results, row["model"], first)  # where its curve passes below, for good
    if sigma is not None:
        title += f"; a difference under 2 x {sigma:.4f} bits per byte (the largest seed std here) is no difference"
    columns = ["model", "lr", "params", "seeds", "time/epoch (s)", "tokens/s", "final val loss", "final val ppl",
               "best val ppl", "final val bpb", f"bpb minus {first}'s", f"below {first} from"]
    write_table(out, name, rows, columns, title)
    floor_bpb = bits_per_byte(b_loss, meta["val"]["tokens"], meta["val"]["bytes"])
    plot_runs(out / f"{name}.png", [label for label, _ in setups], results, floor_bpb,
              args.batch_size * args.grad_accum * args.block_size, f"{name}: {size}")
    return rows


def versus(mine, theirs, sigma):
    """The mean of mine minus the mean of theirs, marked as no difference when it is within two seed-sigmas (sigma:
    a std of the same quantity over seeds; None where no model had seeds, and then nothing can be judged)."""
    gap = statistics.mean(mine) - statistics.mean(theirs)
    return f"{gap:+.4f}" + (" (within 2 seed-sigmas)" if sigma is not None and abs(gap) < 2 * sigma else "")


def plot_runs(path, labels, results, floor, tokens_per_step, title):
    """Left: val bits per byte against the tokens (bytes, for a byte-level run) seen, log x, each label's mean over
    its seeds with the band from its lowest to its highest seed, the bigram floor dashed; right: each run's val
    bits per byte by training time. One color per label. Reading a run at another's time reads it mid-schedule,
    before its learning rate has annealed: a comparison at equal time trains each model for the steps it reaches
    in that time (RESULTS.md)."""
    fig = new_figure(figsize=(11, 4.2))
    by_tokens, by_time = fig.subplots(1, 2)
    for label, color in zip(labels, cycle(matplotlib.rcParams["axes.prop_cycle"].by_key()["color"])):
        runs = [r["evals"] for r in results if r["label"] == label]
        steps = sorted(set.intersection(*({x["step"] for x in ev} for ev in runs)))  # evaluated in every seed
        bpb = np.array([[next(x["val_bpb"] for x in ev if x["step"] == s) for s in steps] for ev in runs])
        seen = np.array(steps) * tokens_per_step
        by_tokens.plot(seen, bpb.mean(axis=0), "o-", ms=3, color=color,
                       label=label + (f" ({len(runs)} seeds)" if len(runs) > 1 else ""))
        if len(runs) > 1:
            by_tokens.fill_between(seen, bpb.min(axis=0), bpb.max(axis=0), color=color, alpha=0.2)
        for i, ev in enumerate(runs):
            by_time.plot([x["train_time_s"] for x in ev], [x["val_bpb"] for x in ev], "o-", ms=3,
                         color=color, alpha=0.7, label=label if i == 0 else None)
    by_tokens.axhline(floor, color="gray", ls="--", label="bigram floor")
    by_tokens.set(xscale="log", xlabel="tokens seen in training (bytes, at byte level)", ylabel="val bits per byte",
                  title="by tokens seen")
    by_tokens.legend(fontsize=8)
    by_time.set(xlabel="training time (s), evaluation excluded", ylabel="val bits per byte",
                title="by training time (mid-schedule: not an equal-time result)")
    fig.suptitle(textwrap.fill(title, 130), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def lead_from(results, label, reference):
    """The first step from which label's mean val bits per byte over its seeds stays below reference's, at the
    steps where both were evaluated: "step N", "never", or "throughout"."""
    def mean_curve(name):
        runs = [r["evals"] for r in results if r["label"] == name]
        steps = set.intersection(*({x["step"] for x in ev} for ev in runs))
        return {s: statistics.mean(next(x["val_bpb"] for x in ev if x["step"] == s) for ev in runs) for s in steps}

    mine, theirs = mean_curve(label), mean_curve(reference)
    steps = sorted(set(mine) & set(theirs))
    below = [mine[s] < theirs[s] for s in steps]
    if not steps or not below[-1]:
        return "never"
    first = len(below) - below[::-1].index(False) if False in below else 0
    return "throughout" if first == 0 else f"step {steps[first]:,}"


def compare(args):
    lrs = {}
    for item in filter(None, args.model_lr.split(",")):
        label, _, lr = item.partition("=")
        lrs[label] = flag_value("lr", lr)
    models = args.models.split(",")
    if set(lrs) - set(models):
        raise ConfigError(f"--model-lr names {sorted(set(lrs) - set(models))[0]!r}, which --models does not")
    return train_runs(args, [(m, {**model_flags(m), **({"lr": lrs[m]} if m in lrs else {})}) for m in models],
                      "compare")


def ablate(args):
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"unknown variant {unknown[0]!r}: use {', '.join(VARIANTS)}")
    return train_runs(args, [(f"gam-{v}", {"model": "gam", "variant": v}) for v in variants], "ablate")


def flag_value(name, text):
    """text as train.py's flag `name` (a dest, e.g. "lr") would read it: its type, its choices, true/false for a
    --name/--no-name switch."""
    actions = {a.dest: a for a in train.get_parser()._actions}
    if name not in actions or name in ("seed", "out_dir", "resume"):
        raise ConfigError(f"--flag {name!r} is not a train.py flag that a sweep can vary")
    action = actions[name]
    if isinstance(action, argparse.BooleanOptionalAction):
        if text not in ("true", "false"):
            raise ConfigError(f"--{name.replace('_', '-')} is a switch: sweep it over true,false, not {text!r}")
        return text == "true"
    try:
        value = action.type(text) if action.type else text
    except ValueError:
        raise ConfigError(f"--{name.replace('_', '-')} takes {action.type.__name__}s, not {text!r}") from None
    if action.choices and value not in action.choices:
        raise ConfigError(f"--{name.replace('_', '-')} must be one of {', '.join(map(str, action.choices))}, "
                          f"not {text!r}")
    return value


def where_best(scores, ordered=True):
    """Whether the best of scores (one per value swept, ordered low to high, lower is better, rounded as printed)
    lies inside the range swept or at one end of it. A best that several values share counts inside if any of
    them is."""
    n = len(scores)
    if n == 1:
        return "the only value"
    if not ordered:
        return "(the values have no order)"
    best = [i for i, s in enumerate(scores) if s == min(scores)]
    if len(best) == n:
        return "the same at every value"
    if any(0 < i < n - 1 for i in best):
        return "inside the range"
    return f"at the {'first' if best[0] == 0 else 'last'} value: extend the range beyond it"


def sweep(args):
    """Each model at each value of one train.py flag (the learning rate by default), every other flag as given: the
    full table of train_runs, then each model's final val bits per byte by value, its best value, and whether that
    best lies inside the range (a best at an end says: extend the range that way)."""
    name = args.flag.replace("-", "_")
    texts = args.values.split(",")
    values = [flag_value(name, t) for t in texts]
    models = args.models.split(",")
    setups = [(f"{m}-{args.flag}={t}", {**model_flags(m), name: v}) for m in models for t, v in zip(texts, values)]
    rows = train_runs(args, setups, f"sweep-{args.flag}")
    bpb = {r["model"]: statistics.mean(run["finals"][-1]["val_bpb"] for run in r["runs"]) for r in rows if "runs" in r}
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    summary = []
    for m in models:
        scores = [bpb[f"{m}-{args.flag}={t}"] for t in texts]
        best = min(range(len(texts)), key=scores.__getitem__)
        summary.append({"model": m, **{t: f"{x:.4f}" for t, x in zip(texts, scores)}, f"best --{args.flag}": texts[best],
                        "best val bpb": f"{scores[best]:.4f}",
                        "best is": where_best([round(x, 4) for x in scores], numeric)})
    title = (f"Final val bits per byte by --{args.flag} ({args.seeds} seed(s) each, mean), on {args.dataset}; the "
             f"runs' full table: sweep-{args.flag}.md")
    out = Path(args.bench_dir, f"sweep-{args.flag}")
    write_table(out, f"sweep-{args.flag}-best", summary, ["model", *texts, f"best --{args.flag}", "best val bpb",
                                                          "best is"], title)
    fig = new_figure(figsize=(6.5, 4.2))
    ax = fig.subplots()
    x = values if numeric else range(len(texts))
    for m in models:
        ax.plot(x, [bpb[f"{m}-{args.flag}={t}"] for t in texts], "o-", label=m)
    if numeric and min(values) > 0:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(list(x), texts)
    ax.set(xlabel=f"--{args.flag}", ylabel="final val bits per byte", title=f"sweep of --{args.flag} on {args.dataset}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"sweep-{args.flag}.png", dpi=100)
    return summary


# ------------------------------------------------------------------------------------------------ recall

def recall(args):
    """Train each model at each learning rate and seed on MQAR through train.py's loop, then report test accuracy per
    number of pairs and per key-query gap, mean ± std over seeds. Each run is kept in
    --bench-dir/recall/<model>-lr=<lr>-seed<N>, a train.py --out-dir, with recall.json beside its checkpoint: the
    task its flags do not hold. A finished run of the same task is read back, a stopped one continues."""
    pairs = [int(k) for k in args.pairs.split(",")]
    n_train = args.steps * args.batch_size  # one epoch of args.steps steps
    test_sets = {k: mqar(args.test_size, args.seq_len, k, args.vocab_size, seed=2**31 - 1 - k, power_a=1.0)
                 for k in pairs}  # test seeds far from the training seeds, as zoology does
    test = Sequences(*(torch.cat([s[i] for s in test_sets.values()]) for i in (0, 1)))
    task = {"seq_len": args.seq_len, "pairs": pairs, "vocab_size": args.vocab_size, "steps": args.steps,
            "batch_size": args.batch_size, "test_size": args.test_size}
    edges = [int(e) for e in args.gap_edges.split(",")]
    lrs = args.lr.split(",")
    for lr in lrs:
        flag_value("lr", lr)
    rows, best_rows = [], []
    for kind, lr in ((kind, lr) for kind in args.models.split(",") for lr in lrs):
        scores = []  # one dict of accuracies per seed
        for seed in range(args.seed, args.seed + args.seeds):
            run_dir = Path(args.bench_dir, "recall", f"{kind}-lr={lr}-seed{seed}")
            resume = (run_dir / "ckpt.pt").exists()
            if resume and (not (run_dir / "recall.json").is_file()
                           or json.loads((run_dir / "recall.json").read_text()) != task):
                raise ConfigError(f"{run_dir} holds a recall run of another task: pass another --bench-dir, or "
                                  "delete the folder")
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "recall.json").write_text(json.dumps(task))
            train_sets = [mqar(n_train // len(pairs), args.seq_len, k, args.vocab_size, seed=seed + k, power_a=1.0)
                          for k in pairs]
            train_split = Sequences(*(torch.cat([s[i] for s in train_sets]) for i in (0, 1)))
            meta = {"vocab_size": args.vocab_size, "split": "MQAR, generated; val = the test sets",
                    **{name: {"tokens": s.n_tokens, "bytes": s.n_tokens}
                       for name, s in (("train", train_split), ("val", test))}}
            cfg = train.parse_args([
                *as_flags(model_flags(kind)), "--n-layer", str(args.n_layer), "--n-embd", str(args.n_embd),
                "--n-slots", str(args.n_embd), "--n-head", str(args.n_head), "--dropout", "0", "--expand", "2",
                "--block-size", str(args.seq_len), "--pos-init-std", str(args.pos_init_std), "--epochs", "1",
                "--batch-size", str(args.batch_size), "--lr", lr, "--warmup-steps", "50", "--no-decay-all",
                "--seed", str(seed), "--device", args.device, "--dtype", args.dtype, "--out-dir", str(run_dir),
                "--log-every", str(max(1, args.steps // 5)), "--save-every-min", "0", *args.train_args.split(),
                *(["--resume"] if resume else [])])
            print(f"\n== {kind}, lr {lr}, seed {seed}{' (resumed)' if resume else ''}", flush=True)
            train.train(cfg, data=(meta, train_split, test))
            model, _ = checkpoint.load_model(run_dir)
            model.eval()
            score = {}
            with torch.no_grad():
                for k, (x, y, gap) in test_sets.items():
                    logits, _ = model(x)
                    correct = (logits.argmax(-1) == y)[y >= 0]
                    g = gap[y >= 0]
                    score[f"{k} pairs"] = correct.float().mean().item()
                    for lo, hi in zip(edges[:-1], edges[1:]):
                        sel = (g >= lo) & (g < hi)
                        if k == max(pairs) and sel.any():
                            score[f"gap {lo}-{hi - 1}"] = correct[sel].float().mean().item()
            score["mean"] = statistics.mean(score[f"{k} pairs"] for k in pairs)
            scores.append(score)
        row = {"model": kind, "lr": lr, "seeds": len(scores),
               "params": f"{sum(p.numel() for p in model.parameters()):,}", "receptive field": model.receptive_field,
               **{c: stat([sc[c] for sc in scores], 3) for c in scores[0]}, "_mean": scores}
        rows.append(row)
        print({k: v for k, v in row.items() if k != "_mean"}, flush=True)
        if lr == lrs[-1]:  # the model's best rate: its highest accuracy, the mean over pair sets and seeds
            mine = rows[-len(lrs):]
            errors = [round(1 - statistics.mean(sc["mean"] for sc in r["_mean"]), 3) for r in mine]
            best = min(range(len(lrs)), key=errors.__getitem__)
            best_rows.append({**mine[best], "best is": where_best(errors)})
    columns = [c for c in dict.fromkeys(c for r in rows for c in r) if c != "_mean"]
    chance = 1 / (args.vocab_size - args.vocab_size // 2)
    title = (f"MQAR accuracy on held-out sequences: T {args.seq_len}, vocab {args.vocab_size} (chance "
             f"{chance:.3f}), {args.n_layer} layers, C {args.n_embd}, positions N(0, {args.pos_init_std}), "
             f"{args.steps} steps of batch {args.batch_size} ({args.dtype}), "
             f"trained on {','.join(map(str, pairs))} pairs; gap columns: the {max(pairs)}-pair test set by "
             f"key-to-query distance; mean ± std over seeds {args.seed}..{args.seed + args.seeds - 1}; "
             f"{hardware.pick_device(args.device)}"
             + (f"; more train.py flags: {args.train_args}" if args.train_args else ""))
    write_table(Path(args.bench_dir, "recall"), "recall", rows, columns, title)
    if len(lrs) > 1:
        write_table(Path(args.bench_dir, "recall"), "recall-best", best_rows, [*columns, "best is"],
                    f"Each model at its best learning rate of {args.lr} (its highest mean accuracy)")
    return best_rows


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
             f"of each run's validation split, on {hardware.describe(device)}")
    out = Path(args.bench_dir, "position")
    write_table(out, "position", rows, columns, title)
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


# ------------------------------------------------------------------------------------------------ main

def get_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(), allow_abbrev=False)
    sub = p.add_subparsers(dest="command", required=True)
    # every command: defaults in --help, and a shortened flag is an error rather than the flag it starts
    opts = {"formatter_class": argparse.ArgumentDefaultsHelpFormatter, "allow_abbrev": False}

    for name, helptext in (("compare", "Table 1: the three models, mean ± std over seeds"),
                           ("ablate", "Table 3: the four GAM variants, mean ± std over seeds"),
                           ("sweep", "each model at each value of a flag (the learning rate by default)")):
        c = sub.add_parser(name, help=helptext, parents=[train.get_parser(add_help=False)], **opts,
                           conflict_handler="resolve")
        c.add_argument("--seeds", type=int, default=3 if name != "sweep" else 1,
                       help="runs per model (and value), seeds --seed, --seed + 1, ...")
        if name != "ablate":
            c.add_argument("--models", default="gam,transformer,mamba", help=f"which models (also {LABELS})")
        if name == "compare":
            c.add_argument("--model-lr", default="", help="a learning rate of each model's own, overriding --lr "
                           "for it: MODEL=LR,... (e.g. each at its best from experiments.py sweep)")
        else:
            c.add_argument("--variants", default=",".join(VARIANTS), help="which GAM variants")
        if name == "sweep":
            c.add_argument("--flag", default="lr", help="the train.py flag to vary, as written without its dashes "
                           "(lr, beta2, batch-size, ...)")
            c.add_argument("--values", default="5e-4,1e-3,2e-3,4e-3", help="its values, comma-separated "
                           "(true,false for a switch such as decay-all)")

    r = sub.add_parser("recall", help="MQAR accuracy vs gap and number of pairs", **opts)
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
    r.add_argument("--lr", default="3e-3", help="peak learning rate (50 warmup steps, then cosine); several, "
                   "comma-separated: each model trains at each, and a second table gives each at its best")
    r.add_argument("--pos-init-std", type=float, default=0.02,
                   help="std of the learned positions at init; the paper's 1.0 stops even attention from learning")
    r.add_argument("--test-size", type=int, default=500, help="test sequences per number of pairs")
    r.add_argument("--seeds", type=int, default=1, help="runs per model and rate, seeds --seed, --seed + 1, ... "
                   "(each its own weights and training sequences)")
    r.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16"], help="as train.py's")
    r.add_argument("--train-args", default="", help="more train.py flags, which override the ones above (e.g. "
                   "--train-args='--weight-decay 0 --beta2 0.999')")

    v = sub.add_parser("curves", help="overlay the loss curves of train.py runs", **opts)
    v.add_argument("runs", nargs="+", help="--out-dir folders of train.py runs")
    v.add_argument("--out", default=None, help="the plot's file (default BENCH_DIR/curves/curves.png)")
    v.add_argument("--title", default="", help="the plot's title")
    o = sub.add_parser("position", help="validation loss by token position for train.py runs", **opts)
    o.add_argument("runs", nargs="+", help="--out-dir folders of train.py runs")
    o.add_argument("--buckets", default="0,1,4,13,32,128", help="first position of each bucket in the table")
    o.add_argument("--batch-size", type=int, default=0, help="validation batch (0: the run's own)")
    o.add_argument("--eval-batches", type=int, default=0, help="only the first N validation batches (0: all)")
    o.add_argument("--attn-windows", default="0", help="Transformer runs: also score them with attention cut to "
                   "the last W tokens, for each W listed (0: as trained)")

    for s in sub.choices.values():
        if s.get_default("device") is None:
            s.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), or a torch device")
        if s.get_default("seed") is None:
            s.add_argument("--seed", type=int, default=1337, help="random seed")
        s.add_argument("--bench-dir", default="bench_out", help="results go to BENCH_DIR/<command>/")
    return p


COMMANDS = {"compare": compare, "ablate": ablate, "sweep": sweep, "recall": recall, "curves": curves, "position": position}


def main(argv=None):
    args = get_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (DataError, ConfigError) as e:  # the user's to fix; anything else is a bug: its traceback shows
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
