"""Shared test setup. Run the whole suite with: python -m pytest -q

This is the one place besides .ci/run that knows where the offline copies of the real data live (../shared,
beside the clone). A user's fresh clone has no such folder; the tests that need real data then skip.
"""

import os
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"


def pytest_configure(config):
    # use ../shared when the caller set nothing, so a developer's plain `pytest` runs the real-data tests too
    if (SHARED / "data").is_dir():
        os.environ.setdefault("GAM_DATA_DIR", str(SHARED / "data"))
    if (SHARED / "tiktoken").is_dir():
        os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken"))
    torch.set_num_threads(min(2, torch.get_num_threads()))


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
