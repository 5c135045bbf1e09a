"""The notebooks: committed with their outputs, so that every plot shows where people browse them, and each one
runs top to bottom in its quick mode (GAM_NOTEBOOK_SMALL=1), where every cell that draws must give an image.
The run happens on a copy in a temporary folder; the committed files are never rewritten.

Run: python -m pytest -q tests/test_notebooks.py
"""

import shutil
from pathlib import Path

import pytest
from conftest import needs_bpe, real_file

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
nbformat = pytest.importorskip("nbformat")


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def draws(cell):
    return "plt.show()" in cell.source


def images(cell):
    return sum("image/png" in out.get("data", {}) for out in cell.get("outputs", []))


def test_there_are_notebooks():
    assert [p.name for p in NOTEBOOKS] == ["01_gam_block.ipynb", "02_gates_and_memory.ipynb", "03_scaling.ipynb",
                                           "04_context_memory.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_shows_its_results(path):
    assert path.stat().st_size < 1.5 * 2**20, f"{path.name} is {path.stat().st_size:,} bytes"
    cells = code_cells(nbformat.read(path, as_version=4))
    assert [c.execution_count for c in cells] == list(range(1, len(cells) + 1)), "run top to bottom, then commit"
    assert not [o for c in cells for o in c.outputs if o.output_type == "error"]
    assert any(draws(c) for c in cells)
    for i, cell in enumerate(cells):
        assert images(cell) == draws(cell), f"{path.name}, code cell {i}: {images(cell)} images"
    assert "CONCLUSIONS" not in path.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_draws_in_quick_mode(path, tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    if "gates" in path.name:  # trains on TinyStories
        needs_bpe()
        real_file("tinystories", "TinyStories-train-head.txt")
    committed = path.read_bytes()
    nb = nbformat.read(path, as_version=4)
    for cell in code_cells(nb):
        cell.outputs = []
    work = tmp_path / "notebooks"
    work.mkdir()
    for source in ROOT.glob("*.py"):
        shutil.copy(source, tmp_path / source.name)
    for folder in ("extensions", "runtime"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setenv("GAM_NOTEBOOK_SMALL", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the notebook's own %matplotlib inline must draw
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(work)}}).execute()
    for i, cell in enumerate(code_cells(nb)):
        if draws(cell):
            assert images(cell) >= 1, f"{path.name}, code cell {i} draws but showed no image"
    assert path.read_bytes() == committed
