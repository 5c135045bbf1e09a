"""
Timing benchmarks for the paper's speed and memory claims, each in one command. Every ratio is measured side by
side in one run on one machine; none of them is a test (machines are noisy). The training experiments (Tables 1
and 3, recall, loss by position) are experiments.py's.

    python bench.py scale     # Table 2: one block of each model, time and memory vs sequence length
    python bench.py speed     # gam.py vs the official code: block, model, whole training step; MFU; Mamba's scans
    python bench.py gpu       # on a GPU: bf16 and compile loss parity, tokens/s, MFU; Table 2 up to T 8192
    python bench.py generate  # per-token generation time vs context length, with and without the cache

Results go to --bench-dir/<command>/ as a Markdown table (also printed), a CSV and a PNG plot.
"""

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import train
from baselines import MambaConfig
from data import DataError
from experiments import as_flags, model_flags
from extensions.generation import new_cache
from gam import ConfigError
from runtime import hardware
from runtime.measure import MEMORY_METHOD, free_bytes, in_fresh_process, peak_memory_mb, timed
from runtime.models import build_model
from runtime.official_block import PaperGAMBlock
from runtime.report import new_figure, write_table


@dataclass(frozen=True)
class Step:
    """A training step to time: of one block ("block": kind is a make_block name, on random input of width n_embd)
    or of a whole paper-size model ("model": a make_model name, on random tokens)."""
    what: str
    kind: str
    batch: int
    length: int  # T
    n_embd: int = 512  # a block's width
    n_head: int = 8  # a block's attention heads

    @property
    def tokens(self):
        return self.batch * self.length


def make_step(spec, device, dtype="auto"):
    """A training step (forward, backward, in train mode) of the Step spec: a block's with loss = output.sum(), as
    the paper's scale.py; a whole model's with its cross-entropy."""
    torch.manual_seed(0)
    ctx = hardware.autocast_for(str(device), dtype)
    block = spec.what == "block"
    if block:
        net = make_block(spec.kind, spec.n_embd, spec.n_head).to(device).train()
        x = torch.randn(spec.batch, spec.length, spec.n_embd, device=device, requires_grad=True)
        inputs = (x,)
    else:
        net = make_model(spec.kind, spec.length).to(device).train()
        idx = torch.randint(0, net.config.vocab_size, (spec.batch, spec.length), device=device)
        inputs = (idx, idx)

    def step():
        with ctx:
            out = net(*inputs)
        (out.float().sum() if block else out[1]).backward()
        net.zero_grad(set_to_none=True)
        if block:
            x.grad = None

    return step


# ------------------------------------------------------------------------------------------------ scale

def recompute_of(kind):
    """"gam-recompute-mixer" -> "mixer" (GAMConfig.recompute); "none" for any other kind."""
    return kind.removeprefix("gam-recompute-") if kind.startswith("gam-recompute-") else "none"


def config_of(kind, n_head=8):
    """A bench kind as a model name and the config fields that differ from the paper's defaults."""
    if kind in ("gam", "paper-gam"):
        return "gam", {}
    if kind == "gam-fused":
        return "gam", {"memory_read": "fused"}
    if kind == "gam-context":
        return "gam", {"memory": "context", "n_head": n_head}
    if kind.startswith("gam-recompute-"):
        return "gam", {"recompute": recompute_of(kind)}
    if kind in ("transformer", "transformer-naive"):
        return "transformer", {"n_head": n_head, "attn": "naive" if kind.endswith("naive") else "sdpa"}
    if kind in ("mamba", "mamba-compiled"):  # compiled as experiments.model_flags sets it: once, whatever T is
        return "mamba", {k: v for k, v in model_flags(kind).items() if k != "model"}
    raise ConfigError(f"unknown model or block {kind!r}: use gam, gam-fused, gam-context, "
                      "gam-recompute-{gelu,mixer,ffn,both}, transformer, transformer-naive, mamba or mamba-compiled")


def make_model(kind, T, vocab_size=50257):
    """A paper-size model (6 layers, C 512) with T positions; "paper-gam" is GAM built from PaperGAMBlocks."""
    name, config = config_of(kind)
    model = build_model(name, vocab_size=vocab_size, block_size=T, **config)
    if kind == "paper-gam":
        model.blocks = nn.ModuleList(PaperGAMBlock(512) for _ in range(6))
    return model


def make_block(kind, C, n_head):
    """One block of `kind` at width C (GAM with the paper's 512 slots), dropout 0.1 as the paper trains."""
    if kind == "paper-gam":
        return PaperGAMBlock(C)
    name, config = config_of(kind, n_head)
    return build_model(name, vocab_size=1, block_size=1, n_layer=1, n_embd=C, dropout=0.1, **config).blocks[0]


def mamba_bytes(spec):
    """A rough upper bound on what a Mamba block's fwd + bwd holds: about 16 (B, T, E) fp32 tensors, and the scan
    levels of one chunk, 3 (B, L, E, N) tensors each (the chunked scan keeps no (B, T, E, N) tensor)."""
    B, T, C = spec.batch, spec.length, spec.n_embd
    config = MambaConfig(n_embd=C)
    E, L = config.expand * C, config.scan_chunk
    return 4 * B * E * (16 * T + 3 * L * config.d_state * (math.ceil(math.log2(L)) + 1))


def measure_step(spec, device, args):
    """Time (median ms), throughput and peak memory of one training step of spec; the first call's time apart,
    as it includes torch.compile's work where the block compiles anything."""
    try:
        step = make_step(spec, device, args.dtype)
        first = timed(step, device, 0, 1)
        ms = 1000 * timed(step, device, max(args.warmup - 1, 0), args.repeats)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {"ms": "OOM", "peak_MB": "OOM", "tokens_per_s": "OOM", "first call (s)": "OOM"}
    mb = peak_memory_mb(make_step, (spec, device, args.dtype), device)
    return {"ms": round(ms, 2), "peak_MB": round(mb, 1) if isinstance(mb, float) else mb or "",
            "tokens_per_s": round(spec.tokens / (ms / 1000)), "first call (s)": round(first, 1)}


def fits(spec, device):
    """False for a CPU Mamba block too big for this machine (mamba_bytes), which the kernel would otherwise kill
    with the whole process."""
    return not (spec.kind.startswith("mamba") and device.type == "cpu" and mamba_bytes(spec) > 0.5 * free_bytes())


def scale(args):
    """One block of each model, forward + backward of output.sum() in train mode, as the paper's scale.py."""
    device = torch.device(hardware.pick_device(args.device))
    ctx = hardware.autocast_for(str(device), args.dtype)
    rows = []
    for kind in args.blocks.split(","):
        for T in [int(t) for t in args.lengths.split(",")]:
            spec = Step("block", kind, args.batch_size, T, args.n_embd, args.n_head)
            row = {"block": kind, "T": T, "batch": args.batch_size, "C": args.n_embd}
            if not fits(spec, device):
                row["ms"] = row["peak_MB"] = row["tokens_per_s"] = row["first call (s)"] = "skipped (memory)"
            else:
                row.update(measure_step(spec, device, args))
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
    device_name = hardware.describe(device)
    title = (f"Block scaling on {device_name}, {ctx.fast_dtype if hasattr(ctx, 'fast_dtype') else 'float32'}; "
             f"median of {args.repeats} fwd+bwd after {args.warmup} warm-up; memory: {MEMORY_METHOD[device.type]}. "
             "Linear growth gives time(8T)/time(T) = 8, quadratic 64.\n\n" + "\n".join(f"- {g}" for g in growth))
    out = Path(args.bench_dir, "scale")
    write_table(out, "scale", rows, ["block", "T", "batch", "C", "ms", "peak_MB", "tokens_per_s", "first call (s)"],
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
                spec = Step(what, kind, B, T)
                results[kind] = measure_step(spec, device, args)
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
        spec = Step("model", kind, args.model_batch_size, T)
        ms = 1000 * timed(make_step(spec, device, args.dtype), device, args.warmup, args.repeats)
        flops = hardware.flops_per_token(make_model(kind, T), T) * args.model_batch_size * T
        mfu.append({"what": f"MFU {kind} (paper size, T {T})", "T": T, "batch": args.model_batch_size,
                    "ms": round(ms, 1), "tokens_per_s": round(args.model_batch_size * T / ms * 1000),
                    "MFU": f"{flops / (ms / 1000) / peak:.1%}"})
        print(mfu[-1], flush=True)
    scans = {}
    for scan in ("sequential", "chunked"):
        mixer = build_model("mamba", vocab_size=1, block_size=1, n_layer=1, n_embd=args.scan_width,
                            scan=scan).blocks[0].to(device)
        x = torch.randn(args.scan_batch, args.scan_length, args.scan_width, device=device, requires_grad=True)
        scans[scan] = timed(lambda: mixer(x).sum().backward(), device, 0, 1)
    scan_row = {"what": f"Mamba block, chunked / sequential scan (C {args.scan_width})", "T": args.scan_length,
                "batch": args.scan_batch, "ms": f"{1000 * scans['chunked']:.0f} vs {1000 * scans['sequential']:.0f}",
                "tokens_per_s": f"{scans['sequential'] / scans['chunked']:.1f}x"}
    print(scan_row, flush=True)
    steps = end_to_end(args, device)
    device_name = hardware.describe(device)
    title = (f"Speed on {device_name}: fwd+bwd training steps, median of {args.repeats} after {args.warmup} warm-up; "
             f"block and model rows in {args.dtype}; block: C 512, S 512; model: paper size, vocab 50,257; "
             f"memory: {MEMORY_METHOD[device.type]}; matmul peak {peak / 1e9:.1f} GFLOP/s (fp32 {2048}x{2048}); "
             "train step: forward, loss, backward, grad clip and AdamW, each setting in a fresh process")
    everything = rows + mfu + [scan_row] + steps
    write_table(Path(args.bench_dir, "speed"), "speed", everything,
                  ["what", "T", "batch", "ms", "tokens_per_s", "peak_MB", "MFU"], title)
    return everything


# the whole training step, as each code base trains by default: (label, model kind, --dtype, keep freed memory)
@dataclass(frozen=True)
class Training:
    """How a code base trains: the model (a make_model name), train.py's --dtype, and whether freed memory is kept
    for reuse (train.py's --keep-freed-memory)."""
    label: str
    kind: str
    dtype: str
    keep_freed_memory: bool


# the whole training step, as each code base trains by default
TRAININGS = [Training("official code, fp32 (as its benchmark.py trains)", "paper-gam", "float32", False),
             Training("gam.py, fp32, freed memory kept", "gam", "float32", True),
             Training("gam.py as train.py runs it (--dtype auto, freed memory kept)", "gam", "auto", True)]
ONE_BATCH = argparse.Namespace(grad_accum=1, grad_clip=1.0)  # train.train_step's settings: one batch, clip at 1


def end_to_end(args, device):
    """Tokens/s of a whole paper-size training step (model, loss, backward, clip, AdamW) in each of TRAININGS,
    on CPU each in a fresh process, since train.py's allocator setting is for the whole process."""
    rows = []
    B, T = args.step_batch_size, args.step_length
    for training in TRAININGS:
        timing = (training, Step("model", training.kind, B, T), device, args.warmup, args.repeats)
        if device.type == "cpu":
            _, seconds = in_fresh_process(time_train_step, timing)
        else:
            seconds = time_train_step(*timing)
        rows.append({"what": f"train step: {training.label}", "T": T, "batch": B,
                     "ms": "" if seconds is None else round(1000 * seconds, 1),
                     "tokens_per_s": "" if seconds is None else round(B * T / seconds)})
        print(rows[-1], flush=True)
    ref, ours = rows[0]["ms"], rows[-1]["ms"]
    rows.append({"what": "train step: gam.py as train.py runs it / official code", "T": T, "batch": B,
                 "tokens_per_s": f"{ref / ours:.2f}x" if ref and ours else ""})
    return rows


def time_train_step(training, spec, device, warmup, repeats):
    """Median seconds of train.py's step (train.train_step) of the model spec names, trained as `training` says."""
    if training.keep_freed_memory and device.type == "cpu":
        hardware.keep_freed_memory()
    torch.manual_seed(0)
    model = make_model(spec.kind, spec.length).to(device).train()
    optimizer = model.configure_optimizers(0.1, 3e-4, (0.9, 0.95), device_type=device.type)
    ctx = hardware.autocast_for(str(device), training.dtype)
    idx = torch.randint(0, model.config.vocab_size, (spec.batch, spec.length + 1), device=device)
    return timed(lambda: train.train_step(model, optimizer, idx[:, :-1], idx[:, 1:], ONE_BATCH, 0, 1, ctx, device),
                 device, warmup, repeats)


# ------------------------------------------------------------------------------------------------ gpu

@dataclass(frozen=True)
class Setting:
    """A way to run the training steps of bench.py gpu: its label, the autocast dtype, torch.compile or not."""
    label: str
    dtype: str
    compiled: bool


GPU_SETTINGS = {"fp32": Setting("fp32", "float32", False), "bf16": Setting("bf16 autocast", "bfloat16", False),
                "bf16-compile": Setting("bf16 + compile", "bfloat16", True)}


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
        flags = as_flags(model_flags(kind)) + [
            "--n-layer", str(args.n_layer), "--n-embd", str(args.n_embd), "--n-slots", str(args.n_embd),
            "--n-head", str(args.n_head), "--block-size", str(T), "--dropout", "0"]
        reference = None
        for setting in settings:
            torch.manual_seed(args.seed)
            model = train.model_of(train.parse_args(flags), args.vocab_size).to(device).train()
            losses, times = timed_steps(model, GPU_SETTINGS[setting], batches, args, device)
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
            rows.append({"model": kind, "setting": GPU_SETTINGS[setting].label, "first loss": round(losses[0], 4),
                         "last loss": round(losses[-1], 4), "largest loss gap to fp32": gap,
                         "tokens_per_s": round(tok_s), "MFU (bf16 peak)": mfu,
                         "first step (s)": round(times[0], 1)})  # compiling, where the setting compiles
            print(rows[-1], flush=True)
    title = (f"Training steps on {hardware.describe(device)}: {args.n_layer} layers, C {args.n_embd}, vocab "
             f"{args.vocab_size}, batch {B} x {T}, {args.steps} AdamW steps (lr {args.lr}) cycling over "
             f"{args.n_batches} fixed random batches from the same initial weights; tokens/s: median of the second "
             "half of the steps; MFU against "
             f"{'an unknown peak (pass --peak-tflops)' if peak is None else f'{peak / 1e12:.0f} TFLOP/s'}")
    write_table(Path(args.bench_dir, "gpu"), "gpu", rows, list(rows[0]), title)
    return rows + scale(args)


def timed_steps(model, setting, batches, args, device):
    """args.steps AdamW steps of model (train.train_step) run as setting says, cycling over batches (n, B, T + 1).
    Returns each step's loss and seconds; the first step's seconds include compiling, where it compiles."""
    optimizer = model.configure_optimizers(0.1, args.lr, (0.9, 0.95), device_type=device.type)
    hardware.cpu_bf16_vectors(str(device), setting.dtype)  # also for what Mamba's compiled scan compiles
    net = torch.compile(model) if setting.compiled else model
    ctx = hardware.autocast_for(str(device), setting.dtype)
    losses, times = [], []
    for step in range(args.steps):
        idx = batches[step % len(batches)]
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        loss, _ = train.train_step(net, optimizer, idx[:, :-1], idx[:, 1:], ONE_BATCH, 0, 1, ctx, device)
        losses.append(loss.item())  # .item() synchronises
        times.append(time.perf_counter() - t)
    return losses, times


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
    device_name = hardware.describe(device)
    title = (f"Generation, batch 1, paper-size models (vocab 50,257) on {device_name}: time for one more token "
             f"after a context of L tokens, median of {args.new_tokens}; cached = the model's cache (GAM: last "
             "K-1 conv inputs per layer, fixed size; Transformer: keys and values; Mamba: conv window + state), "
             "uncached = rerun the whole context")
    out = Path(args.bench_dir, "generate")
    write_table(out, "generate", rows, list(rows[0]), title)
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
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(), allow_abbrev=False)
    sub = p.add_subparsers(dest="command", required=True)
    # every command: defaults in --help, and a shortened flag is an error rather than the flag it starts
    opts = {"formatter_class": argparse.ArgumentDefaultsHelpFormatter, "allow_abbrev": False}

    s = sub.add_parser("scale", help="Table 2: block time and memory vs T", **opts)
    s.add_argument("--blocks", default="gam,gam-context,transformer,transformer-naive,mamba", help="which blocks")
    s.add_argument("--lengths", default="256,512,1024,2048,4096", help="sequence lengths (the paper: up to 8192)")
    s.add_argument("--batch-size", type=int, default=4, help="the paper: 16 (on a GPU)")
    s.add_argument("--n-embd", type=int, default=512, help="width C")
    s.add_argument("--n-head", type=int, default=8, help="Transformer heads")
    s.add_argument("--warmup", type=int, default=1, help="untimed calls first")
    s.add_argument("--repeats", type=int, default=3, help="timed calls; the median is reported")
    s.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16"],
                   help="autocast dtype of the timed steps (the official code trains in fp32; auto: as train.py)")

    s = sub.add_parser("speed", help="gam.py vs the official block; MFU; Mamba scan", **opts)
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

    u = sub.add_parser("gpu", help="on a GPU: bf16 and compile parity, tokens/s, MFU; Table 2 to T 8192", **opts)
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
    g = sub.add_parser("generate", help="per-token generation latency vs context", **opts)
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


COMMANDS = {"scale": scale, "speed": speed, "gpu": gpu, "generate": generate_bench}


def main(argv=None):
    args = get_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (DataError, ConfigError) as e:  # the user's to fix; anything else is a bug: its traceback shows
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()