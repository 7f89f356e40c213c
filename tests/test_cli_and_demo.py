"""The command line, the demo pipeline and the README/CI contract."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from mpcc.cli import main
from mpcc.data.render import load_dataset
from mpcc.data.schema import markdown_table

ROOT = Path(__file__).resolve().parents[1]


def test_prepare_and_inspect_from_the_command_line(tinycoco, tmp_path, capsys):
    args = ["--annotations", str(tinycoco / "instances.json"), "--images", str(tinycoco / "images")]
    assert (
        main(
            [
                "prepare",
                "train",
                *args,
                "--out",
                str(tmp_path / "train"),
                "--mask-mode",
                "bbox",
                "--max-per-image",
                "1",
                "--num-proc",
                "1",
                "--image-format",
                "lazy",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "prepare",
                "eval",
                *args,
                "--out",
                str(tmp_path / "eval"),
                "--stats",
                str(tmp_path / "train"),
                "--formats",
                "mc4,yesno",
                "--ood-categories",
                "none",
                "--max-items",
                "12",
                "--num-proc",
                "1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "rows per level" in out and "skipped.jsonl" in out
    record = json.loads((tmp_path / "train" / "mpcc_build.json").read_text())
    assert record["config"]["mask"]["mode"] == "bbox" and record["config"]["selection"]["max_per_image"] == 1
    evald = load_dataset(tmp_path / "eval")
    assert set(evald["format"]) == {"mc4", "yesno"} and len(set(evald["item_id"])) == 12
    assert all(evald["in_distribution"])
    assert main(["inspect", str(tmp_path / "eval"), "--out", str(tmp_path / "preview"), "--num", "3"]) == 0
    assert (tmp_path / "preview" / "index.html").is_file()
    assert main(["export-mpcc-eval", str(tmp_path / "eval"), "--out", str(tmp_path / "items.json")]) == 0
    assert sum(len(v) for v in json.loads((tmp_path / "items.json").read_text()).values()) == 12


def test_bad_option_values_exit_with_a_message(tinycoco, tmp_path, capsys):
    code = main(
        [
            "prepare",
            "train",
            "--annotations",
            str(tinycoco / "instances.json"),
            "--images",
            str(tinycoco / "images"),
            "--out",
            str(tmp_path / "o"),
            "--min-area-frac",
            "0.9",
            "--max-area-frac",
            "0.1",
        ]
    )
    assert code == 2 and "min_area_frac" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    """The README demo, smaller: scenes -> train set in every format + eval set -> preview -> SFT, GRPO
    with prior sampling, plain GRPO -> the start and the three evaluated on the same items -> comparison
    -> export; every stage announced with its output."""
    command = [sys.executable, "-m", "mpcc", "demo", "--out", str(tmp_path), "--num-images", "40"]
    command += ["--sft-steps", "2", "--grpo-steps", "2", "--eval-items", "4", "--grounding-items", "2"]
    # from outside the checkout: the default recipes are the packaged ones
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stages = re.findall(r"^\[(\d+)/(\d+)\] (.*) -> (\S+)$", proc.stdout, re.M)
    assert [int(k) for k, *_ in stages] == list(range(1, 15)) and {n for _, n, *_ in stages} == {"14"}
    assert all(Path(where).exists() for *_, where in stages)  # every stage's output is where it said
    assert len(re.findall(r"^\[\d+/14\] done in \d+ s$", proc.stdout, re.M)) == 14
    assert "Setting accelerator to CPU" not in proc.stdout + proc.stderr
    train, evald = load_dataset(tmp_path / "data" / "train"), load_dataset(tmp_path / "data" / "eval")
    assert len(train) > 20 and len(evald) > 20 and all(train["reasoning"])
    assert set(train["format"]) == {"open", "mc4", "mc7", "yesno"}
    # the scene generator's traces, imported and verified like a teacher's
    assert all(train["reasoning_verified"]) and set(train["reasoning_mode"]) == {"import"}
    assert "traces: kept" in proc.stdout
    assert (tmp_path / "preview" / "index.html").is_file()
    for stage in ("sft", "grpo_prior", "grpo"):
        assert (tmp_path / stage / "model.safetensors").is_file(), stage
        assert (tmp_path / stage / "trainer_state.json").is_file(), stage
    runs = ("start", "sft", "grpo_prior", "grpo")
    metrics = {run: json.loads((tmp_path / "eval" / run / "metrics.json").read_text()) for run in runs}
    assert len({m["items"] for m in metrics.values()}) == 1 and metrics["start"]["items"] == 4  # same items
    for run, m in metrics.items():
        assert set(m["per_format"]) == {"mc4", "mc7", "yesno", "open"}
        assert set(m.get("diagnostics", ())) == (set() if run == "start" else {"blind"})  # the blank image
    compared = (tmp_path / "compare" / "compare.md").read_text()
    assert compared.index("Reading: ") < compared.index("## Accuracy by format (95% interval")
    assert "| chance (uniform guess) | 0.250 | 0.143 |" in compared
    assert "held-out categories (OOD)" in compared and "## Accuracy by level and format" in compared
    assert "## What the reasoning reads off the image: the scene type (of six)" in compared
    assert "## What the reasoning reads off the image: the mask's outline (of six)" in compared
    # step-level grounding of the four models, the random start among them (the control)
    grounded = compared.split("## Step-level grounding")[1].split("## Learning curves")[0]
    assert all(f"| {label} |" in grounded for label in ("start (random weights)", "plain GRPO"))
    assert "collapse ratio (raw mass)" in grounded and "CRM, evidence − control ablation:" in grounded
    for run in runs:
        grounding = json.loads((tmp_path / "grounding" / run / "metrics.json").read_text())
        assert grounding["items"] == 2 and set(grounding["grounding"]) >= {"evidence", "crm"}
    assert all(f"| {run} |" in compared for run in runs)
    assert re.search(
        r"^\| GRPO with prior sampling \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| 2 \|$", compared, re.M
    )
    assert re.search(r"^\| plain GRPO \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| 2 \|$", compared, re.M)
    for chart in ("accuracy.png", "learning_curves.png"):
        with Image.open(tmp_path / "compare" / chart) as image:
            assert image.format == "PNG"
    assert (tmp_path / "export" / "model.safetensors").is_file()
    assert "## Evaluation (`mpcc eval`)" in (tmp_path / "export" / "README.md").read_text()  # its card
    assert "comparison:" in proc.stdout
    # it ends with the comparison's headline tables, printed
    assert (
        proc.stdout.index("[14/14] done")
        < proc.stdout.index("## Accuracy by format")
        < proc.stdout.index("## Learning curves")
    )
    assert "| GRPO with prior sampling |" in proc.stdout.split("## Accuracy by format")[1]
    assert "Reading: " in proc.stdout and "| held-out categories (OOD) |" in proc.stdout

    again = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(re.findall(r"^\[\d+/14\] .*: already done, in \S+$", again.stdout, re.M)) == 13
    assert re.search(r"^\[13/14\] compare the four models -> \S+$", again.stdout, re.M)  # always redone


def test_readme_commands_and_ci_agree():
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("##", 1)[0]
    assert re.search(r"^make demo\b", quick, re.M) and re.search(r"^make test\b", quick, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test:", makefile, re.M) and "mpcc demo" in makefile
    assert markdown_table() in readme  # the schema is documented once, and the README shows that table


def test_mpcc_train_and_tiny_model_commands(tmp_path, capsys):
    assert main(["tiny-model", "--arch", "qwen2_vl", "--out", str(tmp_path / "tiny")]) == 0
    assert (tmp_path / "tiny" / "config.json").is_file()
    assert main(["recipes"]) == 0 and "tiny/grpo_prior" in capsys.readouterr().out
    assert (
        main(
            [
                "train",
                "tiny/grpo",  # a packaged recipe's name; no accelerate_config: runs in this process
                "--output_dir",
                str(tmp_path / "run"),
                "--max_steps",
                "1",
                "--model_name_or_path",
                str(tmp_path / "tiny"),
                "--save_strategy",
                "no",
            ]
        )
        == 0
    )
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
