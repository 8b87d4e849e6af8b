"""The documentation names files that exist: README, docs/*.md and the code's `REFERENCE x.y`
citations point at real places, so a reader following them never hits a dead end."""
import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("m2det", "heads", "nms", "src", "scripts", "configs", "bench", "docs", "tests")
# a repository path: one of the project's top-level folders, then path characters
PATH = re.compile(r"(?<![\w./-])((?:%s)/[\w./*-]*[\w*/])" % "|".join(PACKAGES))
DOCS = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))


def named_paths(text: str) -> set:
    return {m.group(1).rstrip(".") for m in PATH.finditer(text)}


def test_the_path_pattern_finds_paths():
    text = "see `src/data/coco.py`, m2det/necks/ and configs/_base_/*.yaml; not work_dirs/x or a/src/b.py"
    assert named_paths(text) == {"src/data/coco.py", "m2det/necks/", "configs/_base_/*.yaml"}


@pytest.mark.parametrize("doc", DOCS)
def test_every_named_path_exists(doc):
    with open(os.path.join(ROOT, doc), encoding="utf-8") as f:
        text = f.read()
    missing = sorted(p for p in named_paths(text) if not glob.glob(os.path.join(ROOT, p)))
    assert not missing, f"{doc} names paths that do not exist: {missing}"


def test_reference_citations_name_existing_sections():
    with open(os.path.join(ROOT, "docs", "REFERENCE.md"), encoding="utf-8") as f:
        headings = set(re.findall(r"^#+\s+(\d+(?:\.\d+)*)\b", f.read(), flags=re.M))
    cited = {}
    for path in glob.glob(os.path.join(ROOT, "**", "*.py"), recursive=True) + glob.glob(
            os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True):
        if "/.venv/" in path or "/build/" in path:
            continue
        with open(path, encoding="utf-8") as f:
            for number in re.findall(r"REFERENCE (\d+(?:\.\d+)*)", f.read()):
                cited.setdefault(number, os.path.relpath(path, ROOT))
    unknown = {n: p for n, p in cited.items() if n not in headings}
    assert cited and not unknown, f"citations of missing REFERENCE sections: {unknown}"
