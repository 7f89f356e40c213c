"""Two CPU ranks: DDP (torchrun) and DeepSpeed ZeRO-2 / ZeRO-3 (Accelerate). Groups of 4 over 2 x 6
rows straddle the ranks; every group must still get exactly one trace. Under ZeRO-3, a run resumed from
its step-1 checkpoint ends with the uninterrupted run's weights (DeepSpeed restores its engine's own state,
as under ZeRO-2; mpcc's own restore, which DDP uses, is checked in one process by test_resume.py: a
second resumed run per launcher would cost the suite a minute on 2 cores), and its checkpoint left with
its shards alone exports to exactly the gathered weights."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ports import free_port
from safetensors.torch import load_file

from mpcc.cli import main as cli
from mpcc.models import load_model

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "tiny" / "grpo_prior.yaml"
BIN = Path(sys.executable).parent
ARGS = ["--max_steps", "2", "--per_device_train_batch_size", "6", "--save_steps", "1"]

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
def test_two_ranks_one_trace_per_group(launcher, tmp_path, capsys):
    env = {
        **os.environ,
        # ZeRO-3 starts from an empty cache: building the tiny model inside the run once hung there
        **({"MPCC_CACHE": str(tmp_path / "cache")} if launcher == "zero3" else {}),
        "DS_ACCELERATOR": "cpu",
        "PYTHONUNBUFFERED": "1",
    }

    def train(out: Path, *extra: str) -> str:
        port = ["--master_port" if launcher == "ddp" else "--main_process_port", str(free_port())]
        command = [*LAUNCHERS[launcher], *port, "-m", "mpcc.train", str(RECIPE), "--output_dir", str(out)]
        proc = subprocess.run(
            [*command, *ARGS, *extra], capture_output=True, text=True, timeout=900, env=env, cwd=ROOT
        )
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, output[-4000:]
        return output

    full, cut = tmp_path / "full", tmp_path / "cut"
    output = train(full)
    # 12 rows per step = 3 groups of 4 (3 generated + the trace), 2 logged steps
    assert re.findall(r"'prior/traces': '([0-9.]+)'", output) == ["3", "3"]
    assert (full / "model.safetensors").is_file()
    if launcher != "zero3":
        return
    _shards_alone_export_the_gathered_weights(full, tmp_path / "shards", capsys)

    cut.mkdir()  # as a kill right after the step-1 checkpoint leaves it
    shutil.copytree(full / "checkpoint-1", cut / "checkpoint-1")
    shutil.copy(full / "mpcc_run.json", cut)
    output = train(cut, "--resume_from_checkpoint", "auto")
    assert re.findall(r"'prior/traces': '([0-9.]+)'", output) == ["3"]  # step 2 only
    expected, resumed = load_file(full / "model.safetensors"), load_file(cut / "model.safetensors")
    step1 = load_file(full / "checkpoint-1" / "model.safetensors")
    assert expected.keys() == resumed.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-6, msg=name)
    assert max((expected[k] - step1[k]).abs().max().item() for k in expected) > 1e-5  # step 2 moved them


def _shards_alone_export_the_gathered_weights(run: Path, copy: Path, capsys) -> None:
    """The run copied without any gathered weights: its step-1 checkpoint exports through DeepSpeed's
    zero_to_fp32, to exactly the weights the run gathered there."""
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("model.safetensors"))
    checkpoint = copy / "checkpoint-1"
    assert (checkpoint / "latest").is_file() and not (checkpoint / "model.safetensors").exists()
    capsys.readouterr()
    assert cli(["export", str(checkpoint), "--out", str(copy.parent / "export")]) == 0
    assert "(zero checkpoint)" in capsys.readouterr().out
    exported, gathered = load_model(copy.parent / "export"), load_model(run / "checkpoint-1")
    assert exported.dtype == gathered.dtype
    for (name, a), (_, b) in zip(exported.state_dict().items(), gathered.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
