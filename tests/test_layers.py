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


# ---------------------------------------------------------------------- the config is read at the top

# Modules below the builder in the config's flow: they receive objects built from the config
# (src/builder.py; the trainer, src/cli/ and the model-file loaders read it), never the config.
NO_CONFIG = ("src/data/", "src/evaluation/", "src/postprocess.py", "src/training/hooks.py",
             "src/training/lr_schedule.py", "src/training/load_from.py",
             "src/inference/")
READS_STORED_CONFIGS = ("src/inference/api.py", "src/inference/model_files.py")


def _is_config_name(name: str) -> bool:
    return name in ("cfg", "config") or name.endswith("_cfg")


def config_parameters(source: str, path: str) -> list[str]:
    """'path:line name(param)' for every function or method taking a parameter named like a config."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            a = node.args
            params = a.posonlyargs + a.args + a.kwonlyargs + [p for p in (a.vararg, a.kwarg) if p is not None]
            name = getattr(node, "name", "<lambda>")
            found += [(node.lineno, f"{path}:{node.lineno} {name}({p.arg})") for p in params
                      if _is_config_name(p.arg)]
    return [text for _, text in sorted(found)]


def _no_config_modules():
    for _, path in _modules():
        if path.startswith(NO_CONFIG) and path not in READS_STORED_CONFIGS:
            yield path


def test_lower_modules_take_objects_not_the_config():
    paths = list(_no_config_modules())
    assert "src/data/pipeline.py" in paths and "src/inference/predictor.py" in paths
    found = []
    for path in paths:
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            found += config_parameters(f.read(), path)
    assert not found, "these take the config; build what they need in src/builder.py instead:\n" + "\n".join(found)


def test_config_parameter_check_finds_every_kind_of_parameter():
    source = ("def a(cfg): pass\nclass K:\n    def b(self, x, *, test_cfg=None): pass\n"
              "def c(config=None): pass\ndef d(settings, cfgs, config_path): pass\nf = lambda cfg: cfg\n")
    assert config_parameters(source, "x.py") == ["x.py:1 a(cfg)", "x.py:3 b(test_cfg)", "x.py:4 c(config)",
                                                 "x.py:6 <lambda>(cfg)"]
