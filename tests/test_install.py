"""`pip install .` into a fresh virtual environment, then the console commands: each `--help`,
and a tiny train -> eval -> infer run, from a folder outside the repository.

The new environment sees this interpreter's site-packages through a .pth file, so MindSpore,
PyTorch and the build tools are not downloaded again (`--no-index`: pip must find every
dependency already installed, or fail); everything of this project comes from the wheel pip
builds from a copy of the repository.
"""
import json
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ("train", "eval", "infer", "serve", "export", "convert", "convert-dataset")
NOT_COPIED = {".git", ".venv", "build", "work_dirs", "__pycache__", ".pytest_cache", "kernel_meta"}

pytestmark = pytest.mark.slow


def run(cmd, cwd, timeout=600):
    env = dict(os.environ, GLOG_v="3", PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def ignore_build_outputs(folder, names):
    return [n for n in names if n in NOT_COPIED or n.endswith((".so", ".egg-info", ".ckpt"))
            or (os.path.basename(folder) == "nms" and n.endswith(".c"))]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(bin folder of the new environment, its site-packages, a scratch folder)."""
    base = tmp_path_factory.mktemp("install")
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=ignore_build_outputs, symlinks=False)
    venv = base / "venv"
    python = getattr(sys, "_base_executable", None) or sys.executable
    code, log = run([python, "-m", "venv", "--without-pip", str(venv)], cwd=base)
    assert code == 0, log
    new_python = str(venv / "bin" / "python")
    code, site = run([new_python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=base)
    assert code == 0, site
    site = site.strip()
    with open(os.path.join(site, "shared_site_packages.pth"), "w", encoding="utf-8") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    code, log = run([new_python, "-m", "pip", "install", "--no-index", "--no-build-isolation",
                     "--disable-pip-version-check", str(source)], cwd=base, timeout=900)
    assert code == 0, log
    scratch = base / "work"
    scratch.mkdir()
    return venv / "bin", site, scratch


def test_package_is_imported_from_the_new_environment_with_its_compiled_parts(installed):
    bin_dir, site, scratch = installed
    code, out = run([str(bin_dir / "python"), "-c",
                     "import json, m2det, nms, src, heads, m2det.winograd as w; "
                     "print(json.dumps([m2det.__file__, nms._soft_nms.__file__, src.__file__, heads.__file__, "
                     "w.LIBRARY, w.available()]))"], cwd=scratch)
    assert code == 0, out
    *files, library, available = json.loads(out.strip().splitlines()[-1])
    for path in files + [library]:
        assert path.startswith(site), path
    assert available
    for name in ("LICENSE", "NOTICE"):
        assert os.path.isfile(os.path.join(site, "m2det_mindspore-0.1.0.dist-info", "licenses", name))


@pytest.mark.parametrize("command", COMMANDS)
def test_console_command_help(installed, command):
    bin_dir, _, scratch = installed
    code, out = run([str(bin_dir / f"m2det-{command}"), "--help"], cwd=scratch)
    assert code == 0, out
    assert out.startswith("usage: m2det-" + command), out[:300]


def test_tiny_train_eval_infer_with_the_console_commands(installed):
    bin_dir, _, scratch = installed
    config = os.path.join(ROOT, "tests", "configs", "tiny.yaml")
    code, out = run([str(bin_dir / "python"), "-m", "src.data.synthetic", "--out", "data", "--train", "8",
                     "--val", "4", "--seed", "0"], cwd=scratch)
    assert code == 0, out
    code, out = run([str(bin_dir / "m2det-train"), "--config", config, "--data_dir", "data", "--epochs", "1",
                     "--output_dir", "run", "--device_target", "CPU"], cwd=scratch)
    assert code == 0, out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["steps"] == 2                     # 8 images, batch 4
    checkpoint = str(scratch / "run" / "tiny_epoch0001.ckpt")
    assert summary["checkpoints"] == [checkpoint]
    assert any(n.startswith("events.out.tfevents.") for n in os.listdir(scratch / "run"))

    code, out = run([str(bin_dir / "m2det-eval"), "--config", config, "--checkpoint", checkpoint,
                     "--data_dir", "data", "--output_dir", "eval"], cwd=scratch)
    assert code == 0, out
    with open(scratch / "eval" / "metrics.json", encoding="utf-8") as f:
        metrics = json.load(f)
    assert metrics["num_images"] == 4 and -1.0 <= metrics["AP"] <= 1.0

    code, out = run([str(bin_dir / "m2det-infer"), "--config", config, "--checkpoint", checkpoint,
                     "--images", "data/val", "--out", "preds", "--score_threshold", "0.0"], cwd=scratch)
    assert code == 0, out
    with open(scratch / "preds" / "results.json", encoding="utf-8") as f:
        results = json.load(f)
    assert len(results) == 4 and not any("error" in r for r in results), results
    for record in results:
        assert os.path.isfile(scratch / "preds" / record["json"])
        assert os.path.isfile(scratch / "preds" / record["picture"])
