"""`mpcc export`: full fine-tune, LoRA (adapter alone and merged) and ZeRO-3 shards -> a folder that
reloads with the checkpoint's logits, a model card, a dry run, a (faked) upload that never shows the
token, and clear errors that leave --out untouched."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import CommitInfo, HfApi, ModelCard
from PIL import Image
from stock_files import assert_stock_folders

import mpcc.export
from mpcc.cli import main as cli
from mpcc.data import prompts
from mpcc.evaluation.metrics import compute_metrics
from mpcc.evaluation.run_identity import weights_fingerprint
from mpcc.generation.generators import conversation
from mpcc.models import load_model, load_processor
from mpcc.records import TRAINING_RUN_FILE
from mpcc.rewards import resolve_rewards
from mpcc.train import main as train
from mpcc.training.config import load_recipe
from mpcc.training.record import run_record

ROOT = Path(__file__).resolve().parents[1]
SFT = ROOT / "recipes" / "tiny" / "sft.yaml"
LORA = ["--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8", "--lora_target_modules", "all-linear"]
TOKEN = "hf_exportTestSecret0123456789abcdef"


def _train(out: Path, extra: list[str] = ()) -> Path:
    assert train([str(SFT), "--output_dir", str(out), "--max_steps", "2", "--save_steps", "2", *extra]) == 0
    return out


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("runs") / "full")


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("runs") / "lora", LORA)


def _logits(model, processor) -> torch.Tensor:
    """Logits on an input of the test's own (not the exporter's probe): a noise image + a yes/no question."""
    pixels = np.random.default_rng(1).integers(0, 255, (84, 84, 3), dtype=np.uint8)
    row = {
        "prompt": prompts.conversation(prompts.yesno_question("black", "cup")),
        "image": Image.fromarray(pixels),
    }
    inputs = processor.apply_chat_template(
        conversation(row), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.inference_mode():
        return model.eval()(**inputs).logits.float()


def _peft(base: str, adapter: Path):
    from peft import PeftModel

    return PeftModel.from_pretrained(load_model(base), str(adapter))


def _card(out: Path) -> tuple[dict, str]:
    card = ModelCard.load(out / "README.md")
    return card.data.to_dict(), card.text


def _metrics_run(path: Path, model: str | Path) -> Path:
    """An `mpcc eval` output folder of `model`: metrics.json from a few scored records, eval_run.json."""
    records = [
        {"item_id": f"{i}", "format": "mc4", "difficulty": level, "in_distribution": True,
         "supercategory": "kitchen", "correct": i % 2 == 0, "format_ok": True, "parsed": "A"}
        for i, level in enumerate(["easy", "easy", "middle", "hard"])
    ]  # fmt: skip
    path.mkdir()
    (path / "metrics.json").write_text(json.dumps(compute_metrics(records)))
    named = str(Path(model).resolve()) if Path(model).exists() else str(model)
    (path / "eval_run.json").write_text(json.dumps({"model": named, "weights": weights_fingerprint(model)}))
    return path


def test_training_records_its_settings(full_run, lora_run):
    record = json.loads((full_run / TRAINING_RUN_FILE).read_text())
    assert record["run"]["trainer"] == "sft" and record["trainer"]["max_steps"] == 2
    assert record["trainer"]["hub_token"] == "<HUB_TOKEN>"  # transformers' masking of secrets
    assert record["dataset"]["build"]["config"]["split"] == "train"
    assert json.loads((lora_run / TRAINING_RUN_FILE).read_text())["model"]["lora_r"] == 4


def test_card_describes_grpo_with_prior_sampling():
    """The paper recipe's settings as the record holds them: rewards, prior sampling, a Hub base model."""
    run, args, model_args = load_recipe(
        ROOT / "recipes" / "grpo_prior.yaml", ["--dataset_path", "synthetic:tiny", "--use_cpu", "true"]
    )
    args.reward_weights = resolve_rewards(args.rewards)[1]  # as build_trainer sets them
    record = run_record(run, args, model_args)
    card = mpcc.export.model_card(
        record, model_args.model_name_or_path, False, False, None, "me/m", "apache-2.0"
    )
    meta = card.data.to_dict()
    assert meta["base_model"] == "Qwen/Qwen2.5-VL-3B-Instruct" and meta["license"] == "apache-2.0"
    assert "grpo_prior" in meta["tags"] and "lora" not in meta["tags"]
    assert "| learning_rate | `2e-06` |" in card.text and "| warmup_steps | `0.1` |" in card.text
    assert "Reward (`rewards: default`): 0.5 x format + 1 x exact_match + 0.5 x levenshtein." in card.text
    # As the recipe says it (append, num_generations 4), not the internal replace group of 5.
    assert "(`prior_mode: append`, 4 generated samples + the trace, groups of 5)" in card.text
    assert "| num_generations | `4` |" in card.text and "| prior_mode | `append` |" in card.text
    assert "| prior_when | `always` |" in card.text and "| prior_in_group_stats | `True` |" in card.text


def test_full_finetune_checkpoint(full_run, tmp_path, capsys):
    checkpoint, out = full_run / "checkpoint-2", tmp_path / "export"
    eval_run = _metrics_run(tmp_path / "eval", checkpoint)
    assert cli(["export", str(checkpoint), "--out", str(out), "--eval-run", str(eval_run)]) == 0
    printed = capsys.readouterr().out
    assert "(model checkpoint)" in printed and "validated: max |logit difference| 0 <=" in printed
    for name in ("model.safetensors", "config.json", "generation_config.json", "processor_config.json",
                 "tokenizer.json", "chat_template.jinja", "README.md"):  # fmt: skip
        assert (out / name).is_file(), name
    assert not list(tmp_path.glob(".export.*")), "the staging folder was left behind"
    assert_stock_folders(checkpoint, out)  # both load with stock AutoProcessor, without mpcc

    reference = _logits(load_model(checkpoint), load_processor(checkpoint))
    exported = _logits(load_model(out), load_processor(out))
    torch.testing.assert_close(exported, reference, rtol=0, atol=0)
    assert (out / "chat_template.jinja").read_text() == (checkpoint / "chat_template.jinja").read_text()
    assert (
        json.loads((out / "generation_config.json").read_text())["eos_token_id"]
        == json.loads((checkpoint / "generation_config.json").read_text())["eos_token_id"]
    )

    meta, text = _card(out)
    assert meta["license"] == "other" and meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "image-text-to-text" and {"mpcc", "sft"} <= set(meta["tags"])
    assert "base_model" not in meta  # `tiny:qwen2_5_vl` is no Hub id: named in the text only
    assert "Base model: `tiny:qwen2_5_vl`" in text and "exported at step 2" in text
    usage = text[text.index("## Usage") :]
    assert "AutoProcessor.from_pretrained" in usage and "mpcc" not in usage.split("```")[1]
    assert "`sft` trainer" in text and "| learning_rate | `0.005` |" in text
    build = json.loads((full_run / TRAINING_RUN_FILE).read_text())["dataset"]["build"]
    assert f"masking | `{build['config']['mask']['mode']}, fill black" in text
    assert f"{build['thresholds'][0]:.4f} / {build['thresholds'][1]:.4f}" in text
    assert ", ".join(build["config"]["ood_categories"]) in text
    assert "## Evaluation (`mpcc eval`)" in text and "### Accuracy by level and format" in text
    assert f"Of these weights (`mpcc eval` of `{checkpoint.resolve()}`)" in text
    assert "| easy | 0.500 (n=2)" in text
    assert "arXiv 2510.21807" in text and "Proceedings of the AAAI Conference" in text
    assert "Reward" not in text and "Prior sampling" not in text  # SFT has neither


@pytest.mark.parametrize("merge", [False, True], ids=["adapter", "merged"])
def test_lora(lora_run, tmp_path, merge, capsys):
    out = tmp_path / "export"
    assert cli(["export", str(lora_run), "--out", str(out), *(["--merge-lora"] if merge else [])]) == 0
    assert "(adapter checkpoint)" in capsys.readouterr().out
    base = json.loads((lora_run / "adapter_config.json").read_text())["base_model_name_or_path"]
    processor = load_processor(out)
    reference = _logits(_peft(base, lora_run), processor)
    assert (reference - _logits(load_model(base), processor)).abs().max() > 1e-2  # the adapter matters
    meta, text = _card(out)
    assert "| LoRA r | `4` |" in text and "lora" in meta["tags"]
    if merge:
        assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
        torch.testing.assert_close(_logits(load_model(out), processor), reference, rtol=0, atol=1e-4)
        assert meta["library_name"] == "transformers" and "LoRA adapter merged into the base" in text
    else:
        assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
        torch.testing.assert_close(_logits(_peft(base, out), processor), reference, rtol=0, atol=0)
        assert meta["library_name"] == "peft" and "a LoRA adapter only (not merged)" in text
        assert "PeftModel.from_pretrained(base" in text


def test_dry_run_lists_files_and_uploads_nothing(full_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(HfApi, "upload_folder", lambda *a, **k: calls.append(a))
    out = tmp_path / "export"
    argv = [
        "export",
        str(full_run),
        "--out",
        str(out),
        "--push-to-hub",
        "me/mpcc-tiny",
        "--private",
        "--dry-run",
    ]
    assert cli(argv) == 0
    printed = capsys.readouterr()
    assert calls == []
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert (
        f"would upload {len(files)} files" in printed.out and "to me/mpcc-tiny (private: True)" in printed.out
    )
    for file in files:
        assert f"{file.stat().st_size:>14,}  {file.relative_to(out).as_posix()}" in printed.out
    assert TOKEN not in printed.out + printed.err


def test_push_uses_hub_token_sources_and_never_shows_the_token(
    full_run, tmp_path, capsys, caplog, monkeypatch
):
    from huggingface_hub import get_token

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs, get_token()))

    def upload_folder(self, **kwargs):
        calls.append(("upload_folder", kwargs["repo_id"], kwargs, get_token()))
        assert (Path(kwargs["folder_path"]) / "README.md").is_file()  # validated and complete before upload
        return CommitInfo(f"https://huggingface.co/{kwargs['repo_id']}/commit/abc", "msg", "", "abc")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    out = tmp_path / "export"
    with caplog.at_level("DEBUG"):
        assert (
            cli(["export", str(full_run), "--out", str(out), "--push-to-hub", "me/mpcc-tiny", "--private"])
            == 0
        )
    printed = capsys.readouterr()
    assert [c[0] for c in calls] == ["create_repo", "upload_folder"]
    assert calls[0][1] == "me/mpcc-tiny" and calls[0][2]["private"] is True and calls[0][2]["exist_ok"]
    assert calls[1][2]["folder_path"] == str(out) and calls[1][2]["repo_type"] == "model"
    assert all(c[3] == TOKEN for c in calls)  # huggingface_hub found it in HF_TOKEN by itself
    assert "https://huggingface.co/me/mpcc-tiny/commit/abc" in printed.out
    assert 'from_pretrained("me/mpcc-tiny")' in _card(out)[1]
    assert TOKEN not in printed.out + printed.err + caplog.text
    assert not any(TOKEN.encode() in p.read_bytes() for p in out.rglob("*") if p.is_file())


def _rc_err(argv, capsys) -> tuple[int, str]:
    rc = cli(argv)
    return rc, capsys.readouterr().err


def test_bad_inputs_give_clear_errors_and_write_nothing(full_run, lora_run, tmp_path, capsys):
    out = tmp_path / "out"
    not_ckpt = tmp_path / "notes"
    not_ckpt.mkdir()
    (not_ckpt / "notes.txt").write_text("not a model")
    cases = {
        "not a training checkpoint": [str(not_ckpt)],
        "no such checkpoint directory": [str(tmp_path / "missing")],
        "apply to LoRA adapters": [str(full_run), "--merge-lora"],
        "not an `mpcc eval` output": [str(full_run), "--eval-run", str(not_ckpt)],
        "need --push-to-hub": [str(full_run), "--dry-run"],
        "Repo id must be": [str(full_run), "--push-to-hub", "bad id//x", "--dry-run"],
    }
    for message, args in cases.items():
        rc, err = _rc_err(["export", *args, "--out", str(out)], capsys)
        assert rc == 2 and "mpcc export: error: " in err and message in err, (message, err)
        assert not out.exists(), message

    adapter = tmp_path / "adapter"
    shutil.copytree(lora_run / "checkpoint-2", adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone")
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    rc, err = _rc_err(["export", str(adapter), "--out", str(out)], capsys)
    assert rc == 2 and "cannot load the adapter's base model" in err and "--base-model" in err
    assert str(tmp_path / "gone") in err and not out.exists()

    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc, err = _rc_err(["export", str(full_run), "--out", str(out)], capsys)
    assert rc == 2 and "exists and is not empty" in err and os.listdir(out) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "notes", "out"]  # no staging left


def test_the_eval_run_must_be_of_this_model_or_its_base(full_run, tmp_path, capsys):
    checkpoint, out = full_run / "checkpoint-2", tmp_path / "export"
    other = _metrics_run(tmp_path / "other", "tiny:qwen3_vl")
    rc, err = _rc_err(["export", str(checkpoint), "--out", str(out), "--eval-run", str(other)], capsys)
    assert rc == 2 and f"--eval-run {other} evaluated tiny:qwen3_vl, not {checkpoint}" in err, err
    assert "nor its base tiny:qwen2_5_vl" in err and not out.exists()
    of_base = _metrics_run(tmp_path / "base", "tiny:qwen2_5_vl")  # the record's model_name_or_path
    assert cli(["export", str(checkpoint), "--out", str(out), "--eval-run", str(of_base)]) == 0
    text = _card(out)[1]
    assert "Of the **base model** `tiny:qwen2_5_vl`, not of these fine-tuned weights" in text


def test_base_model_must_be_the_adapters_recorded_base(lora_run, full_run, tmp_path, capsys):
    recorded = json.loads((lora_run / "adapter_config.json").read_text())["base_model_name_or_path"]
    another = str(full_run / "checkpoint-2")  # the same architecture: it would merge without an error
    out = tmp_path / "export"
    rc, err = _rc_err(
        ["export", str(lora_run), "--out", str(out), "--merge-lora", "--base-model", another], capsys
    )
    assert rc == 2 and f"--base-model {another} is not the base the adapter was trained on" in err, err
    assert recorded in err and "tiny:qwen2_5_vl" in err and not out.exists()
    copy = tmp_path / "base copy"
    shutil.copytree(recorded, copy)  # a base that has moved: the same weights
    assert cli(["export", str(lora_run), "--out", str(out), "--base-model", str(copy)]) == 0


def test_a_mismatch_fails_validation_and_writes_nothing(full_run, tmp_path, capsys, monkeypatch):
    save = mpcc.export.save_folder

    def corrupting_save(model, processor, folder, merge):
        with torch.no_grad():
            model.lm_head.weight.add_(0.5)
        save(model, processor, folder, merge)

    monkeypatch.setattr(mpcc.export, "save_folder", corrupting_save)
    rc, err = _rc_err(["export", str(full_run), "--out", str(tmp_path / "out")], capsys)
    assert rc == 2 and "does not reproduce the checkpoint: max |logit difference|" in err
    assert list(tmp_path.iterdir()) == []
