"""train.py: a short real run on TinyStories, exact resume after a crash, sampling, clear errors.

Run: python -m pytest -q tests/test_train.py
"""

import json
import math

import pytest
import torch

import data
import train
from conftest import needs_bpe, real_file

SMALL = ["--n-layer", "2", "--n-embd", "64", "--n-slots", "32", "--n-head", "4", "--block-size", "64",
         "--batch-size", "8", "--lr", "3e-3", "--warmup-steps", "5", "--dropout", "0.1", "--log-every", "5",
         "--max-train-docs", "400", "--max-val-docs", "60"]


@pytest.fixture
def run(tmp_path):
    """Flags for a small run on the real TinyStories head, cached in tmp_path."""
    needs_bpe()
    real_file("tinystories", "TinyStories-train-head.txt")
    return lambda *extra: train.parse_args(
        SMALL + ["--data-root", str(tmp_path / "data"), "--out-dir", str(tmp_path / "out"), *extra])


def test_glibc_keeps_freed_memory_where_there_is_glibc():
    try:
        train.ctypes.CDLL("libc.so.6")
    except OSError:
        pytest.skip("no glibc here: train.py leaves the allocator alone")
    assert train.keep_freed_memory()


def test_lr_schedule_is_the_papers():
    cfg = train.parse_args(["--lr", "1e-3", "--warmup-steps", "10"])
    assert train.lr_at(0, cfg, 110) == 0.0  # the paper's LambdaLR starts at 0
    assert train.lr_at(5, cfg, 110) == pytest.approx(5e-4)
    assert train.lr_at(10, cfg, 110) == pytest.approx(1e-3)
    assert train.lr_at(60, cfg, 110) == pytest.approx(5e-4)
    assert train.lr_at(110, cfg, 110) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("model", ["gam", "transformer", "mamba"])
def test_a_short_real_run_learns(run, model):
    cfg = run("--model", model, "--max-steps", "40", "--eval-batches", "4")
    folder = data.prepare_from_args(cfg)
    val = data.TokenChunks(folder / "val.bin", cfg.block_size)
    torch.manual_seed(cfg.seed)
    untrained = train.build_model(cfg, 50257)
    initial = train.evaluate(untrained, val, cfg.batch_size, "cpu", train.nullcontext(), 4)
    records = train.train(cfg)
    final = records[-1]
    assert final["kind"] == "end" and final["step"] == 40
    assert final["val_loss"] < initial - 1.5, f"{model}: val loss {initial:.2f} -> {final['val_loss']:.2f}"
    assert final["val_ppl"] == pytest.approx(math.exp(final["val_loss"]))
    assert 0 < final["val_bpb"] < final["val_loss"]
    assert final["tokens_per_s"] > 0 and final["epoch_time_s"] > 0
    out = cfg.out_dir
    logged = [json.loads(line) for line in open(f"{out}/metrics.jsonl")]
    assert logged == records
    assert [r["step"] for r in logged if r["kind"] == "step"] == list(range(5, 41, 5))
    assert (train.Path(out) / "loss.png").stat().st_size > 0


def test_resume_after_a_crash_continues_exactly(run, monkeypatch):
    steps = ["--max-steps", "9", "--eval-batches", "2", "--save-every", "4"]
    straight = train.train(run(*steps))
    expected = torch.load(f"{run().out_dir}/ckpt.pt", weights_only=True)["model"]

    # the same run, killed after step 6 (its last checkpoint is from step 4), then resumed
    real_batches = data.TokenChunks.batches

    def crash_after_6(self, batch_size, order=None, start=0):
        for i, batch in enumerate(real_batches(self, batch_size, order, start)):
            if order is not None and i == 6:
                raise KeyboardInterrupt("killed")
            yield batch

    (train.Path(run().out_dir) / "ckpt.pt").unlink()
    (train.Path(run().out_dir) / "metrics.jsonl").unlink()
    monkeypatch.setattr(data.TokenChunks, "batches", crash_after_6)
    with pytest.raises(KeyboardInterrupt):
        train.train(run(*steps))
    assert torch.load(f"{run().out_dir}/ckpt.pt", weights_only=True)["step"] == 4
    monkeypatch.setattr(data.TokenChunks, "batches", real_batches)
    # --recompute changes memory, never values, so a resume may switch it on and still continue exactly
    resumed = train.train(train.parse_args(["--resume", "--out-dir", run().out_dir, "--max-steps", "9",
                                            "--recompute", "both"]))
    got = torch.load(f"{run().out_dir}/ckpt.pt", weights_only=True)["model"]
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)
    assert [r["step"] for r in resumed] == [r["step"] for r in straight]
    assert resumed[-1]["val_loss"] == pytest.approx(straight[-1]["val_loss"])


def test_sampling_from_a_checkpoint(run, capsys):
    train.train(run("--max-steps", "3", "--eval-batches", "1"))
    cfg = train.parse_args(["--sample", "--out-dir", run().out_dir, "--prompt", "Once upon a time",
                                         "--max-new-tokens", "12", "--num-samples", "2"])
    texts = train.sample(cfg)
    assert len(texts) == 2 and all(t.startswith("Once upon a time") for t in texts)
    assert train.sample(cfg) == texts, "the seed makes sampling repeatable"
    assert "Once upon a time" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--dataset", "no-such-corpus"], "unknown dataset"),
    (["--model", "transformer", "--n-embd", "30", "--n-head", "4"], "divisible"),
    (["--variant", "attention"], "variant"),
    (["--batch-size", "0"], "batch-size"),
    (["--sample", "--out-dir", "/nonexistent/run"], "no checkpoint"),
])
def test_bad_input_is_one_line_not_a_traceback(run, argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        train.main(SMALL + ["--data-root", run().data_root, "--max-steps", "1"] + argv)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_resuming_with_another_model_is_refused(run):
    train.train(run("--max-steps", "2", "--eval-batches", "1"))
    with pytest.raises(SystemExit, match="holds a gam run"):
        train.main(["--resume", "--out-dir", run().out_dir, "--model", "mamba"])
