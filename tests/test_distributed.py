"""Two CPU ranks: DDP (torchrun) and DeepSpeed ZeRO-2 / ZeRO-3 (Accelerate). Groups of 4 over 2 x 6
rows straddle the ranks; every group must still get exactly one trace."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from ports import free_port

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "tiny" / "grpo_prior.yaml"
BIN = Path(sys.executable).parent
ARGS = ["--max_steps", "2", "--per_device_train_batch_size", "6", "--save_strategy", "no"]

LAUNCHERS = {
    "ddp": [str(BIN / "torchrun"), "--nproc_per_node", "2"],
    "zero2": [
        str(BIN / "accelerate"),
        "launch",
        "--config_file",
        str(ROOT / "recipes/accelerate/zero2.yaml"),
        "--num_processes",
        "2",
        "--mixed_precision",
        "no",
    ],
    "zero3": [
        str(BIN / "accelerate"),
        "launch",
        "--config_file",
        str(ROOT / "recipes/accelerate/zero3.yaml"),
        "--num_processes",
        "2",
        "--mixed_precision",
        "no",
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_two_ranks_one_trace_per_group(launcher, tmp_path, tmp_path_factory):
    env = {
        **os.environ,
        # ZeRO-3 starts from an empty cache: building the tiny model inside the run once hung there
        "MPCC_CACHE": str(
            tmp_path / "cache" if launcher == "zero3" else tmp_path_factory.getbasetemp() / "mpcc_cache"
        ),
        "DS_ACCELERATOR": "cpu",
        "PYTHONUNBUFFERED": "1",
    }
    out = tmp_path / "out"
    port = ["--master_port" if launcher == "ddp" else "--main_process_port", str(free_port())]
    command = [*LAUNCHERS[launcher], *port, "-m", "mpcc.train", str(RECIPE), "--output_dir", str(out), *ARGS]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    # 12 rows per step = 3 groups of 4 (3 generated + the trace), 2 logged steps
    assert re.findall(r"'prior/traces': '([0-9.]+)'", output) == ["3", "3"]
    assert (out / "model.safetensors").is_file()
