"""data.py: downloads against a real HTTP server on 127.0.0.1, documents, token files, chunks, bits per byte.

Run: python -m pytest -q tests/test_data.py
"""

import hashlib
import http.server
import io
import json
import math
import re
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import needs_bpe, real_file

import data
from data import DataError, TokenChunks, bits_per_byte, download, download_docs, prepare, read_documents

STORIES = "".join(f"Story {i} begins.\n\nIt ends here, {i}.\n<|endoftext|>\n" for i in range(40))
# the official validation file's format: one <|endoftext|> line between stories, one newline between paragraphs
VALID = "".join(f"Valid story {i}.\nIts second paragraph.\n<|endoftext|>\n" for i in range(30))


class Server:
    """Serves self.files {path: bytes} on 127.0.0.1; a path in self.truncated promises more bytes than it sends."""

    def __init__(self):
        self.files, self.truncated, self.requests = {}, set(), []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body) * (2 if self.path in server.truncated else 1)))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def test_download_checks_size_and_sha256(server, tmp_path):
    body = b"x" * 5000
    server.files["/f.zip"] = body
    dest = download(server.url + "/f.zip", tmp_path / "f.zip", len(body), hashlib.sha256(body).hexdigest())
    assert dest.read_bytes() == body
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.zip"]


def test_wrong_checksum_is_rejected_and_leaves_nothing(server, tmp_path):
    server.files["/f.zip"] = b"tampered"
    with pytest.raises(DataError, match="sha256"):
        download(server.url + "/f.zip", tmp_path / "f.zip", sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_truncated_response_is_rejected_and_leaves_nothing(server, tmp_path):
    server.files["/f.zip"] = b"y" * 3000
    server.truncated.add("/f.zip")
    with pytest.raises(DataError, match=server.url):
        download(server.url + "/f.zip", tmp_path / "f.zip")
    assert list(tmp_path.iterdir()) == []


def test_http_error_and_refused_connection_are_one_line_errors(server, tmp_path):
    with pytest.raises(DataError, match="failed"):
        download(server.url + "/missing", tmp_path / "m")
    port = server.httpd.server_address[1]
    server.close()
    with pytest.raises(DataError, match=f"127.0.0.1:{port}"):
        download(f"http://127.0.0.1:{port}/f", tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_streaming_stops_after_enough_documents(server, tmp_path):
    server.files["/s.txt"] = STORIES.encode()
    dest = download_docs(server.url + "/s.txt", tmp_path / "s.txt", 5, "eot")
    docs = list(read_documents(dest, "eot"))
    assert docs == [f"Story {i} begins.\n\nIt ends here, {i}." for i in range(5)]
    everything = download_docs(server.url + "/s.txt", tmp_path / "all.txt", 1000, "eot")
    assert len(list(read_documents(everything, "eot"))) == 40


def test_two_processes_writing_one_file_do_not_collide(tmp_path, monkeypatch):
    # runs started together all prepare the same dataset: one's rename must not take the other's file away
    dest = tmp_path / "train.bin"
    monkeypatch.setattr(data.os, "getpid", lambda: 1)
    with data.atomic_write(dest) as first:
        first.write_bytes(b"first")
        monkeypatch.setattr(data.os, "getpid", lambda: 2)
        with data.atomic_write(dest) as second:
            second.write_bytes(b"second")
    assert dest.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["train.bin"]


def test_documents_are_split_as_each_format_says(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("a\n\nb\n<|endoftext|>\nc\n<|endoftext|>\n")
    assert list(read_documents(f, "eot")) == ["a\n\nb", "c"]
    assert list(read_documents(f, "eot", max_docs=1)) == ["a\n\nb"]
    f.write_text("\n\npara one\nline two\n\n\npara two\n")
    assert list(read_documents(f, "blank")) == ["para one\nline two", "para two"]
    f.write_text(" \n = First = \n \n text 1 \n = = Sub = = \n more \n = Second = \n text 2 \n")
    assert [d.split("\n")[0] for d in read_documents(f, "wiki")] == [" = First = ", " = Second = "]
    assert "= = Sub = =" in next(read_documents(f, "wiki"))


@pytest.fixture
def urls(server, monkeypatch):
    """Point the dataset table at the local server."""
    server.files["/TinyStories-train.txt"] = STORIES.encode()
    server.files["/TinyStories-valid.txt"] = VALID.encode()
    for split in ("train", "valid"):
        spec = dict(data.DATASETS["tinystories"][split])
        spec["url"] = server.url + "/" + spec["names"][0]
        monkeypatch.setitem(data.DATASETS["tinystories"], split, spec)
    return server


def test_prepare_downloads_tokenizes_and_caches(urls, tmp_path, monkeypatch):
    needs_bpe()
    monkeypatch.delenv("GAM_DATA_DIR", raising=False)
    out = prepare("tinystories", data_root=tmp_path, max_train_docs=10, max_val_docs=4)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["train"]["documents"] == 10 and meta["val"]["documents"] == 4
    enc = data.gpt2_encoding()
    tokens = np.fromfile(out / "train.bin", dtype=np.uint16)
    assert len(tokens) == meta["train"]["tokens"]
    expected = "<|endoftext|>".join(f"Story {i} begins.\n\nIt ends here, {i}." for i in range(10))
    assert enc.decode(tokens.tolist()) == expected  # round trip, one separator between documents
    assert meta["train"]["bytes"] == len(expected.encode()) - 9 * len("<|endoftext|>")
    n_requests = len(urls.requests)
    assert prepare("tinystories", data_root=tmp_path, max_train_docs=10, max_val_docs=4) == out
    assert len(urls.requests) == n_requests, "a prepared dataset must not be downloaded again"
    prepare("tinystories", data_root=tmp_path, max_train_docs=20, max_val_docs=4)
    assert json.loads((out / "meta.json").read_text())["train"]["documents"] == 20


def test_the_cpu_quick_start_reads_the_same_stories_downloaded_or_offline(urls, tmp_path, monkeypatch):
    # the README's CPU quick start names how many stories it trains and validates on, so that a user who downloads
    # gets the tokens of the offline pieces: the official files, streamed, cut at those counts, are the pieces
    needs_bpe()
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    n_train, n_val = map(int, re.search(r"--max-train-docs (\d+) --max-val-docs (\d+)", readme).groups())
    pieces = {"train": real_file("tinystories", "TinyStories-train-head.txt"),
              "valid": real_file("tinystories", "TinyStories-valid-head.txt")}
    # the training piece ends inside a story, which the real file completes: the quick start stops before it
    assert sum(1 for _ in read_documents(pieces["train"], "eot")) > n_train
    offline = prepare("tinystories", data_dir=pieces["train"].parent, data_root=tmp_path / "offline",
                      max_train_docs=n_train, max_val_docs=n_val)
    more = b"\n<|endoftext|>\nA story past the pieces, which the download must not keep.\n"
    for split, piece in pieces.items():  # what the server sends goes on past each piece, as the real files do
        urls.files[f"/TinyStories-{split}.txt"] = piece.read_bytes() + more
    monkeypatch.delenv("GAM_DATA_DIR", raising=False)
    online = prepare("tinystories", data_root=tmp_path / "online", max_train_docs=n_train, max_val_docs=n_val)
    for name in ("train.bin", "val.bin"):
        assert (online / name).read_bytes() == (offline / name).read_bytes(), name
    meta = json.loads((online / "meta.json").read_text())
    assert (meta["train"]["documents"], meta["val"]["documents"]) == (n_train, n_val)


def test_wikitext_zip_is_checked_and_unpacked(server, tmp_path, monkeypatch):
    needs_bpe()
    monkeypatch.delenv("GAM_DATA_DIR", raising=False)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for split in ("train", "valid", "test"):
            z.writestr(f"wikitext-2-raw/wiki.{split}.raw", f" = {split} A = \n text a \n = {split} B = \n text b \n")
    body = buf.getvalue()
    server.files["/w.zip"] = body
    monkeypatch.setattr(data, "WIKITEXT_ZIP", {"url": server.url + "/w.zip", "size": len(body),
                                               "sha256": hashlib.sha256(body).hexdigest()})
    out = prepare("wikitext2", data_root=tmp_path)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["train"]["documents"] == 2 and meta["val"]["documents"] == 2
    monkeypatch.setattr(data, "WIKITEXT_ZIP", {**data.WIKITEXT_ZIP, "sha256": "0" * 64})
    with pytest.raises(DataError, match="sha256.*--data-dir"):
        prepare("wikitext2", data_root=tmp_path / "other")
    assert not (tmp_path / "other" / "wikitext2" / "raw" / "wikitext-2-raw-v1.zip").exists()


def test_offline_copies_in_gam_data_dir(tmp_path):
    needs_bpe()
    real_file("tinystories", "TinyStories-train-head.txt")
    real_file("wikitext-2", "wiki.test.tokens")
    out = prepare("tinystories", data_root=tmp_path, max_train_docs=50, max_val_docs=20)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["train"]["documents"] == 50 and meta["val"]["documents"] == 20
    assert meta["settings"]["sources"]["train"][0].endswith("TinyStories-train-head.txt")
    # the whole validation head, as bytes: its README row says 953 stories, one separator between each two
    out = prepare("tinystories", data_root=tmp_path, max_train_docs=1, max_val_docs=None, tokenizer="bytes")
    meta = json.loads((out / "meta.json").read_text())
    val = np.fromfile(out / "val.bin", dtype=np.uint16)
    assert meta["val"]["documents"] == 953 and (val == data.ByteEncoding.eot_token).sum() == 952
    assert "<|endoftext|>" not in meta["split"]  # no fallback: the file has its story markers
    out = prepare("wikitext2", data_root=tmp_path, train_split="valid", val_split="test")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["train"]["documents"] == 60 and meta["val"]["documents"] > 50  # articles, by " = Title = "
    assert 250_000 < meta["train"]["tokens"] < 270_000  # shared/data README: 258,659 GPT-2 tokens


def offline_tinystories(tmp_path, valid):
    """A GAM_DATA_DIR that holds STORIES as the training file and `valid` as the validation file."""
    folder = tmp_path / "raw"
    folder.mkdir()
    (folder / "TinyStories-train.txt").write_text(STORIES)
    (folder / "TinyStories-valid.txt").write_text(valid)
    return folder


@pytest.mark.parametrize("tokenizer", ["gpt2", "bytes"])
def test_tinystories_validation_is_read_in_its_official_format(tmp_path, tokenizer):
    if tokenizer == "gpt2":
        needs_bpe()
    enc = data.get_encoding(tokenizer)
    out = prepare("tinystories", offline_tinystories(tmp_path, VALID), tmp_path / "d", max_val_docs=25,
                  tokenizer=tokenizer)
    meta = json.loads((out / "meta.json").read_text())
    val = np.fromfile(out / "val.bin", dtype=np.uint16).tolist()
    assert meta["val"]["documents"] == 25 and val.count(enc.eot_token) == 24
    stories = enc.decode(val).split("<|endoftext|>")
    # one separator between stories and none inside one: its paragraphs stay joined by a newline
    assert stories == [f"Valid story {i}.\nIts second paragraph." for i in range(25)]


def test_a_validation_copy_without_story_markers_falls_back_to_blank_lines_and_says_so(tmp_path):
    stripped = "\n\n".join(f"Valid story {i}.\nIts second paragraph." for i in range(30))
    out = prepare("tinystories", offline_tinystories(tmp_path, stripped), tmp_path / "d", max_val_docs=None,
                  tokenizer="bytes")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["val"]["documents"] == 30 and meta["train"]["documents"] == 40
    assert "TinyStories-valid.txt has no <|endoftext|> lines: its documents are blank-line blocks" in meta["split"]


def test_byte_tokenizer_round_trips_and_never_fails_to_decode():
    enc = data.get_encoding("bytes")
    text = "café ☕, naïve — 日本"
    ids = enc.encode_ordinary(text)
    assert enc.n_vocab == 256 and max(ids) < 256 and len(ids) == len(text.encode("utf-8"))
    assert enc.decode(ids) == text
    assert enc.decode(ids[:-1]) == text[:-1] + "\ufffd"  # a sampled sequence may stop inside a character
    assert enc.decode([0xFF, 104, 105, 0, 0xC3]) == "\ufffdhi<|endoftext|>\ufffd"


def test_token_files_are_cached_per_tokenizer(tmp_path):
    needs_bpe()
    f = tmp_path / "book.txt"
    f.write_text("\n\n".join(f"Paragraph {i} of the book, with a café." for i in range(20)))
    bpe = prepare(str(f), data_root=tmp_path / "d")
    byte = prepare(str(f), data_root=tmp_path / "d", tokenizer="bytes")
    assert bpe != byte and prepare(str(f), data_root=tmp_path / "d") == bpe  # each cached beside the other
    metas = [json.loads((out / "meta.json").read_text()) for out in (bpe, byte)]
    assert [m["vocab_size"] for m in metas] == [50257, 256]
    assert metas[0]["val"]["bytes"] == metas[1]["val"]["bytes"]  # bits per byte: the same denominator for both
    val = np.fromfile(byte / "val.bin", dtype=np.uint16)
    assert len(val) == metas[1]["val"]["bytes"] + metas[1]["val"]["documents"] - 1  # bytes plus separators
    with pytest.raises(DataError, match="unknown tokenizer 'chars': use gpt2 or bytes"):
        prepare(str(f), data_root=tmp_path / "d", tokenizer="chars")


def fake_stdlib(root):
    """A small standard library: 30 modules, and one of each kind of file that is left out."""
    for i in range(30):
        path = root / ("pkg" if i % 3 else "") / f"mod{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"def f{i}():\n    return {i}\n")
    for rel, text in [("test/test_mod.py", "import unittest\n"), ("pkg/tests/helper.py", "x = 1\n"),
                      ("pkg/test_pkg.py", "assert True\n"), ("site-packages/numpy/core.py", "y = 2\n"),
                      ("encodings/cp1.py", '""" Codec cp1 generated from \'CP1.TXT\' with gencodec.py.\n"""\n'),
                      ("_sysconfigdata__linux.py", "build_time_vars = {}\n"), ("notes.txt", "not python\n")]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "legacy.py").write_bytes("# caf\u00e9\n".encode("latin-1"))


def test_python_stdlib_is_split_by_file_deterministically(tmp_path, monkeypatch):
    fake_stdlib(tmp_path / "lib")
    monkeypatch.setattr(data, "stdlib_root", lambda: tmp_path / "lib")
    train_files, val_files, left_out = data.stdlib_files(tmp_path / "lib", 0.25)
    assert sorted(train_files + val_files) == sorted(
        p.relative_to(tmp_path / "lib").as_posix() for p in (tmp_path / "lib").rglob("mod*.py"))
    assert not set(train_files) & set(val_files) and 0 < len(val_files) < len(train_files)
    assert left_out == {"test files": 3, "generated files": 1, "build settings (_sysconfigdata)": 1, "not UTF-8": 1}
    outs = [prepare("python-stdlib", data_root=tmp_path / d, val_fraction=0.25, tokenizer="bytes")
            for d in ("a", "b")]
    for key, files in (("train", train_files), ("val", val_files)):
        a, b = (np.fromfile(out / f"{key}.bin", dtype=np.uint16) for out in outs)
        assert np.array_equal(a, b), "the same library gives the same tokens"
        docs = data.ByteEncoding().decode(a.tolist()).split("<|endoftext|>")
        assert docs == [(tmp_path / "lib" / f).read_text() for f in files], "one document per file, in order"
    meta = json.loads((outs[0] / "meta.json").read_text())
    assert meta["settings"]["python"] == data.platform.python_version()
    assert (meta["train"]["documents"], meta["val"]["documents"]) == (len(train_files), len(val_files))
    for said in ("Python", "3 test files", "1 generated files", "site-packages", "not UTF-8"):
        assert said in meta["split"]


def test_the_running_pythons_stdlib_has_modules_and_no_tests():
    train_files, val_files, left_out = data.stdlib_files(data.stdlib_root(), 0.1)
    assert len(train_files) > 300 and len(val_files) > 20 and left_out["test files"] > 0
    assert "argparse.py" in train_files + val_files
    assert not any(f.split("/")[-1].startswith("test_") or "/test/" in f"/{f}" for f in train_files + val_files)


def test_local_text_file_is_split_by_documents(tmp_path):
    needs_bpe()
    f = tmp_path / "book.txt"
    f.write_text("\n\n".join(f"Paragraph {i} of the book." for i in range(20)))
    out = prepare(str(f), data_root=tmp_path / "d", val_fraction=0.25)
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["train"]["documents"], meta["val"]["documents"]) == (15, 5)
    enc = data.gpt2_encoding()
    assert enc.decode(np.fromfile(out / "val.bin", dtype=np.uint16).tolist()).startswith("Paragraph 15 ")


def prepare_text(tmp_path, text):
    """Prepare a text file holding `text`; return its folder and meta.json."""
    needs_bpe()
    f = tmp_path / "corpus.txt"
    f.write_text(text)
    out = prepare(str(f), data_root=tmp_path / "d")
    return out, json.loads((out / "meta.json").read_text())


def test_a_file_without_document_breaks_is_split_by_lines(tmp_path):
    out, meta = prepare_text(tmp_path, "".join(f"Sentence number {i} stands on its own line.\n" for i in range(30)))
    assert meta["split"].startswith("by lines") and "27 train, 3 val" in meta["split"]
    enc = data.gpt2_encoding()
    val = enc.decode(np.fromfile(out / "val.bin", dtype=np.uint16).tolist())
    assert val == "Sentence number 27 stands on its own line.\nSentence number 28 stands on its own line.\n" \
                  "Sentence number 29 stands on its own line."


def test_a_single_line_is_split_by_tokens(tmp_path):
    text = " ".join(f"word{i}" for i in range(300))
    out, meta = prepare_text(tmp_path, text)
    assert meta["split"].startswith("by tokens")
    train, val = (np.fromfile(out / f"{k}.bin", dtype=np.uint16) for k in ("train", "val"))
    enc = data.gpt2_encoding()
    assert enc.decode(train.tolist() + val.tolist()) == text
    assert len(val) == round(0.1 * (len(train) + len(val)))
    assert meta["val"]["tokens"] == len(val) and 0 < meta["val"]["bytes"] < meta["train"]["bytes"]


def test_text_that_is_not_utf8_says_where_and_how_to_fix(tmp_path):
    f = tmp_path / "latin.txt"
    f.write_bytes("first line\n\nsecond paragraph, caf\u00e9\n".encode("latin-1"))
    # the é is byte 33: 11 + 1 + 21 bytes come before it
    with pytest.raises(DataError, match=r"not utf-8 text: line 3 \(byte 33\).*--encoding latin-1") as e:
        prepare(str(f), data_root=tmp_path / "d")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "d").exists()
    needs_bpe()
    out = prepare(str(f), data_root=tmp_path / "d", encoding="latin-1")
    enc = data.gpt2_encoding()
    assert enc.decode(np.fromfile(out / "val.bin", dtype=np.uint16).tolist()) == "second paragraph, caf\u00e9"


def test_missing_empty_and_folder_paths_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="nope.txt does not exist: no such file"):
        prepare(str(tmp_path / "nope.txt"), data_root=tmp_path / "d")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="is empty"):
        prepare(str(tmp_path / "empty.txt"), data_root=tmp_path / "d")
    with pytest.raises(DataError, match="is not a file"):
        prepare(str(tmp_path), data_root=tmp_path / "d")


def test_bad_dataset_names_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="no-such-corpus does not exist: no such dataset"):
        prepare("no-such-corpus", data_root=tmp_path)
    with pytest.raises(DataError, match="splits"):
        prepare("tinystories", data_root=tmp_path, val_split="test")


def test_missing_bpe_files_name_tiktoken_cache_dir(monkeypatch):
    import tiktoken

    def offline(name):
        raise ConnectionError("no network")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(DataError, match="TIKTOKEN_CACHE_DIR"):
        data.gpt2_encoding()


def test_chunks_batches_and_epoch_order(tmp_path):
    path = tmp_path / "t.bin"
    np.arange(1000, dtype=np.uint16).tofile(path)
    chunks = TokenChunks(path, block_size=9)  # chunks of 10 tokens
    assert len(chunks) == 100 and chunks.num_batches(32) == 4
    xs = []
    for x, y in chunks.batches(32, chunks.order(seed=1, epoch=0)):
        assert x.dtype == torch.int64 and torch.equal(y, x + 1)
        assert torch.all(x[:, 0] % 10 == 0)  # non-overlapping, aligned chunks
        xs.append(x)
    assert [len(x) for x in xs] == [32, 32, 32, 4]
    starts = torch.cat(xs)[:, 0]
    assert sorted(starts.tolist()) == list(range(0, 1000, 10)), "each chunk exactly once per epoch"
    assert torch.equal(chunks.order(1, 0), chunks.order(1, 0))
    assert not torch.equal(chunks.order(1, 0), chunks.order(1, 1))
    assert not torch.equal(chunks.order(1, 0), chunks.order(2, 0))
    resumed = list(chunks.batches(32, chunks.order(1, 0), start=2))
    assert torch.equal(resumed[0][0], xs[2])
    with pytest.raises(DataError, match="block-size"):
        TokenChunks(path, block_size=1000)


def test_bits_per_byte_arithmetic():
    assert bits_per_byte(math.log(2), 100, 100) == pytest.approx(1.0)
    # 4 bytes per token on average: a token's 2 bits spread over 4 bytes
    assert bits_per_byte(2 * math.log(2), 1000, 4000) == pytest.approx(0.5)
