"""bench.py: every timing benchmark end to end at a tiny size.

Run: python -m pytest -q tests/test_bench.py
"""

import csv

import pytest
import torch

import bench
import experiments


def rows_of(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_scale_writes_table_csv_and_plot(tmp_path):
    rows = bench.main(["scale", "--lengths", "16,128", "--batch-size", "1", "--n-embd", "32", "--n-head", "2",
                       "--repeats", "1", "--bench-dir", str(tmp_path), "--device", "cpu"])
    assert {r["block"] for r in rows} == {"gam", "gam-context", "transformer", "transformer-naive", "mamba"}
    assert all(r["ms"] > 0 and r["tokens_per_s"] > 0 for r in rows)
    assert len(rows_of(tmp_path / "scale" / "scale.csv")) == 10
    md = (tmp_path / "scale" / "scale.md").read_text()
    assert "time(128)/time(16)" in md
    assert "mamba / gam at T 128" in md and all(r["first call (s)"] >= 0 for r in rows)
    assert (tmp_path / "scale" / "scale.png").stat().st_size > 0


def memory_of(spec):
    cpu = torch.device("cpu")
    return bench.peak_memory_mb(bench.make_step, (spec, cpu), cpu)


@pytest.mark.slow
def test_peak_memory_follows_what_a_block_stores():
    small = memory_of(bench.Step("block", "gam", 2, 64, 128, 4))
    if small is None:
        pytest.skip("no /proc/self/status here")
    big = {k: memory_of(bench.Step("block", k, 2, 4096, 128, 4))
           for k in ("paper-gam", "gam", "gam-fused", "gam-recompute-mixer")}
    # one (B, T, C) tensor is 4 MiB here; the block with the fused read holds about 19 of them at its peak
    assert 40 < big["gam-fused"] - small < 200, (small, big)
    # the formula of gam.py keeps the (B, T, S) read weights for backward (S = 4C here: 16 MiB), the fused read not
    assert 12 < big["gam"] - big["gam-fused"] < 24, big
    # the official block also keeps the read weights and the GELU's output; recomputing the mixer keeps about 7
    # (B, T, C) tensors fewer
    assert big["paper-gam"] > 1.1 * big["gam-fused"] > 1.1 * 1.2 * big["gam-recompute-mixer"], big


@pytest.mark.slow
def test_speed_compares_with_the_official_block_and_reports_mfu(tmp_path):
    rows = bench.main(["speed", "--lengths", "16", "--batch-size", "1", "--model-batch-size", "1",
                       "--mfu-length", "16", "--scan-length", "12", "--scan-width", "16", "--scan-batch", "1",
                       "--step-batch-size", "1", "--step-length", "16", "--warmup", "0", "--repeats", "1",
                       "--bench-dir", str(tmp_path), "--device", "cpu"])
    whats = [r["what"] for r in rows]
    assert "block: gam.py / official" in whats and "model: gam.py --recompute mixer / official" in whats
    bound = next(r for r in rows if r["what"].startswith("block: matmuls alone / official"))
    assert float(bound["tokens_per_s"].rstrip("x")) > 0
    assert [w for w in whats if w.startswith("MFU")] == [f"MFU {m} (paper size, T 16)"
                                                          for m in ("gam", "transformer", "mamba")]
    assert all(0 < float(r["MFU"].rstrip("%")) < 100 for r in rows if "MFU" in r)
    steps = [r for r in rows if r["what"].startswith("train step")]
    assert [r["what"] for r in steps] == [f"train step: {t.label}" for t in bench.TRAININGS] + \
        ["train step: gam.py as train.py runs it / official code"]
    assert all(r["ms"] > 0 for r in steps[:-1]), "each setting ran in its own process"
    assert float(steps[-1]["tokens_per_s"].rstrip("x")) > 0
    assert (tmp_path / "speed" / "speed.md").is_file()


@pytest.mark.slow
def test_gpu_checks_run_their_cpu_path(tmp_path):
    # one model: each compiled model costs the CPU tens of seconds of C++ compilation
    rows = bench.main(["gpu", "--device", "cpu", "--models", "gam", "--n-layer", "1", "--n-embd", "32",
                       "--n-head", "2", "--vocab-size", "64", "--step-batch-size", "2", "--step-length", "16",
                       "--steps", "6", "--n-batches", "1", "--lr", "1e-2", "--blocks", "gam,mamba",
                       "--lengths", "16,128", "--batch-size", "1", "--warmup", "0", "--repeats", "1",
                       "--peak-tflops", "1", "--bench-dir", str(tmp_path)])
    steps, blocks = rows[:3], rows[3:]
    assert [(r["model"], r["setting"]) for r in steps] == [("gam", s.label) for s in bench.GPU_SETTINGS.values()]
    for r in steps:
        assert float(r["largest loss gap to fp32"]) < 0.05, r  # bf16 and compile train as fp32 does
        assert r["last loss"] < r["first loss"] and r["MFU (bf16 peak)"].endswith("%")
    assert {(r["block"], r["T"]) for r in blocks} == {(b, T) for b in ("gam", "mamba") for T in (16, 128)}
    assert (tmp_path / "gpu" / "gpu.md").is_file() and (tmp_path / "scale" / "scale.png").is_file()


def test_unknown_benchmark_models_are_refused():
    with pytest.raises(ValueError, match="unknown model or block 'gam-fast'"):
        bench.make_block("gam-fast", 32, 4)
    with pytest.raises(ValueError, match="unknown model or block 'mambda'"):
        bench.make_model("mambda", 16)
    with pytest.raises(SystemExit, match="unknown variant 'gate': use gated, sum, local, global, local-gated"):
        experiments.main(["ablate", "--variants", "gated,gate"])
    assert experiments.model_flags("gam-context-norm") == {"model": "gam", "memory": "context-norm"}
    assert experiments.model_flags("mamba-compiled-nopos") == {"model": "mamba", "scan": "compiled", "scan_chunk": 32,
                                                               "positions": "none"}
    # a memory needs its gam- prefix; bank is plain gam; a Mamba label names its scan before its positions
    for label in ("context", "gam-bank", "transformer-window0", "mamba-nopos-compiled"):
        with pytest.raises(ValueError, match=f"unknown model '{label}'"):
            experiments.model_flags(label)


def test_generate_times_cached_and_uncached(tmp_path):
    rows = bench.main(["generate", "--models", "gam,transformer,mamba", "--contexts", "4,8", "--new-tokens", "2",
                       "--bench-dir", str(tmp_path), "--device", "cpu"])
    assert [(r["model"], r["context"]) for r in rows] == [(m, c) for m in ("gam", "transformer", "mamba")
                                                          for c in (4, 8)]
    assert all(r["cached ms/token"] > 0 and r["uncached ms/token"] > 0 for r in rows)
    assert (tmp_path / "generate" / "generate.png").stat().st_size > 0
