"""train.py: a short real run on TinyStories, exact resume after a crash or a signal, gradient accumulation,
several processes through torchrun (gloo), sampling (sample.py), shared weights (model.safetensors),
checkpoints read as data, clear errors.

Run: python -m pytest -q tests/test_train.py
"""

import json
import math
import os
import signal
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import needs_bpe, real_file

import data
import sample
import train
from runtime import checkpoint, hardware

ROOT = Path(__file__).resolve().parents[1]

# fp32 pinned: --dtype auto is bf16 on a CPU with AMX or AVX512-BF16, and these tests compare weights at fp32
# tolerances; the bf16 path has its own test below
SMALL = ["--n-layer", "2", "--n-embd", "64", "--n-slots", "32", "--n-head", "4", "--block-size", "64",
         "--batch-size", "8", "--lr", "3e-3", "--warmup-steps", "5", "--dropout", "0.1", "--log-every", "5",
         "--max-train-docs", "400", "--max-val-docs", "60", "--dtype", "float32"]


@pytest.fixture
def run(tmp_path, data_root):
    """Flags for a small run on the real TinyStories head, tokenized once per session."""
    needs_bpe()
    real_file("tinystories", "TinyStories-train-head.txt")
    return lambda *extra: train.parse_args(
        SMALL + ["--data-root", str(data_root), "--out-dir", str(tmp_path / "out"), *extra])


def test_glibc_keeps_freed_memory_where_there_is_glibc():
    try:
        hardware.ctypes.CDLL("libc.so.6")
    except OSError:
        pytest.skip("no glibc here: train.py leaves the allocator alone")
    assert hardware.keep_freed_memory()


def test_lr_schedule_is_the_papers():
    cfg = train.parse_args(["--lr", "1e-3", "--warmup-steps", "10"])
    assert train.lr_at(0, cfg, 110) == 0.0  # the paper's LambdaLR starts at 0
    assert train.lr_at(5, cfg, 110) == pytest.approx(5e-4)
    assert train.lr_at(10, cfg, 110) == pytest.approx(1e-3)
    assert train.lr_at(60, cfg, 110) == pytest.approx(5e-4)
    assert train.lr_at(110, cfg, 110) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("units,expected", [((True, False), ("bfloat16", "this CPU has AMX")),
                                             ((False, True), ("bfloat16", "this CPU has AVX512-BF16")),
                                             ((False, False), ("float32", "this CPU has no bf16 matrix units"))])
def test_auto_dtype_on_a_cpu_follows_its_bf16_units(units, expected, monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: units[0])
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: units[1])
    assert hardware.pick_dtype("cpu", "auto") == expected
    assert hardware.pick_dtype("cpu", "float32") == ("float32", "as --dtype asks")
    assert isinstance(hardware.autocast_for("cpu", "auto"), torch.autocast) == (expected[0] == "bfloat16")


@pytest.mark.slow
def test_compiled_bf16_training_on_a_cpu_has_the_gradients_of_eager():
    # at this shape the 512-bit vector code of torch 2.13's inductor gave NaN LayerNorm gradients on an AVX-512 CPU;
    # hardware.cpu_bf16_vectors, which train.py calls, asks for 256-bit code
    cfg = train.parse_args(["--model", "gam", "--n-layer", "1", "--n-embd", "128", "--n-slots", "128",
                            "--block-size", "256", "--dropout", "0"])
    idx = torch.randint(0, 256, (8, 257), generator=torch.Generator().manual_seed(0))
    grads = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = train.model_of(cfg, 256)
        hardware.cpu_bf16_vectors("cpu", "bfloat16")
        net = torch.compile(model) if compiled else model
        with hardware.autocast_for("cpu", "bfloat16"):
            _, loss = net(idx[:, :-1], idx[:, 1:])
        loss.backward()
        grads.append({n: p.grad.float() for n, p in model.named_parameters()})
    for name, g in grads[1].items():
        assert torch.isfinite(g).all(), name
        assert F.cosine_similarity(g.flatten(), grads[0][name].flatten(), dim=0) > 0.99, name


@pytest.mark.parametrize("model", ["gam", pytest.param("transformer", marks=pytest.mark.slow), pytest.param("mamba", marks=pytest.mark.slow)])
def test_a_short_real_run_learns(run, model):
    cfg = run("--model", model, "--max-steps", "40", "--eval-batches", "4")
    folder = data.prepare_from_args(cfg)
    val = data.TokenChunks(folder / "val.bin", cfg.block_size)
    torch.manual_seed(cfg.seed)
    untrained = train.model_of(cfg, 50257)
    initial = train.evaluate(untrained, val, cfg.batch_size, "cpu", nullcontext(), 4)
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
    assert [r["step"] for r in logged if r["kind"] == "step"] == [1, *range(5, 41, 5)]  # the first step at once
    assert (train.Path(out) / "loss.png").stat().st_size > 0


REAL_BATCHES = data.TokenChunks.batches


def crash_after_6(self, batch_size, order=None, start=0, min_last=1):
    """TokenChunks.batches, but a training pass (one with an order) dies before its 7th batch, as if killed."""
    for i, batch in enumerate(REAL_BATCHES(self, batch_size, order, start, min_last)):
        if order is not None and i == 6:
            raise KeyboardInterrupt("killed")
        yield batch


@pytest.mark.parametrize("save_every", [4, 3])
def test_resume_after_a_crash_continues_exactly(run, monkeypatch, save_every):
    steps = ["--max-steps", "9", "--eval-batches", "2", "--save-every", str(save_every)]
    straight = train.train(run(*steps))
    expected = torch.load(f"{run().out_dir}/ckpt.pt", weights_only=True)["model"]
    metrics = (train.Path(run().out_dir) / "metrics.jsonl").read_text()

    # the same run, killed after step 6 (its last checkpoint is from step 4, or 6), then resumed
    (train.Path(run().out_dir) / "ckpt.pt").unlink()
    (train.Path(run().out_dir) / "metrics.jsonl").unlink()
    monkeypatch.setattr(data.TokenChunks, "batches", crash_after_6)
    with pytest.raises(KeyboardInterrupt):
        train.train(run(*steps))
    assert torch.load(f"{run().out_dir}/ckpt.pt", weights_only=True)["step"] == 6 // save_every * save_every
    monkeypatch.undo()
    # --recompute changes memory, never values, so a resume may switch it on and still continue exactly
    resumed = train.train(train.parse_args(["--resume", "--out-dir", run().out_dir, "--max-steps", "9",
                                            "--recompute", "both"]))
    got = torch.load(f"{run().out_dir}/ckpt.pt", weights_only=True)["model"]
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)
    assert [r["step"] for r in resumed] == [r["step"] for r in straight]
    assert resumed[-1]["val_loss"] == pytest.approx(straight[-1]["val_loss"])
    # metrics.jsonl holds the records of the uninterrupted run, each once (times aside)
    kinds = [[(r["kind"], r["step"]) for r in map(json.loads, text.splitlines())]
             for text in (metrics, (train.Path(run().out_dir) / "metrics.jsonl").read_text())]
    assert kinds[1] == kinds[0]


def test_a_checkpoint_without_its_metrics_file_resumes(run):
    train.train(run("--max-steps", "2", "--eval-batches", "1"))
    (Path(run().out_dir) / "metrics.jsonl").unlink()  # e.g. only ckpt.pt was copied to another machine
    records = train.train(train.parse_args(["--resume", "--out-dir", run().out_dir, "--max-steps", "4"]))
    assert records[-1]["step"] == 4
    assert [json.loads(line)["step"] for line in open(Path(run().out_dir, "metrics.jsonl"))][-1] == 4


@pytest.mark.parametrize("flags,extra", [
    (["--model", "gam"], "read"), (["--model", "gam", "--variant", "sum"], "read"),
    (["--model", "gam", "--variant", "local"], None), (["--model", "gam", "--memory", "context"], None),
    (["--model", "transformer"], 64), (["--model", "transformer", "--attn-window", "8"], 8),
    (["--model", "mamba"], None)])
def test_mfu_counts_the_matmuls_each_model_has(flags, extra):
    # 2 layers, C 32, S 16, T 64: besides its Linears a model multiplies h by M (S C per token and layer, for the
    # scores and again for the values) or attends (T C, or W C with a window, twice); nothing else is counted
    cfg = train.parse_args(["--n-layer", "2", "--n-embd", "32", "--n-slots", "16", "--n-head", "4",
                            "--block-size", "64", *flags])
    model = train.model_of(cfg, 100)
    linear = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))
    per_layer = {"read": 2 * 16 * 32, None: 0}.get(extra, 2 * (extra or 0) * 32)
    assert hardware.flops_per_token(model, 64) == 6 * (linear + 2 * per_layer)


def sample_flags(*argv):
    return sample.get_parser().parse_args(list(argv))


def test_sampling_from_a_checkpoint(run, capsys):
    train.train(run("--max-steps", "3", "--eval-batches", "1"))
    cfg = sample_flags("--out-dir", run().out_dir, "--prompt", "Once upon a time", "--max-new-tokens", "12",
                       "--num-samples", "2")
    texts = sample.sample(cfg)
    assert len(texts) == 2 and all(t.startswith("Once upon a time") for t in texts)
    assert sample.sample(cfg) == texts, "the seed makes sampling repeatable"
    assert "Once upon a time" in capsys.readouterr().out


def test_the_readmes_python_example_runs_on_a_trained_model(run, tmp_path):
    train.train(run("--max-steps", "2", "--eval-batches", "1"))
    readme = (ROOT / "README.md").read_text()
    example = readme.split("## Use a trained model from Python", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert '"out-cpu"' in example
    example = example.replace('"out-cpu"', repr(run().out_dir))
    done = subprocess.run([sys.executable, "-c", example], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    text, shapes = done.stdout.rstrip("\n").rsplit("\n", 1)
    assert text.startswith("Once upon a time") and len(text) > len("Once upon a time")
    assert shapes == "torch.Size([1, 4, 64]) torch.Size([1, 4, 32])", shapes  # (1, T, C), (1, T, S) of SMALL


def test_shared_weights_give_the_same_logits_in_a_fresh_process(run, tmp_path):
    train.train(run("--max-steps", "3", "--eval-batches", "1"))
    out = Path(run().out_dir)
    model, flags = checkpoint.load_model(out)  # from ckpt.pt
    assert not model.training, "a loaded model is ready to sample: dropout off"
    idx = torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(idx)[0]
    shared = tmp_path / "shared" / "model.safetensors"  # the file alone, away from its run folder
    shared.parent.mkdir()
    shared.write_bytes((out / "model.safetensors").read_bytes())
    torch.save(idx, tmp_path / "idx.pt")
    code = ("import sys, torch; from runtime.checkpoint import load_model; model, flags = load_model(sys.argv[1]); "
            "assert model.wte.weight is model.lm_head.weight, 'the head is tied to the embedding again'; "
            "assert not model.training; torch.save((model(torch.load(sys.argv[2]))[0].detach(), flags), sys.argv[3])")
    done = subprocess.run([sys.executable, "-c", code, str(shared), str(tmp_path / "idx.pt"), str(tmp_path / "o.pt")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    logits, shared_flags = torch.load(tmp_path / "o.pt", weights_only=True)
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)
    assert shared_flags == flags and flags["model"] == "gam"
    # sample.py reads a run folder that holds only the weights
    (out / "ckpt.pt").unlink()
    cfg = sample_flags("--out-dir", str(out), "--max-new-tokens", "5", "--num-samples", "1")
    assert sample.sample(cfg)[0].startswith("Once upon a time")


@pytest.mark.parametrize("damage", [lambda b: b[: len(b) // 2], lambda b: b"", lambda b: b"not safetensors"])
def test_a_damaged_safetensors_file_is_a_one_line_error(run, damage):
    train.train(run("--max-steps", "1", "--eval-batches", "1"))
    path = Path(run().out_dir, "model.safetensors")
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(SystemExit) as e:
        sample.main(["--out-dir", str(path)])
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_sampling_without_a_run_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match=f"no checkpoint at {tmp_path / 'ckpt.pt'}"):
        sample.main(["--out-dir", str(tmp_path)])


def test_a_bf16_run_on_bytes_learns_and_samples_text(tmp_path, capsys):
    # the path --dtype auto takes on a CPU with bf16 units, run on every CPU: at vocabulary 256 it is quick even
    # where bf16 is emulated
    real_file("tinystories", "TinyStories-train-head.txt")
    cfg = train.parse_args(SMALL + ["--tokenizer", "bytes", "--dtype", "bfloat16", "--max-steps", "40",
                                    "--eval-batches", "4", "--data-root", str(tmp_path / "data"),
                                    "--out-dir", str(tmp_path / "out")])
    records = train.train(cfg)
    evals = [r for r in records if "val_loss" in r]
    assert "bfloat16 (as --dtype asks)" in capsys.readouterr().out
    assert evals[-1]["val_loss"] < math.log(256) - 2, f"val loss {evals[-1]['val_loss']:.2f} after 40 steps"
    assert 0 < evals[-1]["val_bpb"] == pytest.approx(evals[-1]["val_loss"] / math.log(2), rel=0.01)
    texts = sample.sample(sample_flags("--out-dir", cfg.out_dir, "--max-new-tokens", "40", "--temperature", "1.0"))
    assert all(t.startswith("Once upon a time") and len(t.encode()) >= 40 for t in texts)


@pytest.mark.parametrize("argv,message", [
    (["--dataset", "no-such-corpus"], "does not exist"),
    (["--dataset", "corpus/missing.txt"], "no such file"),
    (["--grad-accum", "0"], "grad-accum"),
    (["--model", "transformer", "--n-embd", "30", "--n-head", "4"], "divisible"),
    (["--variant", "attention"], "variant"),
    (["--batch-size", "0"], "batch-size"),
])
def test_bad_input_is_one_line_not_a_traceback(run, argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        train.main(SMALL + ["--data-root", run().data_root, "--max-steps", "1"] + argv)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_bug_in_an_edited_model_keeps_its_traceback(run, monkeypatch):
    # a ValueError that is not the project's ConfigError (here: from a model someone edited) is not turned into
    # a one-line "error:", which would hide where it came from
    def broken(cfg, vocab_size):
        raise ValueError("operands could not be broadcast together")

    monkeypatch.setattr(train, "model_of", broken)
    with pytest.raises(ValueError, match="broadcast"):
        train.main(SMALL + ["--data-root", run().data_root, "--max-steps", "1"])


def test_resuming_with_another_model_is_refused(run):
    train.train(run("--max-steps", "2", "--eval-batches", "1"))
    with pytest.raises(SystemExit, match="holds a gam run"):
        train.main(["--resume", "--out-dir", run().out_dir, "--model", "mamba"])


# ------------------------------------------------------------------------------------ checkpoints are data

class RunsCode:
    """Pickles as a call of os.system: what a booby-trapped checkpoint would hold."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(run, tmp_path):
    train.train(run("--max-steps", "1", "--eval-batches", "1"))
    path = Path(run().out_dir, "ckpt.pt")
    ckpt = torch.load(path, weights_only=True)
    marker = tmp_path / "the-payload-ran"
    torch.save({**ckpt, "extra": RunsCode(marker)}, path)
    for main, argv in ((sample.main, ["--out-dir", run().out_dir]),
                       (train.main, ["--resume", "--out-dir", run().out_dir])):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert "could run code: refused" in str(e.value) and str(path) in str(e.value)
        assert "\n" not in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize("damage,message", [
    (lambda b: b[: len(b) // 2], "not a readable checkpoint"),
    (lambda b: b"", "not a readable checkpoint"),
    (lambda b: b"step,loss\n1,10.9\n", "not a readable checkpoint"),
    (None, "not a train.py checkpoint"),
])
def test_damaged_or_foreign_checkpoints_are_one_line_errors(run, damage, message):
    train.train(run("--max-steps", "1", "--eval-batches", "1"))
    path = Path(run().out_dir, "ckpt.pt")
    if damage is None:
        torch.save({"weights": torch.zeros(3)}, path)  # a real torch file, of something else
    else:
        path.write_bytes(damage(path.read_bytes()))
    before = path.read_bytes()
    for main, argv in ((sample.main, ["--out-dir", run().out_dir]),
                       (train.main, ["--resume", "--out-dir", run().out_dir])):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert message in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)
    assert path.read_bytes() == before, "a failed load changes nothing on disk"


# --------------------------------------------------------------------- stopping, progress, accumulation

def test_checkpoints_by_wall_time(run, monkeypatch):
    monkeypatch.setattr(data.TokenChunks, "batches", crash_after_6)
    with pytest.raises(KeyboardInterrupt):
        train.train(run("--max-steps", "9", "--save-every-min", "1e-9"))  # due after every step
    assert torch.load(f"{run().out_dir}/ckpt.pt", weights_only=True)["step"] == 6


def test_log_shows_the_step_batch_eta_and_mfu(run, capsys):
    records = train.train(run("--max-steps", "6", "--grad-accum", "2", "--eval-batches", "1", "--peak-tflops", "1"))
    out = capsys.readouterr().out
    assert "a step: 8 x 2 grad-accum x 1 process = 16 sequences = 1,024 tokens" in out
    steps = [r for r in records if r["kind"] == "step"]
    assert steps[0]["step"] == 1 and "(1/6)" in out  # a line after the very first step
    assert all(0 < r["mfu"] < 1 and r["eta_s"] >= 0 for r in steps)
    assert " | ETA " in out and " | MFU " in out


def test_grad_accum_gives_the_update_of_a_larger_batch(run, tmp_path):
    common = ["--max-steps", "4", "--dropout", "0", "--eval-batches", "1"]
    train.train(run("--batch-size", "8", *common, "--out-dir", str(tmp_path / "big")))
    train.train(run("--batch-size", "4", "--grad-accum", "2", *common, "--out-dir", str(tmp_path / "accum")))
    big, accum = (torch.load(tmp_path / d / "ckpt.pt", weights_only=True)["model"] for d in ("big", "accum"))
    for name in big:
        torch.testing.assert_close(accum[name], big[name], rtol=1e-5, atol=1e-6, msg=name)



def launch(argv, threads):
    """A train.py process (or torchrun's) in its own session, its output on a pipe; torch's threads fixed, so its
    sums are the same as this process's."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def signal_after(proc, text, sig):
    """Send sig to proc's session once its output shows text; return all the output."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if text in line:
            os.killpg(proc.pid, sig)
            break
    out, _ = proc.communicate(timeout=300)
    return "".join(lines) + out


@pytest.mark.slow
def test_a_signal_finishes_the_step_saves_and_resume_continues_exactly(run, tmp_path):
    flags = ["--max-steps", "10", "--log-every", "1", "--eval-batches", "2"]
    train.train(run(*flags))
    expected = torch.load(f"{run().out_dir}/ckpt.pt", weights_only=True)["model"]

    stopped = tmp_path / "stopped"
    argv = [sys.executable, "train.py", *[str(a) for a in SMALL], "--data-root", run().data_root, "--out-dir",
            str(stopped), *flags]
    proc = launch(argv, torch.get_num_threads())
    out = signal_after(proc, "(3/10)", signal.SIGINT)
    assert proc.returncode == 128 + signal.SIGINT, out
    assert "stopped by SIGINT after step" in out and "--resume --out-dir" in out
    ckpt = torch.load(stopped / "ckpt.pt", weights_only=True)
    assert 3 <= ckpt["step"] < 10
    records = train.train(train.parse_args(["--resume", "--out-dir", str(stopped)]))
    assert records[-1]["step"] == 10
    # the training time of the stopped process carries over: train_time_s counts the whole run's steps
    assert records[-1]["train_time_s"] > ckpt["train_time_s"] > 0
    got = torch.load(stopped / "ckpt.pt", weights_only=True)["model"]
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_two_processes_by_torchrun_equal_one_with_grad_accum_and_resume_exactly(run, tmp_path):
    common = ["--batch-size", "4", "--max-steps", "6", "--dropout", "0", "--eval-batches", "1", "--log-every", "1",
              "--data-root", run().data_root]
    train.train(run(*common, "--grad-accum", "2", "--out-dir", str(tmp_path / "one")))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py"]
    small = [str(a) for a in SMALL]
    proc = launch([*torchrun, *small, *common, "--out-dir", str(tmp_path / "two")], threads=1)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "x 2 processes" in out and out.count("epoch 1/5 step 6/") == 1, "rank 0 alone logs"
    one, two = (torch.load(tmp_path / d / "ckpt.pt", weights_only=True) for d in ("one", "two"))
    assert two["world_size"] == 2 and len(two["rng"]) == 2
    for name in one["model"]:
        torch.testing.assert_close(two["model"][name], one["model"][name], rtol=1e-4, atol=1e-5, msg=name)

    # the same 2-process run, stopped by SIGTERM (as a scheduler would), then resumed by torchrun
    proc = launch([*torchrun, *small, *common, "--out-dir", str(tmp_path / "resumed")], threads=1)
    out = signal_after(proc, "(2/6)", signal.SIGTERM)
    assert "stopped by SIGTERM" in out, out
    assert 2 <= torch.load(tmp_path / "resumed" / "ckpt.pt", weights_only=True)["step"] < 6
    proc = launch([*torchrun, "--resume", "--out-dir", str(tmp_path / "resumed")], threads=1)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    resumed = torch.load(tmp_path / "resumed" / "ckpt.pt", weights_only=True)["model"]
    for name in resumed:
        torch.testing.assert_close(resumed[name], two["model"][name], rtol=0, atol=0, msg=name)
