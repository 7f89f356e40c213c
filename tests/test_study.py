"""`mpcc study` on a tiny budget: every stage runs and the report has its sections; a rerun skips the
finished runs and redoes only what is missing; the OOD column holds only categories no training row has
as its target; the arms change only the settings they claim to."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from mpcc.cli import main
from mpcc.demo import NEW_TOKENS
from mpcc.evaluation.seed_intervals import groups_of
from mpcc.records import read_build
from mpcc.study.arms import arms, read_facts
from mpcc.study.config import StudyConfig
from mpcc.study.data import layout, target_categories
from mpcc.study.outputs import collect, eval_dir
from mpcc.study.runs import run_study

STAGE = re.compile(r"^\[(\d+)/(\d+)\] (.*?)(?: -> (\S+)|: already done, in (\S+))$", re.M)
SECTIONS = (
    "# MPCC in miniature",
    "Reading: ",
    "## The table (mean over seeds [95% interval over seeds and items])",
    "## Paired differences",
    "## Seed by seed",
    "## Learning curves of the GRPO runs",
    "## Ablation (a): semantic masks vs random patches of the same area",
    "## The OOD column",
    "## What the rows and columns are",
    "## Settings",
)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One tiny study (one seed, the masking ablation) and the stage lines it printed. Builds render in
    this process (cpu_count 1): the same bytes as a pool's, without spawning one per build."""
    out = tmp_path_factory.mktemp("study")
    config = StudyConfig(
        out=out, seeds=1, num_images=16, sft_steps=2, grpo_steps=2, eval_items=5, ablations=("masking",)
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "cpu_count", lambda: 1)
        import contextlib
        import io

        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            run_study(config)
    return config, printed.getvalue()


@pytest.mark.slow
def test_study_runs_every_stage_and_writes_the_report(study):
    config, printed = study
    stages = STAGE.findall(printed)
    total = int(stages[0][1])
    # data (4 demo stages + the random-patch build), zero-shot eval, 4 main runs + 2 masking runs x
    # (train, eval), report
    assert [int(k) for k, *_ in stages] == list(range(1, total + 1)) and total == 5 + 1 + 12 + 1
    assert all(Path(a or b).exists() for *_, a, b in stages)
    report = (config.out / "report" / "study.md").read_text()
    positions = [report.index(section) for section in SECTIONS]
    assert positions == sorted(positions)  # every section, in order
    table = report.split("## The table")[1].split("##")[0]
    header = next(line for line in table.splitlines() if line.startswith("| run"))
    assert header.split(" | ")[1:10] == [
        "easy",
        "middle",
        "hard",
        "ood",
        "mc4",
        "mc7",
        "yesno",
        "open",
        "all",
    ]
    assert re.search(r"^\| chance \(uniform guess\) \| 0\.\d+ \|", table, re.M)  # beside every column
    for label in (
        "zero-shot = prompt-only",
        "SFT",
        "GRPO",
        "GRPO + prior (append)",
        "GRPO + prior (replace)",
    ):
        assert f"| {label} |" in table
    for chart in ("accuracy.png", "ablations_accuracy.png", "learning_curves.png"):
        assert (config.out / "report" / chart).read_bytes()[:4] == b"\x89PNG"
    assert "--seeds 1" in report and "--ablations masking" in report  # the command that made it
    timings = json.loads((config.out / "timings.json").read_text())
    assert {"train sft 0", "eval sft 0", "train patch_prior 0", "eval zero_shot"} <= set(timings)


def test_rerun_skips_finished_runs_and_redoes_only_the_missing_one(study, capsys):
    config, _ = study
    missing = eval_dir(config.out, "grpo", config.seed)
    (missing / "metrics.json").unlink()  # an eval cut short: its metrics are written last
    before = (eval_dir(config.out, "sft", config.seed) / "metrics.json").stat().st_mtime_ns
    run_study(config)
    stages = STAGE.findall(capsys.readouterr().out)
    redone = [what for _, _, what, where, _ in stages if where]
    assert redone == ["evaluate GRPO, seed 0", "write the report and charts"]
    assert (missing / "metrics.json").is_file()
    assert (eval_dir(config.out, "sft", config.seed) / "metrics.json").stat().st_mtime_ns == before


def test_ood_column_holds_only_categories_no_training_row_targets(study):
    config, _ = study
    paths = layout(config.out)
    answers, _ = collect(config, arms(config, read_facts(config.recipes)))
    records = [r for by_seed in answers.values() for rs in by_seed.values() for r in rs]
    ood = [r for r in records if "ood" in groups_of(r)]
    assert ood, "the tiny study's eval items hold no held-out object: choose other settings"
    assert ood == [r for r in records if r["in_distribution"] is False]
    held_out = set(read_build(paths["eval"]).config["ood_categories"])
    assert {r["category"] for r in ood} <= held_out
    for train in ("train", "train_patch"):  # every training row's target, semantic and random-patch
        assert not {r["category"] for r in ood} & target_categories(paths[train])
        assert not held_out & target_categories(paths[train])
    report = (config.out / "report" / "study.md").read_text()
    assert "none of them is a training target" in report.split("## The OOD column")[1]


def test_arms_change_only_what_they_claim():
    """With the tiny recipes (grpo_prior: append, 3 generated + the trace, 1 group a step): append keeps
    that, replace keeps G=3 (2 generated + the trace, a batch of 3), each reward ablation drops one
    component, the weak start uses the mechanism run's settings, every GRPO run but the weak start's starts
    from SFT and all of them have the demo's completion length."""
    config = StudyConfig(out=Path("unused"), grpo_steps=7, weak_steps=5)
    facts = read_facts(config.recipes)
    assert facts.rewards == {"format": 0.5, "exact_match": 1.0, "levenshtein": 0.5}
    table = arms(config, facts)
    assert list(table)[:5] == ["zero_shot", "sft", "grpo", "prior_append", "prior_replace"]

    def flag(name, key):
        args = table[name].overrides
        return args[args.index(key) + 1] if key in args else None

    assert [flag("prior_append", k) for k in ("--prior_mode", "--num_generations")] == ["append", "3"]
    assert flag("prior_append", "--per_device_train_batch_size") == "4"
    assert [flag("prior_replace", k) for k in ("--prior_mode", "--num_generations")] == ["replace", "3"]
    assert flag("prior_replace", "--per_device_train_batch_size") == "3"
    assert flag("no_format", "--rewards") == "exact_match:1,levenshtein:0.5"
    assert flag("no_exact_match", "--rewards") == "format:0.5,levenshtein:0.5"
    assert flag("no_levenshtein", "--rewards") == "format:0.5,exact_match:1"
    assert {n for n, a in table.items() if a.start == "sft"} == {
        "grpo", "prior_append", "prior_replace", "no_format", "no_exact_match", "no_levenshtein"
    }  # fmt: skip
    assert table["patch_prior"].start == "patch_sft" and table["patch_sft"].data == "train_patch"
    assert flag("weak_prior", "--learning_rate") == "1e-2" and table["weak_prior"].start is None
    assert flag("weak_grpo", "--per_device_train_batch_size") == "16" and not table["weak_grpo"].evaluated
    assert {a.steps for n, a in table.items() if a.recipe != "sft" and a.recipe} == {7, 5}
    # every GRPO run generates room for the scene traces (about 50 tokens; the recipe's 48 clips them)
    trained = [name for name, arm in table.items() if arm.recipe not in (None, "sft")]
    assert {flag(name, "--max_completion_length") for name in trained} == {str(NEW_TOKENS)}
    assert set(arms(StudyConfig(out=Path("unused"), ablations=()), facts)) == set(list(table)[:5])


def test_bad_ablation_is_one_line_naming_the_option(capsys):
    assert main(["study", "--ablations", "masking,colour"]) == 2
    err = capsys.readouterr().err
    assert "--ablations" in err and "colour" in err and "Traceback" not in err
