"""The documents: every relative link in README.md, RESULTS.md and results/*.md reaches a file, and every #anchor a
heading of it (as GitHub makes anchors from headings); every command they show is one its script's parser takes,
with each flag written in full.

Run: python -m pytest -q tests/test_docs.py
"""

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

import bench
import experiments
import sample
import train

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "RESULTS.md", *sorted((ROOT / "results").glob("*.md"))]


def anchors(path):
    """GitHub's anchor of each heading: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#{1,6} (.+)$", path.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_every_relative_link_reaches_its_file_and_heading(doc):
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)  # code blocks hold no links
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        assert path.exists(), f"{doc.name}: {target} names no file"
        if anchor:
            assert anchor in anchors(path), f"{doc.name}: {target} names no heading of {path.name}"


PARSERS = {"train": train.get_parser, "sample": sample.get_parser, "bench": bench.get_parser,
           "experiments": experiments.get_parser}
PLACEHOLDER = re.compile(r"[$<\[(]|\.\.\.")  # $MODEL, <model>, [--flag ...], (the same flags): a reader fills them in


def commands(doc):
    """Each `python <script>.py ...` (or `torchrun ... train.py ...`) line of a doc's code blocks, continuation lines
    joined and the block's own VAR="..." settings put in."""
    for block in re.findall(r"```[^\n]*\n(.*?)```", doc.read_text(), flags=re.S):
        settings = {}
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" # ")[0].strip()
            if m := re.match(r'^([A-Z_][A-Z0-9_]*)="(.*)"$', line):
                settings[m.group(1)] = m.group(2)
                continue
            line = re.sub(r"\$\{?([A-Z_][A-Z0-9_]*)\}?", lambda m: settings.get(m.group(1), m.group(0)), line)
            if m := re.search(r"(?:^|\s)(?:python|torchrun .*?)\s+(train|sample|bench|experiments)\.py(\s.*)?$", line):
                yield m.group(1), m.group(2) or ""


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_every_command_in_the_docs_parses(doc):
    for script, args in commands(doc):
        if PLACEHOLDER.search(args):
            continue
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                PARSERS[script]().parse_args(shlex.split(args))
        except SystemExit as e:
            assert not e.code, f"{doc.name}: {script}.py{args}\n{err.getvalue().strip().splitlines()[-1]}"


@pytest.mark.parametrize("script, args", [("train", "--max-step 5"), ("sample", "--max-new 5"),
                                          ("bench", "gpu --step-len 64"), ("experiments", "sweep --value 1e-3"),
                                          ("experiments", "recall --pair 4")])
def test_a_shortened_flag_is_an_error(script, args):
    # argparse would read it as the one flag it starts, so a doc (or a user) with a cut-off flag would pass unseen
    with pytest.raises(SystemExit) as e, contextlib.redirect_stderr(io.StringIO()) as err:
        PARSERS[script]().parse_args(shlex.split(args))
    assert e.value.code == 2 and "unrecognized arguments" in err.getvalue()
