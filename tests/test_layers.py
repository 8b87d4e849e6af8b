"""The packages import only downward: nms, heads <- m2det <- src <- entry scripts and bench.

Parses every library module's imports (top level and inside functions) and fails on one that
names a higher layer, or on a function-local import of the project's own modules (such an
import only exists to dodge a cycle, which means the code sits in the wrong layer).
`src/cli/` holds the entry scripts' programs (the top-level scripts and the console commands
call them): it is the entry layer, whose lazy imports keep `--help` fast.
"""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# lower number = lower layer; a module may import its own layer and the ones below
LAYERS = {"nms": 0, "heads": 1, "m2det": 2, "src": 3}
ENTRY = 4
ENTRY_PACKAGE = "src.cli"


def _layer_of_module(module: str) -> int | None:
    if module == ENTRY_PACKAGE or module.startswith(ENTRY_PACKAGE + "."):
        return ENTRY
    return LAYERS.get(module.split(".")[0])


def _modules():
    for package in LAYERS:
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in sorted(files):
                if name.endswith(".py"):
                    path = os.path.relpath(os.path.join(folder, name), ROOT)
                    yield ENTRY if path.startswith("src/cli/") else LAYERS[package], path


def _imports(tree):
    """(line, module, inside a function) for every absolute import of the tree."""
    local = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                local.add(id(inner))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, id(node) in local
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module, id(node) in local


def layer_violations(layer: int, source: str, path: str) -> list[str]:
    problems = []
    for line, module, in_function in _imports(ast.parse(source)):
        target = _layer_of_module(module)
        if target is None:
            continue
        if target > layer:
            problems.append(f"{path}:{line} imports {module} (layer {target} is above layer {layer})")
        elif in_function and layer != ENTRY:
            problems.append(f"{path}:{line} imports {module} inside a function")
    return problems


def test_library_imports_only_downward():
    problems = []
    for layer, path in _modules():
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            problems += layer_violations(layer, f.read(), path)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("package, source, expected", [
    ("heads", "from m2det.ops import DeformConv2d\n", "above"),
    ("m2det", "def f():\n    from src.config import load_config\n", "above"),
    ("src", "def f():\n    from src.builder import build_detector\n", "inside a function"),
    ("m2det", "import src.export\n", "above"),
    ("src", "from src.cli.train import main\n", "above"),
])
def test_checker_catches_upward_and_local_imports(package, source, expected):
    problems = layer_violations(LAYERS[package], source, "x.py")
    assert len(problems) == 1 and expected in problems[0]


def test_checker_accepts_downward_third_party_and_entry_lazy_imports():
    source = "import numpy as np\nfrom heads.box_coder import SSDBoxCoder\nfrom nms import nms\n" \
             "def f():\n    import torch\n"
    assert layer_violations(LAYERS["src"], source, "x.py") == []
    assert layer_violations(ENTRY, "def main():\n    from src.builder import build_detector\n", "x.py") == []
