"""runtime/: building every model by name, one-line config errors, and the import layers (gam.py imports nothing of
the project; nothing imports upward or in a circle).

Run: python -m pytest -q tests/test_runtime.py
"""

import ast
import subprocess
import sys

import pytest
from conftest import ROOT

from baselines import (
    Mamba,
    MambaConfig,
)
from gam import ConfigError
from runtime.models import build_model

FOLDERS = ("extensions", "runtime")


# who may import whom: gam.py nothing; the other design files gam.py; extensions/ the design files; runtime/ those
# and extensions/; the commands anything. A module imports its own level or below, never up, and never in a circle
LEVEL = {"gam": 0, "baselines": 1, "data": 1, "extensions": 2, "runtime": 3}


def project_modules():
    """Every module of the project by its import name: gam, extensions.context_memory, runtime.checkpoint, ..."""
    files = {f.stem: f for f in ROOT.glob("*.py")}
    for folder in FOLDERS:
        files.update({f"{folder}.{f.stem}": f for f in (ROOT / folder).glob("*.py") if f.stem != "__init__"})
    return files


def project_imports(path, modules):
    """The project's own modules that a file imports, anywhere in it (inside functions too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}  # from runtime import checkpoint
    return names & set(modules)


def level(module):
    return LEVEL.get(module.split(".")[0], 4)  # 4: a command (train.py, sample.py, bench.py, experiments.py)


def test_gam_py_imports_nothing_of_the_project_and_no_import_runs_up_or_in_a_circle():
    modules = project_modules()
    assert sorted(m for m in modules if "." not in m) == ["baselines", "bench", "data", "experiments", "gam", "sample",
                                                           "train"], "the root holds the commands and the design"
    graph = {name: project_imports(path, modules) for name, path in modules.items()}
    assert graph["gam"] == set(), "gam.py is the paper: the files beyond it import it, never the reverse"
    for name, deps in graph.items():
        for dep in deps:
            assert level(dep) <= level(name), f"{name} imports {dep}, which sits above it"

    def visit(name, path):
        assert name not in path, f"import circle: {' -> '.join([*path, name])}"
        for dep in graph[name]:
            visit(dep, [*path, name])

    for name in graph:
        visit(name, [])


def test_a_part_beyond_the_paper_is_built_by_name_alone_and_gam_py_says_so():
    # gam.py builds the paper's model; what a config names beyond it, built there, is a one-line error that points to
    # runtime/models.py, which builds it with no other import first
    code = ("from gam import GAM, GAMConfig, ConfigError\n"
            "for field, value in (('memory', 'context'), ('memory_read', 'fused'), ('recompute', 'mixer')):\n"
            "    try:\n        GAM(GAMConfig(**{field: value}))\n    except ConfigError as e:\n        print(e)\n"
            "from runtime.models import build_model\n"
            "print(build_model('gam', memory='context', n_layer=1).receptive_field)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [f"GAMConfig.{f}={v!r} is not the paper's model, and not in gam.py: build it by name, "
                                "runtime.models.build_model('gam', ...)" for f, v in (("memory", "context"),
                                                                                      ("memory_read", "fused"),
                                                                                      ("recompute", "mixer"))] + ["256"]
    with pytest.raises(ConfigError, match="build it by name"):
        Mamba(MambaConfig(scan="compiled"))


@pytest.mark.parametrize("name,config,message", [
    ("gam", {"variant": "attention"}, "variant must be one of"), ("gam", {"recompute": "all"}, "recompute"),
    ("gam", {"n_embd": 0}, "positive integer"), ("gam", {"dropout": 1.0}, "dropout"),
    ("gam", {"n_layer": 2.5}, "positive integer"), ("gam", {"memory_read": "fast"}, "memory_read"),
    ("gam", {"n_embd": 30, "memory": "context", "n_head": 4}, "divisible"),
    ("gam", {"n_slot": 8}, "has no field 'n_slot'"), ("gpt", {}, "unknown model 'gpt'"),
    ("transformer", {"n_embd": 30, "n_head": 4}, "divisible"), ("transformer", {"attn": "flash"}, "attn"),
    ("transformer", {"attn_window": -1}, "attn_window"), ("transformer", {"positions": "alibi"}, "positions"),
    ("transformer", {"n_embd": 12, "n_head": 4, "positions": "rope"}, "even head size"),
    ("mamba", {"scan": "fast"}, "scan must be one of"), ("mamba", {"d_state": -1}, "positive integer"),
    ("mamba", {"positions": "rope"}, "positions must be one of learned, none")])
def test_bad_config_is_a_one_line_config_error(name, config, message):
    with pytest.raises(ConfigError, match=message):
        build_model(name, **config)
