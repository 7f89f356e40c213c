"""Shared fixtures: the real tinycoco subset beside the project, and builds made from it once."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest

from mpcc.data.build import BuildConfig, build

ROOT = Path(__file__).resolve().parents[1]
TINYCOCO = ROOT.parent / "shared" / "data" / "tinycoco"

datasets.disable_progress_bars()


@pytest.fixture(scope="session")
def tinycoco() -> Path:
    if not (TINYCOCO / "instances.json").is_file():
        raise FileNotFoundError(f"{TINYCOCO} is missing: the tests need ../shared beside the project")
    return TINYCOCO


@pytest.fixture(scope="session")
def tiny_builds(tinycoco, tmp_path_factory) -> dict[str, Path]:
    """Train and eval builds of tinycoco with default settings (eval uses the train stats)."""
    out = tmp_path_factory.mktemp("builds")
    ann, images = tinycoco / "instances.json", tinycoco / "images"
    build(ann, images, out / "train", BuildConfig("train"), num_proc=2)
    build(ann, images, out / "eval", BuildConfig("eval", stats=out / "train"), num_proc=2)
    return {"train": out / "train", "eval": out / "eval", "root": out}
