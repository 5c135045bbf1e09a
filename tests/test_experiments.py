"""experiments.py: every training experiment end to end at a tiny size, the bigram floor, the MQAR generator, and
the GPU script's CPU path.

Run: python -m pytest -q tests/test_experiments.py
"""

import csv
import json
import math
import os
import re
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import needs_bpe, real_file

import experiments
import train
from data import TokenChunks, mqar, prepare_from_args
from runtime import checkpoint


def rows_of(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("command", ["compare", pytest.param("ablate", marks=pytest.mark.slow)])
def test_training_tables_run_end_to_end(command, tmp_path, data_root):
    needs_bpe()
    real_file("tinystories", "TinyStories-train-head.txt")
    tiny = ["--n-layer", "1", "--n-embd", "32", "--n-slots", "16", "--n-head", "2", "--block-size", "32",
            "--batch-size", "4", "--max-steps", "3", "--eval-batches", "2", "--max-train-docs", "50",
            "--max-val-docs", "20", "--warmup-steps", "1", "--log-every", "1", "--eval-every", "1", "--seeds", "2",
            "--data-root", str(data_root), "--bench-dir", str(tmp_path)]
    rows = experiments.main([command, *tiny])
    labels = [r["model"] for r in rows]
    expected = ["gam", "transformer", "mamba"] if command == "compare" else \
        ["gam-gated", "gam-sum", "gam-local", "gam-global", "gam-local-gated"]
    assert labels[:-1] == expected and labels[-1].startswith("bigram floor")
    assert all(r["seeds"] == 2 and "±" in r["final val ppl"] for r in rows[:-1])
    assert len(rows_of(tmp_path / command / f"{command}.csv")) == len(expected) + 1
    assert (tmp_path / command / f"{command}.png").stat().st_size > 0
    assert len(list((tmp_path / command).glob("*-seed*/ckpt.pt"))) == 2 * len(expected)
    # each model after the first says how far its final val bpb is from the first model's, and whether that is
    # within two seed-sigmas (no difference), and from which step its mean curve stays below the first model's
    first = expected[0]
    assert all(re.fullmatch(r"[+-]\d\.\d{4}( \(within 2 seed-sigmas\))?", r[f"bpb minus {first}'s"])
               for r in rows[1:-1])
    assert all(r[f"below {first} from"] in ("never", "throughout") or r[f"below {first} from"].startswith("step ")
               for r in rows[1:-1])
    # the finished runs are read back, not trained again; a run of other flags in the folder is refused
    again = experiments.main([command, *tiny])
    assert [r["final val ppl"] for r in again] == [r["final val ppl"] for r in rows]
    with pytest.raises(SystemExit, match="holds a run with --lr 0.0003, not 0.001: pass another --bench-dir"):
        experiments.main([command, *tiny, "--lr", "1e-3"])
    # so is one of another budget, which train.py --resume would accept: its numbers are not this table's
    for flag, value in (("--max-steps", "5"), ("--eval-batches", "3")):
        with pytest.raises(SystemExit, match=f"holds a run with {flag} .*, not {value}: pass another --bench-dir"):
            experiments.main([command, *tiny, flag, value])


def test_ablate_reads_back_compares_gam_runs_as_its_gated_ones(tmp_path, data_root):
    # RESULTS.md's workflow: Table 1's GAM runs, linked into ablate/, are Table 3's gated rows, not trained again
    needs_bpe()
    real_file("tinystories", "TinyStories-train-head.txt")
    tiny = ["--n-layer", "1", "--n-embd", "32", "--n-slots", "16", "--n-head", "2", "--block-size", "32",
            "--batch-size", "4", "--max-steps", "2", "--eval-batches", "1", "--max-train-docs", "50",
            "--max-val-docs", "20", "--seeds", "1", "--data-root", str(data_root),
            "--bench-dir", str(tmp_path)]
    compared = experiments.main(["compare", "--models", "gam", *tiny])
    (tmp_path / "ablate").mkdir()
    (tmp_path / "ablate" / "gam-gated-seed1337").symlink_to(tmp_path / "compare" / "gam-seed1337")
    ablated = experiments.main(["ablate", "--variants", "gated", *tiny])
    assert ablated[0]["final val ppl"] == compared[0]["final val ppl"]


def test_compare_trains_each_model_at_its_own_learning_rate_where_asked(tmp_path, data_root):
    needs_bpe()
    real_file("tinystories", "TinyStories-train-head.txt")
    tiny = ["--n-layer", "1", "--n-embd", "32", "--n-slots", "16", "--n-head", "2", "--block-size", "32",
            "--batch-size", "4", "--max-steps", "2", "--eval-batches", "1", "--max-train-docs", "50",
            "--max-val-docs", "20", "--seeds", "1", "--data-root", str(data_root), "--bench-dir", str(tmp_path)]
    rows = experiments.main(["compare", "--models", "gam,transformer-rope", "--model-lr", "transformer-rope=1e-3",
                             "--lr", "4e-3", *tiny])
    assert [r["lr"] for r in rows[:2]] == [4e-3, 1e-3]
    for label, lr in (("gam", 4e-3), ("transformer-rope", 1e-3)):
        assert checkpoint.load_checkpoint(tmp_path / "compare" / f"{label}-seed1337")["train_config"]["lr"] == lr
    with pytest.raises(SystemExit, match="--model-lr names 'mamba', which --models does not"):
        experiments.main(["compare", "--models", "gam", "--model-lr", "mamba=1e-3", *tiny])


def test_sweep_trains_each_model_at_each_value_and_says_where_the_best_lies(tmp_path, data_root):
    needs_bpe()
    real_file("tinystories", "TinyStories-train-head.txt")
    tiny = ["--n-layer", "1", "--n-embd", "32", "--n-slots", "16", "--n-head", "2", "--block-size", "32",
            "--batch-size", "4", "--max-steps", "4", "--eval-batches", "2", "--max-train-docs", "50",
            "--max-val-docs", "20", "--warmup-steps", "1", "--data-root", str(data_root),
            "--bench-dir", str(tmp_path)]
    summary = experiments.main(["sweep", "--models", "gam,transformer-rope", "--values", "1e-5,3e-3,1", *tiny])
    assert [r["model"] for r in summary] == ["gam", "transformer-rope"]
    for row in summary:  # 1e-5 barely moves the weights and 1 diverges: the best is the middle rate
        assert row["best --lr"] == "3e-3" and row["best is"] == "inside the range", row
        assert float(row["best val bpb"]) == min(float(row[v]) for v in ("1e-5", "3e-3", "1"))
    full = rows_of(tmp_path / "sweep-lr" / "sweep-lr.csv")
    assert [r["model"] for r in full[:-1]] == [f"{m}-lr={v}" for m in ("gam", "transformer-rope")
                                              for v in ("1e-5", "3e-3", "1")]
    saved = checkpoint.load_checkpoint(tmp_path / "sweep-lr" / "transformer-rope-lr=1-seed1337")["train_config"]
    assert (saved["lr"], saved["positions"]) == (1.0, "rope")
    assert (tmp_path / "sweep-lr" / "sweep-lr.png").stat().st_size > 0
    # any flag: a switch sweeps over true,false; a value the flag cannot take is one line
    assert experiments.flag_value("decay_all", "false") is False
    assert experiments.flag_value("batch_size", "16") == 16
    for name, text, message in (("lr", "fast", "takes floats"), ("positions", "alibi", "must be one of"),
                                ("decay_all", "no", "a switch"), ("out_dir", "x", "not a train.py flag")):
        with pytest.raises(experiments.ConfigError, match=message):
            experiments.flag_value(name, text)


def test_a_difference_within_two_seed_sigmas_is_no_difference():
    assert experiments.versus([1.50], [1.40, 1.42], sigma=0.05) == "+0.0900 (within 2 seed-sigmas)"
    assert experiments.versus([1.50], [1.40, 1.42], sigma=0.01) == "+0.0900"
    assert experiments.versus([1.30, 1.32], [1.40], sigma=None) == "-0.0900"


def test_a_sweeps_best_is_inside_only_when_a_value_inside_reaches_it():
    assert experiments.where_best([1.5, 1.4, 1.45]) == "inside the range"
    assert experiments.where_best([1.5, 1.45, 1.4]) == "at the last value: extend the range beyond it"
    assert experiments.where_best([1.4, 1.45, 1.5]) == "at the first value: extend the range beyond it"
    assert experiments.where_best([0.0, 0.0, 0.1]) == "inside the range"  # a tie that reaches inside
    assert experiments.where_best([0.0, 0.0, 0.0]) == "the same at every value"
    assert experiments.where_best([1.4]) == "the only value"


def test_lead_from_finds_the_step_from_which_a_curve_stays_below():
    def run(label, seed, bpbs):
        return {"label": label, "seed": seed, "evals": [{"step": 100 * (i + 1), "val_bpb": b}
                                                        for i, b in enumerate(bpbs)]}
    ref = [run("a", 1, [3.0, 2.0, 1.5, 1.2]), run("a", 2, [3.0, 2.0, 1.5, 1.2])]
    cases = {"later": ([3.5, 1.9, 1.6, 1.1], "step 400"), "crosses back": ([3.5, 1.9, 1.4, 1.3], "never"),
             "always": ([2.9, 1.9, 1.4, 1.1], "throughout"), "twice": ([2.9, 2.1, 1.4, 1.1], "step 300")}
    for name, (bpbs, expected) in cases.items():
        assert experiments.lead_from([*ref, run(name, 1, bpbs)], name, "a") == expected, name
    # the mean over seeds decides: one seed below and one above by more is not below
    two = [run("b", 1, [2.9, 1.9, 1.4, 1.1]), run("b", 2, [3.3, 2.3, 1.8, 1.4])]
    assert experiments.lead_from([*ref, *two], "b", "a") == "never"


def test_bigram_floor_on_a_hand_made_corpus():
    corpus = np.array([0, 1, 2] * 100, dtype=np.uint16)
    loss, lam = experiments.bigram_loss(corpus, np.array([0, 1, 2, 0], dtype=np.uint16), vocab_size=4)
    # every transition is certain, so the largest weight on the bigram wins; the add-one unigram of 0, 1, 2 is
    # 101/304 each (token 3 never occurs)
    assert lam == pytest.approx(0.95)
    assert loss == pytest.approx(-math.log(0.95 + 0.05 * 101 / 304))
    # a previous token never seen in train falls back to the unigram alone
    loss, _ = experiments.bigram_loss(corpus, np.array([3, 0], dtype=np.uint16), vocab_size=4)
    assert loss == pytest.approx(-math.log(101 / 304))


def test_mqar_puts_keys_values_and_queries_where_it_says():
    n, T, K, V = 50, 64, 6, 40
    x, y, gap = mqar(n, T, K, V, seed=3, power_a=1.0)
    assert x.shape == y.shape == gap.shape == (n, T)
    keys, values = x[:, 0:2 * K:2], x[:, 1:2 * K:2]
    assert torch.all((keys >= 1) & (keys < V // 2)) and torch.all(values >= V // 2)
    assert all(len(set(row.tolist())) == K for row in keys), "keys are distinct within a sequence"
    for i in range(n):
        q = torch.nonzero(y[i] >= 0).flatten()
        assert len(q) == K and torch.all(q >= 2 * K) and torch.all(q % 2 == 0)
        for p in q.tolist():
            j = (keys[i] == x[i, p]).nonzero().item()  # the query repeats key j ...
            assert y[i, p] == values[i, j]  # ... and its target is key j's value
            assert gap[i, p] == p - 2 * j
        assert torch.all(gap[i][y[i] < 0] == 0)
        filler = torch.ones(T, dtype=torch.bool)
        filler[:2 * K] = False
        filler[q] = False
        assert torch.all(x[i][filler] >= V // 2), "filler never repeats a key"
    same = mqar(n, T, K, V, seed=3, power_a=1.0)
    assert all(torch.equal(a, b) for a, b in zip((x, y, gap), same))
    near = mqar(400, T, K, V, seed=4)[2]
    spread = mqar(400, T, K, V, seed=4, power_a=1.0)[2]
    assert near[near > 0].float().mean() < spread[spread > 0].float().mean(), "power_a=0.01 favours short gaps"
    with pytest.raises(ValueError, match="MQAR"):
        mqar(1, 11, 6, V, seed=0)


@pytest.mark.slow
def test_recall_attention_and_context_memory_learn_and_gam_cannot_see_far(tmp_path):
    task = ["recall", "--seq-len", "32", "--pairs", "4", "--vocab-size", "32", "--n-embd", "64", "--steps", "600",
            "--batch-size", "64", "--gap-edges", "0,6,32", "--test-size", "200", "--bench-dir", str(tmp_path),
            "--device", "cpu"]
    rows = experiments.main([*task, "--models", "transformer,gam,gam-context", "--lr", "3e-3"])
    by_model = {r["model"]: r for r in rows}
    assert float(by_model["transformer"]["4 pairs"]) > 0.9  # with GPT-2-scale positions (the default here)
    # 2 GAM layers of kernel 3 see 5 tokens: a query 6 or more tokens after its key is a guess among 16 values
    assert by_model["gam"]["receptive field"] == 5
    assert float(by_model["gam"]["gap 6-31"]) < 0.3
    # the memory that the context writes recalls across the whole sequence
    assert float(by_model["gam-context"]["gap 6-31"]) > 0.9
    assert (tmp_path / "recall" / "recall.md").is_file()
    # each model trained through train.py's loop, into a run folder of its own
    for model in by_model:
        records = [json.loads(line) for line in (tmp_path / "recall" / f"{model}-lr=3e-3-seed1337" / "metrics.jsonl")
                   .read_text().splitlines()]
        assert records[-1]["kind"] == "epoch" and records[-1]["step"] == 600, model
    # which a second call of the same task reads back, adding only what is new: here a second seed for GAM, whose
    # row is then the mean and spread of both
    again = experiments.main([*task, "--models", "gam", "--lr", "3e-3", "--seeds", "2"])
    assert sorted(p.name for p in (tmp_path / "recall").glob("gam-lr=*")) == ["gam-lr=3e-3-seed1337",
                                                                              "gam-lr=3e-3-seed1338"]
    assert again[0]["seeds"] == 2 and "±" in again[0]["4 pairs"]
    # a run folder of another task (here: other training steps) is refused, not read back under this title
    with pytest.raises(SystemExit, match="holds a recall run of another task: pass another --bench-dir"):
        experiments.main([*task[:10], "300", *task[11:], "--models", "gam", "--lr", "3e-3"])


def test_curves_overlay_runs_and_compare_their_last_val_loss(tmp_path):
    for name, shift in (("a", 0.0), ("b", 0.25)):
        run = tmp_path / name
        run.mkdir()
        records = [{"kind": "step", "step": s, "loss": 5.0 - s / 10} for s in (1, 5, 10)] + \
            [{"kind": "epoch", "step": 10, "val_loss": 4.0 + shift}]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    rows = experiments.main(["curves", str(tmp_path / "a"), str(tmp_path / "b"), "--bench-dir", str(tmp_path)])
    assert [(r["steps"], r["last val loss"], r["minus the first run's"]) for r in rows] == \
        [(10, 4.0, "+0.0000"), (10, 4.25, "+0.2500")]
    assert (tmp_path / "curves" / "curves.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="no metrics.jsonl"):
        experiments.main(["curves", str(tmp_path / "nowhere")])


def test_position_losses_bucket_a_runs_validation_loss_by_position(tmp_path, data_root):
    needs_bpe()
    real_file("tinystories", "TinyStories-train-head.txt")
    runs = []
    for model in ("gam", "transformer"):
        out = tmp_path / model
        train.train(train.parse_args(["--model", model, "--n-layer", "1", "--n-embd", "32", "--n-slots", "16",
                                      "--n-head", "2", "--block-size", "40", "--batch-size", "4", "--max-steps", "3",
                                      "--eval-batches", "1", "--max-train-docs", "50", "--max-val-docs", "20",
                                      "--data-root", str(data_root), "--out-dir", str(out)]))
        runs.append(str(out))
    rows = experiments.main(["position", *runs, "--eval-batches", "2", "--buckets", "0,1,4,13,32",
                       "--attn-windows", "0,3,40", "--bench-dir", str(tmp_path)])
    gam, transformer, window_3, window_40, bigram = rows  # the windows apply to the Transformer alone
    assert (gam["receptive field"], transformer["receptive field"], bigram["model"]) == (3, 40, "bigram")
    # its attention cut to 3 tokens in its 1 layer sees 3 tokens; a window of T = 40 is no cut at all
    assert window_3["run"] == f"{runs[1]}, attention window 3" and window_3["receptive field"] == 3
    assert window_3["0"] == pytest.approx(transformer["0"], abs=1e-5)  # position 0 sees one token either way
    assert window_3["13-31"] != pytest.approx(transformer["13-31"], abs=1e-4)
    assert {k: v for k, v in window_40.items() if k != "run"} == pytest.approx(
        {k: v for k, v in transformer.items() if k != "run"}, abs=1e-5)
    assert [k for k in gam if k[0].isdigit()] == ["0", "1-3", "4-12", "13-31", "32-39"]
    # the buckets' token-weighted mean is the mean over all positions, which is the model's own loss
    weights = {"0": 1, "1-3": 3, "4-12": 9, "13-31": 19, "32-39": 8}
    assert sum(gam[k] * w for k, w in weights.items()) / 40 == pytest.approx(gam["val loss"], abs=1e-3)
    model, _ = checkpoint.load_model(runs[0])
    folder = prepare_from_args(train.parse_args(
        ["--data-root", str(data_root), "--max-train-docs", "50", "--max-val-docs", "20"]))
    chunks = TokenChunks(folder / "val.bin", 40)
    expected = train.evaluate(model, chunks, 4, "cpu", nullcontext(), max_batches=2)
    assert gam["val loss"] == pytest.approx(expected, abs=1e-4)
    # the control: the bigram model of the same training tokens on the same 2 x 4 validation chunks
    nll, _ = experiments.bigram_model(np.fromfile(folder / "train.bin", dtype=np.uint16), 50257)
    x, y = next(chunks.batches(8))
    assert bigram["0"] == pytest.approx(nll(x[:, 0].numpy(), y[:, 0].numpy()).mean(), abs=1e-4)
    curves = rows_of(tmp_path / "position" / "position-curves.csv")
    assert len(curves) == 40 and list(curves[0])[:3] == ["position", *runs]
    assert (tmp_path / "position" / "position.png").stat().st_size > 0


@pytest.mark.slow
def test_the_gpu_script_runs_every_step_at_a_tiny_size(tmp_path, data_root):
    # .gpu/run.sh is what a session with a lent GPU starts first; here its CPU path (GAM_GPU_SMALL: tiny models,
    # one seed, no bench.py gpu, which has its own test in test_bench.py)
    needs_bpe()
    real_file("tinystories", "TinyStories-valid-head.txt")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "GAM_GPU_SMALL": "1", "GAM_DATA_ROOT": str(data_root),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # its `python` is ours
    out = tmp_path / "out"
    done = subprocess.run(["bash", ".gpu/run.sh", str(out)], cwd=root, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = (out / "runs.txt").read_text().splitlines()
    assert len(runs) == 4 + 3 + 5 + 5  # Table 1's models, Table 3's other variants, the byte-level models x 2
    assert (out / "ablate" / "gam-gated-seed1337" / "ckpt.pt").is_file()  # Table 1's GAM, linked
    assert all(Path(run.split()[0], "ckpt.pt").is_file() for run in runs)
    summary = done.stdout.split("== summary")[1]
    for table, rows in [("compare/compare.md", ["gam", "gam-context", "transformer", "mamba"]),
                        ("ablate/ablate.md", ["gam-gated", "gam-sum", "gam-local", "gam-global"]),
                        ("bytes/compare/compare.md", ["gam", "transformer-window3", "mamba"]),
                        ("story-bytes/compare/compare.md", ["gam", "transformer-window3", "mamba"]),
                        ("compare/position/position.md", ["bigram"]), ("bytes/position/position.md", ["bigram"]),
                        ("story-bytes/position/position.md", ["bigram"])]:
        text = (out / table).read_text()
        assert text.strip() in summary, f"{table} is not in the summary"
        assert all(f"| {row} " in text or f"/{row}-seed1337 " in text for row in rows), table
    assert "bigram floor" in (out / "bytes" / "compare" / "compare.md").read_text()
