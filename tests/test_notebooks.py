"""Every notebook runs top to bottom without error, in its quick mode (GAM_NOTEBOOK_SMALL=1).

The notebooks are committed without outputs; this test executes them in a temporary copy and keeps nothing.
Run: python -m pytest -q tests/test_notebooks.py
"""

import shutil
from pathlib import Path

import pytest

from conftest import needs_bpe, real_file

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert [p.name for p in NOTEBOOKS] == ["01_gam_block.ipynb", "02_gates_and_memory.ipynb", "03_scaling.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    if "gates" in path.name:  # trains on TinyStories
        needs_bpe()
        real_file("tinystories", "TinyStories-train-head.txt")
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit notebooks without outputs"
    work = tmp_path / "notebooks"
    work.mkdir()
    for name in ("gam.py", "baselines.py", "data.py", "train.py", "bench.py"):
        shutil.copy(path.parents[1] / name, tmp_path / name)
    monkeypatch.setenv("GAM_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(work)}}).execute()
