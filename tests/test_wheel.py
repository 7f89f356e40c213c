"""A non-editable install from the wheel finds its recipes by name from any directory.

The wheel goes into a fresh venv that sees the dev venv's packages through a .pth line (no heavy
reinstall). A .pth line adds the path but does not run the editable-install .pth files inside it, so
the checkout's mpcc stays invisible there: what runs is the wheel's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(command, **kwargs) -> str:
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built in a fresh build directory: setuptools reuses ./build/lib, so files
    left there by an earlier build would otherwise end up in the wheel (and the checkout stays clean)."""
    out = tmp_path_factory.mktemp("wheel")
    config = out / "build.cfg"
    config.write_text(f"[build]\nbuild_base = {out / 'build'}\n")
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out)]
    _run([*pip, str(ROOT)], env={**os.environ, "DIST_EXTRA_CONFIG": str(config)})
    return next(out.glob("mpcc-*.whl"))


def test_wheel_ships_recipes_and_accelerate_configs_once(wheel):
    files = zipfile.ZipFile(wheel).namelist()
    packaged = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "mpcc" / "recipes").rglob("*.yaml"))
    assert {"mpcc/recipes/tiny/grpo_prior.yaml", "mpcc/recipes/accelerate/zero3.yaml"} <= set(packaged)
    # each once: the checkout's top-level `recipes` symlink is not followed into a second copy
    assert sorted(f for f in files if f.endswith(".yaml")) == packaged


@pytest.mark.slow
def test_installed_wheel_trains_a_recipe_by_name(wheel, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    (site / "dev_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [python, "-m", "pip", "install", "--no-deps", "--ignore-installed", "--disable-pip-version-check"]
    _run([*pip, "-q", str(wheel)])

    elsewhere = tmp_path / "elsewhere"  # not the checkout: names must resolve inside the package
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # MPCC_CACHE kept: conftest's
    probe = (
        "import mpcc; from mpcc.launch import read_recipe; from mpcc.recipes import resolve\n"
        "print(mpcc.__file__, resolve('tiny/sft.yaml'), read_recipe('grpo_prior').accelerate_config,"
        " sep='\\n')"
    )
    found = _run([python, "-c", probe], cwd=elsewhere, env=env).splitlines()
    assert len(found) == 3
    for path in found:  # the wheel's mpcc, its recipe, and the Accelerate config that recipe names
        assert Path(path).is_file() and Path(path).resolve().is_relative_to(site.resolve()), path
    out = tmp_path / "run"
    train = ["train", "tiny/grpo_prior", "--max_steps", "1", "--save_strategy", "no"]
    stdout = _run([venv / "bin" / "mpcc", *train, "--output_dir", str(out)], cwd=elsewhere, env=env)
    assert "model saved to" in stdout and (out / "model.safetensors").is_file()
