"""
Sample text from a trained model: a train.py run folder (its ckpt.pt, else its model.safetensors), or either file.

    python sample.py --out-dir out-cpu
    python sample.py --out-dir out-cpu --prompt "The dragon" --num-samples 3 --temperature 0.9
    python sample.py --out-dir path/to/model.safetensors      # weights someone shared
"""

import argparse
import sys

import torch

from data import DataError, get_encoding
from extensions.generation import generate
from gam import ConfigError
from runtime.checkpoint import load_model
from runtime.hardware import pick_device


def get_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(), allow_abbrev=False,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out-dir", default="out", help="a train.py run folder, or its ckpt.pt or model.safetensors")
    p.add_argument("--prompt", default="Once upon a time", help="text to continue")
    p.add_argument("--num-samples", type=int, default=2, help="how many continuations")
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens per continuation")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=200, help="sample among the k likeliest tokens (0: all)")
    p.add_argument("--seed", type=int, default=1337, help="the same seed gives the same text")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), or a torch device")
    return p


def sample(cfg):
    """Print continuations of cfg.prompt, and return them."""
    model, train_config = load_model(cfg.out_dir)
    device = pick_device(cfg.device)
    model.to(device).eval()
    enc = get_encoding(train_config.get("tokenizer", "gpt2"))  # runs saved before --tokenizer: GPT-2
    ids = enc.encode_ordinary(cfg.prompt) or [enc.eot_token]
    idx = torch.tensor([ids] * cfg.num_samples, device=device)
    torch.manual_seed(cfg.seed)
    out = generate(model, idx, cfg.max_new_tokens, cfg.temperature, cfg.top_k or None)  # with the cache
    texts = [enc.decode(row.tolist()) for row in out]
    for text in texts:
        print(text, "\n" + "-" * 40)
    return texts


def main(argv=None):
    cfg = get_parser().parse_args(argv)
    try:
        return sample(cfg)
    except (DataError, ConfigError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
