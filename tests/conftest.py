"""Shared test setup. Run the whole suite with: python -m pytest -q

This is the one place besides .ci/run that knows where the offline copies of the real data live (../shared,
beside the clone). A user's fresh clone has no such folder; the tests that need real data then skip.
"""

import os
from pathlib import Path

import pytest
import torch

from runtime.models import build_model

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def pytest_configure(config):
    # use ../shared when the caller set nothing, so a developer's plain `pytest` runs the real-data tests too
    if (SHARED / "data").is_dir():
        os.environ.setdefault("GAM_DATA_DIR", str(SHARED / "data"))
    if (SHARED / "tiktoken").is_dir():
        os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken"))
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """One --data-root for the whole session: a dataset is tokenized once, by the first test that asks for it, and
    read from the cache after (data.prepare re-tokenizes only where the documents asked for change)."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def real_file(*parts):
    """Path to a file in $GAM_DATA_DIR. Skips where the variable is unset (a fresh clone) and fails where it is
    set but the file is missing (CI must not silently skip)."""
    root = os.environ.get("GAM_DATA_DIR")
    if not root:
        pytest.skip("GAM_DATA_DIR is not set: no offline copy of the real data")
    path = Path(root, *parts)
    assert path.is_file(), f"GAM_DATA_DIR={root} is set but {path} is missing"
    return path


def needs_bpe():
    """Skip where tiktoken's GPT-2 files have no offline home (TIKTOKEN_CACHE_DIR unset); fail where it is set
    but empty."""
    root = os.environ.get("TIKTOKEN_CACHE_DIR")
    if not root:
        pytest.skip("TIKTOKEN_CACHE_DIR is not set: no offline copy of the GPT-2 BPE files")
    assert Path(root).is_dir() and any(Path(root).iterdir()), f"TIKTOKEN_CACHE_DIR={root} holds no BPE files"


# ------------------------------------------------------------------------------ tiny models, built by name

V = 97  # a small vocabulary keeps the tiny models fast


def tiny(kind, **kw):
    """A small model of each kind, built by name as train.py builds it, dropout off so two forward passes agree."""
    size = {"gam": {"n_slots": 16}, "transformer": {"n_head": 4}, "mamba": {}}[kind]
    return build_model(kind, **{"vocab_size": V, "block_size": 32, "n_layer": 2, "n_embd": 32, "dropout": 0.0,
                                **size, **kw})


ALL = [("gam", {}), ("gam", {"memory_read": "fused"}), ("gam", {"variant": "sum"}), ("gam", {"variant": "local"}), ("gam", {"variant": "global"}),
       ("gam", {"variant": "local-gated"}),
       ("gam", {"memory": "context", "n_head": 2, "chunk_size": 8}),
       ("gam", {"memory": "context-norm", "n_head": 2, "chunk_size": 8}),
       ("gam", {"memory": "bank+context", "n_head": 2, "chunk_size": 8}),
       ("transformer", {}), ("transformer", {"attn": "naive"}), ("transformer", {"attn_window": 4}),
       ("transformer", {"attn": "naive", "attn_window": 4}), ("transformer", {"positions": "rope"}),
       ("transformer", {"positions": "rope", "attn": "naive", "attn_window": 4}), ("mamba", {}), ("mamba", {"scan": "sequential"}),
       ("mamba", {"scan": "compiled", "scan_chunk": 8}), ("mamba", {"positions": "none"})]


IDS = [k + "".join(f"-{v}" for v in kw.values() if isinstance(v, str))
       + (f"-window{kw['attn_window']}" if "attn_window" in kw else "") for k, kw in ALL]


def n_params(model):
    return sum(p.numel() for p in model.parameters())  # parameters() counts the tied embedding once


def assert_same_values_and_gradients(out, ref, inputs, ref_inputs, rtol=None, atol=None):
    """out == ref, and the gradients of a random weighting of each at inputs and ref_inputs (paired lists) agree;
    a failure names the largest difference."""
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol, msg=lambda m: f"values differ: {m}")
    g = torch.randn_like(ref)
    for i, (a, b) in enumerate(zip(torch.autograd.grad(out, inputs, g, retain_graph=True),
                                   torch.autograd.grad(ref, ref_inputs, g, retain_graph=True))):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"gradient {i} differs: {m}")
