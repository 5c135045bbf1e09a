"""
Data: get a corpus, tokenize it (tiktoken's GPT-2 BPE, or UTF-8 bytes), cache it as flat uint16 token files, serve
batches.

    python data.py tinystories          # the paper's subset: first 50,000 train / 5,000 validation stories
    python data.py wikitext2            # WikiText-2 raw v1, complete
    python data.py python-stdlib        # the .py files of this Python's standard library, split by file
    python data.py path/to/book.txt     # any text file: the last 10% of its documents, lines or tokens for val
    python data.py tinystories --tokenizer bytes   # any of them as bytes: vocabulary 256

Each dataset is prepared once into data/<name>/ (data/<name>-bytes/ for bytes: train.bin, val.bin, meta.json) and
reused while its settings stay the same. The raw files come, in this order, from
  1. a local copy under --data-dir or $GAM_DATA_DIR, by their official file names (also in a sub-folder named
     after the dataset), e.g. the offline pieces that tests and CI use;
  2. what an earlier download left in data/<name>/raw/;
  3. a download, streamed with requests and written under a temporary name until it is complete and checked.

Documents are joined with one <|endoftext|> token between them. Batches are the paper's: non-overlapping
(block_size + 1)-token chunks (input = chunk[:-1], target = chunk[1:]), reshuffled every epoch.
"""

import argparse
import hashlib
import itertools
import json
import os
import platform
import re
import sys
import sysconfig
import time
import zipfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import requests
import torch

from gam import ConfigError

EOT = "<|endoftext|>"
HF = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/"
WIKITEXT_ZIP = {"url": "https://wikitext.smerity.com/wikitext-2-raw-v1.zip", "size": 4_721_645,
                "sha256": "ef7edb566e3e2b2d31b29c1fdb0c89a4cc683597484c3dc2517919c615435a11"}

# Per dataset and split: official file names (first found wins) and how documents are separated in them.
# "eot": a line holding <|endoftext|>; "blank": blank lines; "wiki": a new " = Title = " article heading.
DATASETS = {
    "tinystories": {
        "train": {"names": ["TinyStories-train.txt", "TinyStories-train-head.txt"], "docs": "eot",
                  "url": HF + "TinyStories-train.txt"},
        "valid": {"names": ["TinyStories-valid.txt", "TinyStories-valid-head.txt"], "docs": "eot",
                  "url": HF + "TinyStories-valid.txt"},
    },
    "wikitext2": {split: {"names": [f"wiki.{split}.raw", f"wiki.{split}.tokens"], "docs": "wiki",
                          "zip": f"wikitext-2-raw/wiki.{split}.raw"} for split in ("train", "valid", "test")},
}
SUBDIRS = {"tinystories": ["tinystories", "TinyStories"], "wikitext2": ["wikitext-2-raw", "wikitext-2"]}
STDLIB = "python-stdlib"  # the running interpreter's standard library, a code corpus that every machine has


class DataError(RuntimeError):
    """A problem the user can fix (missing file, failed download, bad setting). The message is one line."""


# ------------------------------------------------------------------------------------------------ download

def _stream(url, timeout=30):
    """Yield the body of url in chunks, printing a byte count; raise DataError on any failure."""
    try:
        with requests.get(url, stream=True, timeout=timeout) as r:
            r.raise_for_status()
            total, got, shown = int(r.headers.get("Content-Length", 0)), 0, 0.0
            for chunk in r.iter_content(chunk_size=1 << 20):
                got += len(chunk)
                if time.time() - shown > 0.5:
                    shown = time.time()
                    of = f" / {total / 1e6:.1f}" if total else ""
                    print(f"\r  {url}: {got / 1e6:.1f}{of} MB", end="", file=sys.stderr, flush=True)
                yield chunk
            print(f"\r  {url}: {got / 1e6:.1f} MB, done", file=sys.stderr)
            if total and got < total:
                raise DataError(f"download of {url} stopped after {got} of {total} bytes")
    except requests.RequestException as e:
        raise DataError(f"download of {url} failed ({type(e).__name__})") from e


@contextmanager
def atomic_write(dest):
    """Yield a temporary path beside dest to write; when the block ends normally it is renamed onto dest, else
    deleted. Readers (and a later run) see the old file or the whole new one, never a partial one. The name holds
    the process id, so that runs started together, which all prepare the same dataset, do not rename each
    other's file away."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def download(url, dest, size=None, sha256=None):
    """Download url to dest, checking size and sha256 where known. Nothing is left at dest unless it passed."""
    digest, n = hashlib.sha256(), 0
    with atomic_write(dest) as tmp, open(tmp, "wb") as f:
        for chunk in _stream(url):
            f.write(chunk)
            digest.update(chunk)
            n += len(chunk)
        if size is not None and n != size:
            raise DataError(f"{url} gave {n} bytes, expected {size}")
        if sha256 is not None and digest.hexdigest() != sha256:
            raise DataError(f"{url} failed its sha256 check")
    return Path(dest)


def download_docs(url, dest, n_docs, docs):
    """Stream a text file but stop once n_docs documents have arrived, so the first 50k TinyStories cost tens of
    MB instead of 1.9 GB. dest holds those documents (or the whole file, if it has fewer)."""
    counter, rest = DocCounter(docs), b""
    with atomic_write(dest) as tmp, open(tmp, "wb") as f:
        for chunk in _stream(url):
            *lines, rest = (rest + chunk).split(b"\n")
            for line in lines:
                if counter.feed(line.decode("utf-8", errors="replace")) > n_docs:
                    break  # document n_docs + 1 has started: we have all we need
                f.write(line + b"\n")
            else:
                continue
            rest = b""
            break
        f.write(rest)
    return Path(dest)


# ------------------------------------------------------------------------------------------------ documents

class DocCounter:
    """Counts documents line by line: feed() returns the number of the document the line belongs to."""

    def __init__(self, docs):
        self.docs, self.count, self.open = docs, 0, False

    def feed(self, line):
        s = line.strip()
        if self.docs == "eot" and s == EOT or self.docs == "blank" and not s:
            self.open = False  # a separator closes the current document
        elif self.docs == "wiki" and re.fullmatch(r"= [^=].* =", s):
            self.count, self.open = self.count + 1, True  # a top-level heading starts an article
        elif s and not self.open:
            self.count, self.open = self.count + 1, True
        return self.count


def read_documents(path, docs, max_docs=None, encoding="utf-8"):
    """Yield the documents of a text file (without their separators), at most max_docs of them."""
    counter, current, number = DocCounter(docs), [], 0
    with open(path, encoding=encoding, errors="replace") as f:
        for line in f:
            n = counter.feed(line)
            if n != number and current:
                yield "".join(current).strip("\n")
                current = []
            if max_docs is not None and n > max_docs:
                return
            number = n
            if line.strip() != EOT and (current or line.strip()):
                current.append(line)
    if current:
        yield "".join(current).strip("\n")


def separator(path, encoding="utf-8"):
    """How documents are separated in a text file: "eot" if its first MiB holds an <|endoftext|>, else "blank"."""
    with open(path, encoding=encoding, errors="replace") as f:
        return "eot" if EOT in f.read(1 << 20) else "blank"


def find_local(dataset, split, data_dir):
    """The first official file name for this split under data_dir (or a dataset sub-folder), else None."""
    if not data_dir:
        return None
    spec = DATASETS[dataset][split]
    for folder in [Path(data_dir)] + [Path(data_dir, s) for s in SUBDIRS[dataset]]:
        for name in spec["names"]:
            if (folder / name).is_file():
                return folder / name
    return None


def fetch(dataset, split, data_dir, raw_dir, max_docs):
    """Path of the raw text for one split: the local copy if there is one, else an earlier download in raw_dir,
    else a new download into raw_dir."""
    local = find_local(dataset, split, data_dir)
    if local:
        return local
    spec = DATASETS[dataset][split]
    if "zip" in spec:
        dest = Path(raw_dir, Path(spec["zip"]).name)
    else:  # a partial download is named for what it holds, so a later, larger request does not mistake it
        stem = Path(spec["names"][0]).stem
        dest = Path(raw_dir, spec["names"][0] if max_docs is None else f"{stem}-first{max_docs}.txt")
    if dest.is_file():
        return dest
    try:
        if "zip" in spec:
            zpath = download(WIKITEXT_ZIP["url"], Path(raw_dir, "wikitext-2-raw-v1.zip"),
                             WIKITEXT_ZIP["size"], WIKITEXT_ZIP["sha256"])
            with zipfile.ZipFile(zpath) as z:
                for member in z.namelist():
                    if member.endswith(".raw"):
                        with atomic_write(Path(raw_dir, Path(member).name)) as tmp:
                            tmp.write_bytes(z.read(member))
            return dest
        return download_docs(spec["url"], dest, max_docs, spec["docs"])
    except DataError as e:
        raise DataError(f"{e}: try again, or fetch it by hand and put {spec['names'][0]} in --data-dir "
                        "(or $GAM_DATA_DIR)") from None


def check_text(path, encoding):
    """Raise a one-line DataError, naming the line and byte, if the file does not decode with `encoding`."""
    offset = 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            try:
                line.decode(encoding)
            except UnicodeDecodeError as e:
                raise DataError(f"{path} is not {encoding} text: line {number} (byte {offset + e.start}) holds "
                                f"{line[e.start:e.start + 4]!r}. Convert it (iconv -f latin1 -t utf-8 {path} > "
                                "new.txt) or name its encoding with --encoding, e.g. --encoding latin-1") from None
            except LookupError:
                raise DataError(f"unknown --encoding {encoding!r}: use a Python codec name such as utf-8 or "
                                "latin-1") from None
            offset += len(line)


def split_text_file(path, val_fraction, encoding):
    """Train and val documents of a plain text file, and how they were split: by documents (<|endoftext|> lines
    if it has them, else blank lines) when it holds at least two; else by lines, the last val_fraction of them
    for val; else (one line) by tokens: the last val_fraction of the text's tokens (then the strings are None
    and the token arrays are returned instead)."""
    docs = separator(path, encoding)
    n = sum(1 for _ in read_documents(path, docs, encoding=encoding))
    if n >= 2:
        n_train = n - max(1, round(n * val_fraction))
        split = (lambda a, b: itertools.islice(read_documents(path, docs, encoding=encoding), a, b))
        return split(0, n_train), split(n_train, None), \
            f"by documents ({'<|endoftext|> lines' if docs == 'eot' else 'blank lines'}): {n_train:,} train, " \
            f"{n - n_train:,} val"
    lines = [line for line in Path(path).read_text(encoding=encoding, errors="replace").splitlines() if line.strip()]
    if len(lines) >= 2:
        n_train = len(lines) - max(1, round(len(lines) * val_fraction))
        return (["\n".join(lines[:n_train])], ["\n".join(lines[n_train:])],
                f"by lines (the file has no document breaks): {n_train:,} train, {len(lines) - n_train:,} val")
    return None, None, "by tokens (the file is one line): the last " + f"{val_fraction:.0%} of its tokens for val"


# opening lines that say a file was written by a program (codec tables by gencodec.py, pydoc's topics, token.py)
GENERATED = re.compile(r"auto-?generated|automatically generated|generated (by|from)|do not edit", re.IGNORECASE)
TEST_DIRS = {"test", "tests", "idle_test"}


def stdlib_root():
    """The folder of the running interpreter's standard library (e.g. /usr/lib/python3.11)."""
    return Path(sysconfig.get_paths()["stdlib"])


def in_val(name, val_fraction):
    """Whether the file `name` (a path relative to the library) goes to val: by a hash of its name, so the split is
    the same on every machine, and a file keeps its side when other files come or go (another Python version)."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) < val_fraction * 16**8


def stdlib_files(root, val_fraction):
    """The .py files of the standard library at root, as (train, val, left_out): train and val are lists of paths
    relative to root in sorted order, left_out counts what was not taken, by reason. Not taken: site-packages
    (installed packages, not the standard library), the test suites (test/ folders and test_*.py: half the bytes,
    and mostly repeated assertions), files whose first five lines say they are generated (codec tables, pydoc's
    topics, token.py: tables, not code people write), _sysconfigdata* (this machine's build settings, which differ
    between builds of one version), and files that are not UTF-8."""
    train, val, left_out = [], [], Counter()
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in ("site-packages", "dist-packages", "__pycache__")]
        for name in (f for f in files if f.endswith(".py")):
            rel = Path(folder, name).relative_to(root).as_posix()
            if TEST_DIRS & set(rel.split("/")[:-1]) or name.startswith("test_"):
                left_out["test files"] += 1
            elif name.startswith("_sysconfigdata"):
                left_out["build settings (_sysconfigdata)"] += 1
            else:
                try:
                    text = Path(root, rel).read_text(encoding="utf-8")
                except UnicodeDecodeError:
                    left_out["not UTF-8"] += 1
                    continue
                if GENERATED.search("\n".join(text.split("\n", 5)[:5])):
                    left_out["generated files"] += 1
                else:
                    (val if in_val(rel, val_fraction) else train).append(rel)
    return sorted(train), sorted(val), left_out


# ------------------------------------------------------------------------------------------------ tokenize

def gpt2_encoding():
    import tiktoken

    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # tiktoken downloads its BPE files on first use; offline that fails in many ways
        raise DataError("cannot load tiktoken's GPT-2 BPE files (offline?): set TIKTOKEN_CACHE_DIR to a folder "
                        f"that holds them ({type(e).__name__})") from None


class ByteEncoding:
    """UTF-8 bytes as tokens, in the spirit of nanoGPT's shakespeare_char: vocabulary 256, nothing to download.
    Byte 0 (NUL, which text does not hold) stands between documents, as <|endoftext|> does for GPT-2. The same
    methods as a tiktoken Encoding, so the rest of the code does not ask which one it has."""
    n_vocab, eot_token = 256, 0

    def encode_ordinary(self, text):
        return list(text.encode("utf-8"))

    def encode_ordinary_batch(self, texts):
        return [self.encode_ordinary(t) for t in texts]

    def decode(self, ids):
        """Text of the bytes, <|endoftext|> for byte 0; a model can emit byte sequences that are not UTF-8, and
        those are replaced by U+FFFD, never an exception."""
        return EOT.join(part.decode("utf-8", errors="replace") for part in bytes(ids).split(b"\0"))


ENCODINGS = {"gpt2": gpt2_encoding, "bytes": ByteEncoding}  # --tokenizer: GPT-2's BPE (50,257 tokens), bytes (256)


def get_encoding(tokenizer):
    return ENCODINGS[tokenizer]()


def write_tokens(documents, dest, enc):
    """Encode documents into dest as uint16, one end-of-text token between documents, streaming (the corpus never
    has to fit in memory). Returns counts: documents, tokens, UTF-8 bytes of the text."""
    assert enc.n_vocab <= 1 << 16, "token ids must fit in uint16"
    counts = {"documents": 0, "tokens": 0, "bytes": 0}
    with atomic_write(dest) as tmp, open(tmp, "wb") as f:
        batch = []
        for doc in itertools.chain(documents, [None]):  # None flushes the last batch
            if doc is not None:
                batch.append(doc)
            if batch and (doc is None or len(batch) == 1024):
                for ids in enc.encode_ordinary_batch(batch):
                    ids = ids if counts["documents"] == 0 else [enc.eot_token] + ids
                    f.write(np.array(ids, dtype=np.uint16).tobytes())
                    counts["documents"] += 1
                    counts["tokens"] += len(ids)
                counts["bytes"] += sum(len(d.encode("utf-8")) for d in batch)
                batch = []
    return counts


def prepare(dataset, data_dir=None, data_root="data", train_split="train", val_split="valid",
            max_train_docs=50_000, max_val_docs=5_000, val_fraction=0.1, encoding="utf-8", tokenizer="gpt2"):
    """Make sure data_root/<name>/{train,val}.bin and meta.json exist for these settings; return that folder
    (data_root/<name>-bytes/ for tokenizer "bytes").

    dataset: "tinystories", "wikitext2", "python-stdlib" (split by file, see stdlib_files), or a path to a text
    file (split into train and val by split_text_file).
    max_*_docs apply to TinyStories (the paper used the first 50,000 / 5,000 stories); None = all.
    For WikiText-2, train_split / val_split pick any of train, valid, test (the offline copy in shared/ has only
    valid and test: train on valid, evaluate on test)."""
    data_dir = data_dir or os.environ.get("GAM_DATA_DIR")
    if tokenizer not in ENCODINGS:
        raise DataError(f"unknown tokenizer {tokenizer!r}: use {' or '.join(ENCODINGS)}")
    if dataset not in DATASETS and not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    if dataset in DATASETS:
        name = dataset
        splits = DATASETS[dataset]
        for s in (train_split, val_split):
            if s not in splits:
                raise DataError(f"{dataset} has splits {', '.join(splits)}, not {s!r}")
        if dataset != "tinystories":
            max_train_docs = max_val_docs = None
        settings = {"dataset": dataset, "train_split": train_split, "val_split": val_split,
                    "max_train_docs": max_train_docs, "max_val_docs": max_val_docs}
    elif dataset == STDLIB:
        name, root = dataset, stdlib_root()
        train_files, val_files, left_out = stdlib_files(root, val_fraction)
        if not train_files or not val_files:
            raise DataError(f"{root} holds {len(train_files) + len(val_files)} usable .py files, too few to split "
                            "into train and val")
        settings = {"dataset": dataset, "python": platform.python_version(), "root": str(root),
                    "val_fraction": val_fraction, "files": [len(train_files), len(val_files)]}
    else:
        path = Path(dataset)
        if not path.exists():
            kind = "file" if path.suffix or os.sep in dataset else "dataset"
            raise DataError(f"{dataset} does not exist: no such {kind} (datasets by name: tinystories, wikitext2, "
                            f"{STDLIB}; else give the path of a text file)")
        if not path.is_file():
            raise DataError(f"{dataset} is not a file: give the path of one text file")
        if path.stat().st_size == 0:
            raise DataError(f"{dataset} is empty: nothing to train on")
        check_text(path, encoding)
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem)
        stat = path.stat()
        settings = {"dataset": str(path.resolve()), "size": stat.st_size, "mtime": stat.st_mtime,
                    "val_fraction": val_fraction, "encoding": encoding}
    settings["tokenizer"] = tokenizer
    out = Path(data_root, name if tokenizer == "gpt2" else f"{name}-{tokenizer}")
    parts = (("train", train_split, max_train_docs), ("val", val_split, max_val_docs))
    if dataset in DATASETS:  # raw downloads are shared by every tokenizer
        sources = {key: fetch(dataset, split, data_dir, Path(data_root, name, "raw"), limit)
                   for key, split, limit in parts}
        settings["sources"] = {k: [str(v), v.stat().st_size] for k, v in sources.items()}
    meta_path = out / "meta.json"
    if meta_path.is_file() and (out / "train.bin").is_file() and (out / "val.bin").is_file():
        if json.loads(meta_path.read_text()).get("settings") == settings:
            return out  # prepared before with the same settings and sources
    out.mkdir(parents=True, exist_ok=True)
    enc = get_encoding(tokenizer)
    counts = {}
    if dataset in DATASETS:
        split = f"by the dataset's own files ({train_split} for train, {val_split} for val)"
        for key, split_name, limit in parts:
            docs = DATASETS[dataset][split_name]["docs"]
            if docs == "eot" and separator(sources[key]) == "blank":  # a copy whose story markers were stripped
                docs = "blank"
                split += f"; {sources[key].name} has no <|endoftext|> lines: its documents are blank-line blocks"
            print(f"tokenizing {sources[key]} ({key})", file=sys.stderr)
            counts[key] = write_tokens(read_documents(sources[key], docs, limit), out / f"{key}.bin", enc)
    elif dataset == STDLIB:
        split = (f"by file: the standard library of Python {platform.python_version()} in {root}, "
                 f"{len(train_files):,} .py files for train, {len(val_files):,} for val (by a hash of each name); "
                 f"left out: site-packages (not the standard library)"
                 + "".join(f", {n:,} {reason}" for reason, n in sorted(left_out.items())))
        print(f"{STDLIB}: split {split}", file=sys.stderr)
        for key, files in (("train", train_files), ("val", val_files)):
            counts[key] = write_tokens((Path(root, f).read_text(encoding="utf-8") for f in files),
                                       out / f"{key}.bin", enc)
    else:
        train_docs, val_docs, split = split_text_file(path, val_fraction, encoding)
        print(f"{path}: split {split}", file=sys.stderr)
        if train_docs is not None:
            counts = {key: write_tokens(docs, out / f"{key}.bin", enc) for key, docs in (("train", train_docs),
                                                                                         ("val", val_docs))}
        else:
            text = path.read_text(encoding=encoding, errors="replace").strip()
            ids = np.array(enc.encode_ordinary(text), dtype=np.uint16)
            n_train = len(ids) - max(1, round(len(ids) * val_fraction))
            for key, part in (("train", ids[:n_train]), ("val", ids[n_train:])):
                with atomic_write(out / f"{key}.bin") as tmp:
                    part.tofile(tmp)
                # bytes in proportion to tokens: the text is cut between two tokens, not at a byte count
                counts[key] = {"documents": 1, "tokens": len(part),
                               "bytes": round(len(text.encode("utf-8")) * len(part) / len(ids))}
    meta = {"tokenizer": tokenizer, "vocab_size": enc.n_vocab, "eot_token": enc.eot_token, "settings": settings,
            "split": split, **counts}
    with atomic_write(meta_path) as tmp:
        tmp.write_text(json.dumps(meta, indent=1))
    return out


# ------------------------------------------------------------------------------------------------ batches

class TokenChunks:
    """A token file seen as non-overlapping chunks of block_size + 1 tokens (the remainder is dropped).
    The file is memory-mapped, so only the rows of a batch are read."""

    def __init__(self, path, block_size):
        self.path, self.length = Path(path), block_size + 1
        self.n_tokens = self.path.stat().st_size // 2
        self.n_chunks = self.n_tokens // self.length
        if self.n_chunks == 0:
            raise DataError(f"{path} holds {self.n_tokens} tokens, fewer than one chunk of block_size + 1 = "
                            f"{self.length}: use a smaller --block-size or more data")

    def __len__(self):
        return self.n_chunks

    def order(self, seed, epoch):
        """The chunk order of one epoch: a permutation that depends only on (seed, epoch), so a resumed run
        sees the same order."""
        return torch.randperm(self.n_chunks, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))

    def num_batches(self, batch_size, min_last=1):
        """Batches of an epoch. The last, smaller batch is kept, as in the paper's DataLoader, if it has at least
        min_last rows (train.py needs one row for each micro-batch of every process)."""
        return self.n_chunks // batch_size + (self.n_chunks % batch_size >= min_last)

    def batches(self, batch_size, order=None, start=0, min_last=1):
        """Yield (x, y) int64 tensors of shape (b, block_size), b <= batch_size, from batch number `start` on.
        order: a chunk order (from .order()), or None for the file order (evaluation)."""
        # a fresh memmap per pass: numpy keeps pages of a long-lived memmap around, growing memory (nanoGPT)
        rows = np.memmap(self.path, dtype=np.uint16, mode="r")[: self.n_chunks * self.length]
        rows = rows.reshape(self.n_chunks, self.length)  # (n_chunks, block_size + 1)
        order = torch.arange(self.n_chunks) if order is None else order
        for i in range(start, self.num_batches(batch_size, min_last)):
            idx = np.sort(order[i * batch_size:(i + 1) * batch_size].numpy())  # sorted reads are faster
            chunk = torch.from_numpy(rows[idx].astype(np.int64))  # (b, block_size + 1)
            yield chunk[:, :-1], chunk[:, 1:]


class Sequences(TokenChunks):
    """Sequences held in memory, inputs and targets (n, T) each (-1: no target), in TokenChunks' batches: train.py's
    loop trains on them as on a corpus (experiments.py recall's MQAR sets)."""

    def __init__(self, inputs, targets):
        self.inputs, self.targets = inputs, targets
        self.n_chunks, self.length = inputs.size(0), inputs.size(1) + 1  # length as a chunk's: block_size + 1
        self.n_tokens = inputs.numel()

    def batches(self, batch_size, order=None, start=0, min_last=1):
        order = torch.arange(self.n_chunks) if order is None else order
        for i in range(start, self.num_batches(batch_size, min_last)):
            rows = order[i * batch_size:(i + 1) * batch_size]
            yield self.inputs[rows], self.targets[rows]


def bits_per_byte(loss, n_tokens, n_bytes):
    """Convert a mean loss in nats per token into bits per UTF-8 byte of text, using the split's overall
    tokens-per-byte ratio. Unlike perplexity this does not depend on the tokenizer."""
    return loss * n_tokens / (n_bytes * np.log(2))


def mqar(n, seq_len, n_pairs, vocab_size, seed, power_a=0.01):
    """Multi-query associative recall (Arora et al. 2023, "Zoology"; zoology/data/multiquery_ar.py).

    Each of the n sequences opens with n_pairs key-value pairs (k1 v1 k2 v2 ...), keys from the lower half of
    the vocabulary (from 1), values from the upper half. Later, every key comes back once as a query at an even
    offset; the target at a query position is the value paired with that key (a next-token framing), and -1
    (no target) everywhere else. The rest is random filler drawn from the value half. Query offsets follow
    zoology's power law p(slot) ~ slot^(power_a - 1): power_a = 0.01 puts most queries near the pairs,
    power_a = 1 spreads them evenly.
    Every random number comes from one generator seeded by `seed`.

    Returns inputs (n, T) int64, targets (n, T) int64 with -1 at non-queries, gaps (n, T) int64: query position
    minus its key's position at query positions, else 0."""
    context = 2 * n_pairs
    slots = (seq_len - context) // 2  # even offsets after the pairs where a query may go
    if seq_len % 2 or slots < n_pairs or vocab_size // 2 - 1 < n_pairs:
        raise ConfigError(f"MQAR needs an even seq_len with room for {n_pairs} queries after the pairs and "
                          f"vocab_size/2 - 1 >= n_pairs keys; got seq_len={seq_len}, vocab_size={vocab_size}")
    rng = np.random.default_rng(seed)
    keys = np.stack([rng.choice(np.arange(1, vocab_size // 2), n_pairs, replace=False) for _ in range(n)])
    values = rng.integers(vocab_size // 2, vocab_size, size=(n, n_pairs))  # (n, K)
    # filler from the value half, so a key token appears only in its pair and its query
    inputs = rng.integers(vocab_size // 2, vocab_size, size=(n, seq_len))  # (n, T), overwritten below
    inputs[:, 0:context:2], inputs[:, 1:context:2] = keys, values
    p = power_a * np.arange(1, slots + 1) ** (power_a - 1)
    slot = np.stack([rng.choice(slots, n_pairs, replace=False, p=p / p.sum()) for _ in range(n)])  # (n, K)
    query_pos = context + 2 * slot  # (n, K), query i asks for key i
    rows = np.arange(n)[:, None]
    inputs[rows, query_pos] = keys
    targets = np.full((n, seq_len), -1)
    targets[rows, query_pos] = values
    gaps = np.zeros((n, seq_len), dtype=np.int64)
    gaps[rows, query_pos] = query_pos - 2 * np.arange(n_pairs)[None, :]
    return torch.from_numpy(inputs), torch.from_numpy(targets), torch.from_numpy(gaps)


def add_data_args(p):
    """The data flags, shared by this script and train.py."""
    p.add_argument("--data-dir", default=None, help="local copies of the raw files (default $GAM_DATA_DIR)")
    p.add_argument("--data-root", default="data", help="where prepared token files are cached")
    p.add_argument("--train-split", default="train", help="split to train on (wikitext2: train, valid or test)")
    p.add_argument("--val-split", default="valid", help="split to evaluate on")
    p.add_argument("--max-train-docs", type=int, default=50_000, help="TinyStories: first N training stories")
    p.add_argument("--max-val-docs", type=int, default=5_000, help="TinyStories: first N validation stories")
    p.add_argument("--val-fraction", type=float, default=0.1, help="a text file: share of its documents (else "
                   f"lines, else tokens) kept for val; {STDLIB}: share of its files")
    p.add_argument("--encoding", default="utf-8", help="a text file: its encoding (a Python codec name)")
    p.add_argument("--tokenizer", default="gpt2", choices=ENCODINGS, help="gpt2: GPT-2's BPE (50,257 tokens); "
                   "bytes: UTF-8 bytes (256)")


def prepare_from_args(a):
    """prepare() as the data flags (of train.py, or of a saved run) say."""
    return prepare(a.dataset, a.data_dir, a.data_root, a.train_split, a.val_split, a.max_train_docs,
                   a.max_val_docs, a.val_fraction, a.encoding, a.tokenizer)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="Download and tokenize a dataset into data/<name>/.", allow_abbrev=False,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("dataset", help=f"tinystories, wikitext2, {STDLIB}, or a path to a text file")
    add_data_args(p)
    try:
        out = prepare_from_args(p.parse_args())
    except DataError as e:
        sys.exit(f"error: {e}")
    meta = json.loads((out / "meta.json").read_text())
    print(f"{out}: train {meta['train']['tokens']:,} tokens ({meta['train']['documents']:,} documents), "
          f"val {meta['val']['tokens']:,} tokens ({meta['val']['documents']:,} documents)")
