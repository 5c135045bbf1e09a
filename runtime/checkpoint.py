"""
The files a train.py run leaves in its --out-dir, and what reads them back.

    ckpt.pt             all that --resume needs: weights, optimizer, step, RNG states, the run's flags. Tensors and
                        plain Python values only, read with torch.load(weights_only=True)
    model.safetensors   written when a run finishes: the weights alone, and the model's name, config and the run's
                        flags in its metadata. The file to share; sample.py and the notebooks read it where there
                        is no ckpt.pt
    metrics.jsonl       one JSON object per log line and evaluation

--resume continues a run exactly as it was: its flags come from ckpt.pt, except the few RESUME_MAY_CHANGE names.

Both are written under a temporary name and renamed, so a run killed while writing keeps the file it had. A file
that cannot be read is a one-line DataError that names it.
"""

import argparse
import dataclasses
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_model as load_safetensors
from safetensors.torch import save_model as save_safetensors

from data import DataError, atomic_write
from gam import ConfigError
from runtime.distributed import rng_states
from runtime.models import MODELS, build_model

# flags that --resume may change; everything else comes from the checkpoint so the run continues unchanged
RESUME_MAY_CHANGE = {"resume", "epochs", "max_steps", "device", "dtype", "compile", "log_every", "save_every",
                     "save_every_min", "eval_every", "eval_batches", "data_dir", "data_root", "out_dir", "recompute",
                     "keep_freed_memory", "peak_tflops"}
CHECKPOINT_KEYS = {"model", "optimizer", "model_config", "train_config", "step", "epoch", "batch_in_epoch",
                   "train_time_s", "world_size", "rng", "cuda_rng"}


@dataclasses.dataclass
class Progress:
    """Where a run stands, as its checkpoint keeps it: steps taken, the epoch (from 0) and the batch within it, and
    the seconds spent in training steps over all resumes, evaluation excluded."""
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    train_time_s: float = 0.0

    @classmethod
    def of(cls, ckpt):
        return cls() if ckpt is None else cls(*(ckpt[f.name] for f in dataclasses.fields(cls)))


def save_run(out_dir, raw_model, optimizer, cfg, at, device, rank, world):
    """ckpt.pt: all that --resume needs. Every process calls it (the RNG states of all are gathered); rank 0 writes."""
    rng, cuda_rng = rng_states(device, world)
    if rank == 0:
        save_checkpoint(Path(out_dir, "ckpt.pt"), {
            "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
            "model_config": dataclasses.asdict(raw_model.config), "train_config": vars(cfg), **vars(at),
            "world_size": world, "rng": rng, "cuda_rng": cuda_rng})


def restore(ckpt, model, optimizer, rank, device):
    """The model, optimizer and this process's RNG states as the checkpoint left them."""
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    torch.set_rng_state(ckpt["rng"][rank])
    if torch.device(device).type == "cuda" and ckpt["cuda_rng"] is not None:
        torch.cuda.set_rng_state(ckpt["cuda_rng"][rank])


def save_checkpoint(path, state):
    with atomic_write(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(out_dir):
    """The checkpoint in out_dir, read as data: tensors and plain Python values only (weights_only=True), so a
    file that would need arbitrary unpickling, which can run code, is refused before anything in it runs."""
    path = Path(out_dir, "ckpt.pt")
    if not path.is_file():
        raise DataError(f"no checkpoint at {path}: train first, or point --out-dir at a run")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch reports a bad file in many ways: UnpicklingError, RuntimeError, EOFError, ...
        if "weights only load failed" in str(e).lower() and "global" in str(e).lower():  # it names a callable
            raise DataError(f"{path} holds Python objects besides tensors, and loading them could run code: "
                            "refused. train.py writes only tensors and plain values; use checkpoints it wrote")
        raise DataError(f"{path} is not a readable checkpoint ({type(e).__name__}): it may be truncated or not "
                        "from train.py; restore a good copy or train again") from None
    if not isinstance(ckpt, dict) or not CHECKPOINT_KEYS <= ckpt.keys():
        raise DataError(f"{path} is not a train.py checkpoint: it lacks the model, optimizer or run state")
    return ckpt


def changed_flags(saved, cfg, names, may_change=RESUME_MAY_CHANGE):
    """Those of names (train_config keys) whose value in cfg differs from the saved run's, leaving out the flags
    that a resumed run may change."""
    return [k for k in names if k not in may_change and saved.get(k) != getattr(cfg, k, None)]


def resume(cfg, world, defaults):
    """The run in cfg.out_dir to continue: its checkpoint, and the flags it trains with, the saved run's over
    `defaults` (flags added since it was saved), with the flags of cfg.explicit (those given on the command line)
    that RESUME_MAY_CHANGE. Any other flag given with another value is a ConfigError, as is another model or number
    of processes."""
    ckpt = load_checkpoint(cfg.out_dir)
    saved, out_dir, explicit = ckpt["train_config"], cfg.out_dir, getattr(cfg, "explicit", [])
    if "model" in explicit and cfg.model != saved["model"]:
        raise ConfigError(f"{out_dir} holds a {saved['model']} run, not {cfg.model}: pass the matching --model or "
                          "another --out-dir")
    changed = changed_flags(saved, cfg, [k for k in explicit if k != "model"])
    if changed:
        raise ConfigError(f"--resume continues the run as it was; it cannot change --{changed[0].replace('_', '-')}")
    if ckpt["world_size"] != world:
        raise ConfigError(f"{out_dir} was trained by {ckpt['world_size']} process(es), not {world}: resume it "
                          "with as many (torchrun --nproc_per_node)")
    return argparse.Namespace(**{**vars(defaults), **saved, "out_dir": out_dir,  # where the run is now
                                 **{k: getattr(cfg, k) for k in explicit if k in RESUME_MAY_CHANGE}}), ckpt


def start_metrics(out_dir, resumed_step=None):
    """metrics.jsonl for a run starting in out_dir: emptied for a new run (resumed_step None); for a resumed one,
    its records up to the checkpoint's step, as a run killed after its last checkpoint logged steps that the
    resumed run logs again (a checkpoint copied without its metrics file resumes with none). Returns the records."""
    path = Path(out_dir, "metrics.jsonl")
    records = []
    if resumed_step is not None and path.is_file():
        records = [json.loads(line) for line in path.read_text().splitlines()]
        records = [r for r in records if r["step"] <= resumed_step]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def append_metrics(out_dir, record):
    with open(Path(out_dir, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")


def build(name, model_config, weights, path):
    """Model `name` with model_config, its weights filled by weights(model); a file that does not fit is a
    DataError."""
    try:
        model = build_model(name, **model_config)
        weights(model)
    except (ConfigError, TypeError, RuntimeError) as e:
        raise DataError(f"{path} does not fit this code's {name} ({type(e).__name__}): it was written by another "
                        "version of gam") from None
    return model


def model_from_checkpoint(ckpt, out_dir, **config_changes):
    """The model of a loaded checkpoint (from out_dir), on the CPU. config_changes replace fields of the saved model
    config that hold no weights (e.g. attn_window=16: the same weights, attending to a window)."""
    return build(ckpt["train_config"]["model"], {**ckpt["model_config"], **config_changes},
                 lambda model: model.load_state_dict(ckpt["model"]), Path(out_dir, "ckpt.pt"))


def save_weights(path, model, train_config):
    """model.safetensors: the weights, and as metadata (strings, as safetensors wants them) the model's name, its
    config and the run's flags. safetensors stores no tensor twice: the head, tied to the token embedding, is
    written once and tied again on loading."""
    metadata = {"model": train_config["model"], "model_config": json.dumps(dataclasses.asdict(model.config)),
                "train_config": json.dumps(train_config)}
    with atomic_write(path) as tmp:
        save_safetensors(model, str(tmp), metadata=metadata)


def load_weights(path):
    """The model in a model.safetensors (on the CPU) and the flags of the run that trained it."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        name, model_config, train_config = (metadata["model"], json.loads(metadata["model_config"]),
                                            json.loads(metadata["train_config"]))
    except Exception as e:  # a damaged header, or a safetensors file that gam did not write
        raise DataError(f"{path} is not a readable model.safetensors of gam ({type(e).__name__}): restore a good "
                        "copy, or export it again from a run") from None
    if name not in MODELS:
        raise DataError(f"{path} holds a {name!r} model, which this version of gam does not have")
    return build(name, model_config, lambda model: load_safetensors(model, str(path)), path), train_config


def load_model(source):
    """The trained model (on the CPU, in eval mode: dropout off, ready to sample) and its run's flags, from a run
    folder (its ckpt.pt, else its model.safetensors), or from either file."""
    source = Path(source)
    if source.suffix == ".safetensors" or source.is_dir() and not (source / "ckpt.pt").is_file() \
            and (source / "model.safetensors").is_file():
        model, flags = load_weights(source if source.suffix == ".safetensors" else source / "model.safetensors")
    else:
        folder = source.parent if source.name == "ckpt.pt" else source
        ckpt = load_checkpoint(folder)
        model, flags = model_from_checkpoint(ckpt, folder), ckpt["train_config"]
    return model.eval(), flags
