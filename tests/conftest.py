"""Shared fixtures: the real tinycoco subset beside the project, and builds made from it once; small
synthetic scenes, train and eval builds of them and a tiny model, made once per test module that asks;
the tiny model served over the OpenAI API, once; one $MPCC_CACHE per worker for every test.

The subset is read from $MPCC_TINYCOCO (a path relative to the project root, or absolute), by default
../shared/data/tinycoco. A clone without it still runs: every test that uses the `tinycoco` fixture
(directly or through another fixture) is marked `real_coco` and skips with the reason. CI makes them
mandatory: with MPCC_REQUIRE_TINYCOCO=1 (set by .ci/run) the fixture fails instead of skipping.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import datasets
import httpx
import pytest
from ports import free_port

from mpcc.data.build import BuildConfig, build

ROOT = Path(__file__).resolve().parents[1]
TINYCOCO = (ROOT / (os.environ.get("MPCC_TINYCOCO") or "../shared/data/tinycoco")).resolve()
REQUIRE_TINYCOCO = os.environ.get("MPCC_REQUIRE_TINYCOCO") == "1"

datasets.disable_progress_bars()

# Under pytest-xdist (`make test`: two workers) each worker, and what it launches, gets its share of the
# cores: two workers with one OpenMP thread per core each would oversubscribe them, and spinning
# threads then wait on each other.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads))
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(items):
    """Mark every test that needs tinycoco, so `-m real_coco` (or `not real_coco`) selects them; then put
    the files with slow tests first (each file's order kept): `make test`'s workers take whole files, and
    a long file started last leaves the other worker idle until it ends."""
    for item in items:
        if "tinycoco" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.real_coco)
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)


@pytest.fixture(scope="session", autouse=True)
def _mpcc_cache(tmp_path_factory):
    """$MPCC_CACHE for the whole session, set before any other fixture (module-scoped ones too) and
    inherited by subprocesses: this worker's tiny models and synthetic sets, each built once for all its
    tests and never in the user's cache. A test of the cache itself sets its own."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MPCC_CACHE", str(tmp_path_factory.getbasetemp() / "mpcc_cache"))
        yield


@pytest.fixture(scope="session")
def tinycoco() -> Path:
    if not (TINYCOCO / "instances.json").is_file():
        reason = f"tinycoco fixtures missing: {TINYCOCO} not found"
        reason += " (put ../shared beside the project, or set MPCC_TINYCOCO)"
        if REQUIRE_TINYCOCO:
            pytest.fail(f"{reason}; MPCC_REQUIRE_TINYCOCO=1 makes real-COCO tests mandatory", pytrace=False)
        pytest.skip(reason)
    return TINYCOCO


@pytest.fixture(scope="session")
def tiny_builds(tinycoco, tmp_path_factory) -> dict[str, Path]:
    """Train and eval builds of tinycoco with default settings (eval uses the train stats)."""
    out = tmp_path_factory.mktemp("builds")
    ann, images = tinycoco / "instances.json", tinycoco / "images"
    build(ann, images, out / "train", BuildConfig("train"), num_proc=2)
    build(ann, images, out / "eval", BuildConfig("eval", stats=out / "train"), num_proc=2)
    return {"train": out / "train", "eval": out / "eval", "root": out}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """Six synthetic scenes in COCO format (a module may define its own)."""
    from mpcc.data.synthetic import generate_scenes

    root = tmp_path_factory.mktemp("scenes")
    generate_scenes(root, num_images=6, seed=0)
    return root


@pytest.fixture(scope="module")
def train_build(scenes, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("builds") / "train"
    build(scenes / "instances.json", scenes / "images", out, BuildConfig("train"), num_proc=1)
    return out


@pytest.fixture(scope="module")
def eval_build(scenes, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("builds") / "eval"
    build(scenes / "instances.json", scenes / "images", out, BuildConfig("eval", balance=False), num_proc=1)
    return out


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from mpcc.models import build_tiny_model

    return build_tiny_model("qwen2_5_vl", tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """The tiny model behind a real OpenAI-compatible server on loopback (tests/openai_server.py, mpcc's
    own generation: no `transformers serve`, whose internals change between releases), started once for
    the endpoint tests of annotate and eval."""
    from mpcc.models import resolve_model_path

    model = resolve_model_path("tiny:qwen2_5_vl")
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    command = [sys.executable, str(Path(__file__).with_name("openai_server.py")), model, "--port", str(port)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the test server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the test server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    yield {"url": url, "model": model}
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
