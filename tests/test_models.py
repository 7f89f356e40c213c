"""Tiny Qwen VL models built offline; image-only processors without torchvision; loading, LoRA and TRL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from stock_files import assert_stock_folders
from transformers import ProcessorMixin, Qwen2Config, Qwen2ForCausalLM

import mpcc.models as models
from mpcc.families import qwen
from mpcc.models import (
    build_tiny_model,
    ensure_tiny_model,
    freeze_vision_tower,
    keep_lora_off_vision_tower,
    load_model,
    load_processor,
    resolve_model_path,
    vision_tower,
)

QWEN_ARCHS = tuple(f.name for f in qwen.FAMILIES)  # the other families: tests/test_families.py
MIN_PIXELS, MAX_PIXELS = 32 * 32 * 4, 32 * 32 * 16  # small bounds: 4 to about 20 image tokens


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {arch: build_tiny_model(arch, root / arch) for arch in QWEN_ARCHS}


@pytest.fixture(scope="module")
def image() -> Image.Image:
    img = Image.new("RGB", (320, 240), (90, 140, 60))
    img.paste((0, 0, 0), (100, 80, 180, 160))  # a black mask, as in MPCC
    return img


def _messages(image=None) -> list[dict]:
    picture = {"type": "image"} if image is None else {"type": "image", "image": image}
    return [
        {"role": "system", "content": [{"type": "text", "text": "You are a careful visual reasoner."}]},
        {"role": "user", "content": [picture, {"type": "text", "text": "Which object is hidden?"}]},
    ]


def test_tiny_tokenizer_answers_with_the_tokens_the_prompt_uses(tiny):
    """After the answer tag's bare `>`, a letter is the very token of the options' `B. cup` (so a model can
    copy it), in every format the same pattern: a tokenizer that merged `>` with the answer made `>B` a
    token of its own that no prompt holds, so the letter could not be copied from the options."""
    tokenizer = load_processor(tiny["qwen2_5_vl"]).tokenizer
    option_letter = tokenizer.tokenize("?\nB. cup\nG. dog")
    for answer in ("B", "G", "yes", "no", "umbrella"):
        for text in (f"</think><answer>{answer}</answer>", f"<answer>{answer}</answer>"):
            tokens = tokenizer.tokenize(text)
            tag = next(i for i, token in enumerate(tokens) if token.endswith("answer"))
            assert tokens[tag + 1] == ">" and tokens[-3:] == ["</", "answer", ">"], (text, tokens)
            assert "".join(tokens[tag + 2 : -3]) == answer, (text, tokens)
            if len(answer) == 1:
                assert tokens[tag + 2] in option_letter, (text, tokens, option_letter)


@pytest.mark.parametrize("arch", QWEN_ARCHS)
def test_tiny_build_ties_config_to_tokenizer(tiny, arch):
    path = tiny[arch]
    config = json.loads((path / "config.json").read_text())
    tokenizer = load_processor(path).tokenizer
    assert config["model_type"] == arch
    assert config["text_config"]["vocab_size"] == len(tokenizer)
    for key, token in [
        ("image_token_id", "<|image_pad|>"),
        ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"),
        ("vision_end_token_id", "<|vision_end|>"),
    ]:
        assert config[key] == tokenizer.convert_tokens_to_ids(token)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert (
        json.loads((path / "generation_config.json").read_text())["eos_token_id"][0] == tokenizer.eos_token_id
    )
    # the reasoning tags are ordinary text, each special token a single id
    assert "<think>" not in tokenizer.get_vocab()
    assert tokenizer.decode(tokenizer("<think>a dog</think><answer>dog</answer>").input_ids) == (
        "<think>a dog</think><answer>dog</answer>"
    )
    assert len(tokenizer("<|im_start|><|image_pad|>").input_ids) == 2


@pytest.mark.parametrize("arch", QWEN_ARCHS)
def test_processor_has_an_image_processor_without_torchvision(tiny, arch, tmp_path):
    processor = load_processor(tiny[arch], min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    assert isinstance(processor, ProcessorMixin)
    assert processor.image_processor is not None and not hasattr(processor, "video_processor")
    assert processor.image_processor.size["shortest_edge"] == MIN_PIXELS
    assert processor.image_processor.size["longest_edge"] == MAX_PIXELS
    # saved on its own (as training outputs do), it comes back with its class and pixel bounds
    processor.save_pretrained(tmp_path)
    reloaded = load_processor(tmp_path)
    assert type(reloaded) is type(processor) and reloaded.image_processor.size["longest_edge"] == MAX_PIXELS


def test_saved_folders_name_only_stock_classes(tiny, tmp_path):
    """Tiny models and a processor saved alone name the stock classes, resolvable without mpcc."""
    processor = load_processor(tiny["qwen2_5_vl"], min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    processor.save_pretrained(tmp_path)
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"  # what transformers writes into the files
    assert json.loads((tmp_path / "processor_config.json").read_text())["processor_class"] == (
        "Qwen2_5_VLProcessor"
    )
    assert_stock_folders(*tiny.values(), tmp_path)


def test_processor_saved_without_its_model_loads_by_the_stock_name(tiny, tmp_path):
    load_processor(tiny["qwen3_vl"]).save_pretrained(tmp_path)  # no config.json beside it
    assert type(load_processor(tmp_path)) is models.Qwen3VLImageOnlyProcessor


@pytest.mark.parametrize("arch", QWEN_ARCHS)
def test_image_pad_count_matches_the_grid(tiny, image, arch):
    processor = load_processor(tiny[arch], min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    text = processor.apply_chat_template(_messages(image), add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n")
    assert "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Which object" in text
    inputs = processor.apply_chat_template(
        _messages(image), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    grid = inputs["image_grid_thw"]
    ip = processor.image_processor
    assert grid.shape == (1, 3)
    assert (
        int((inputs["input_ids"] == processor.image_token_id).sum()) == int(grid.prod()) // ip.merge_size**2
    )
    assert inputs["pixel_values"].shape[0] == int(grid.prod())
    area = int(grid[0, 1] * grid[0, 2]) * ip.patch_size**2
    assert MIN_PIXELS <= area <= MAX_PIXELS


@pytest.mark.parametrize("arch", QWEN_ARCHS)
def test_forward_and_generate_with_an_image(tiny, image, arch):
    processor = load_processor(tiny[arch], min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    model = load_model(tiny[arch], dtype="float32").eval()
    inputs = processor.apply_chat_template(
        _messages(image), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        logits = model(**inputs).logits
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert logits.shape == (1, inputs["input_ids"].shape[1], len(processor.tokenizer))
    assert torch.isfinite(logits).all()
    assert 1 <= out.shape[1] - inputs["input_ids"].shape[1] <= 5


@pytest.mark.parametrize("arch", QWEN_ARCHS)
def test_grpo_trains_one_step_as_a_vlm(tiny, arch, tmp_path):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    processor = load_processor(tiny[arch], min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    model = load_model(tiny[arch], dtype="float32")
    img = Image.new("RGB", (96, 64), (200, 30, 30))
    dataset = Dataset.from_dict({"image": [img, img], "prompt": [_messages(), _messages()]})

    def length_reward(completions, **kwargs):
        return [float(len(str(c))) for c in completions]

    args = GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=8,
        max_steps=1,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
    )
    trainer = GRPOTrainer(
        model=model, reward_funcs=length_reward, args=args, train_dataset=dataset, processing_class=processor
    )
    assert trainer._is_vlm
    assert trainer.train().global_step == 1


def _lora(model, freeze_tower: bool):
    """LoRA as `mpcc.train` applies it: TRL's ModelConfig -> peft config, vision tower excluded if asked."""
    from peft import get_peft_model
    from trl import ModelConfig, get_peft_config

    config = get_peft_config(
        ModelConfig(use_peft=True, lora_r=4, lora_alpha=8, lora_target_modules="all-linear")
    )
    if freeze_tower:
        keep_lora_off_vision_tower(config, model)
    return get_peft_model(model, config)


def test_lora_trains_only_adapters_outside_the_vision_tower(tiny):
    full = load_model(tiny["qwen2_5_vl"])
    total = sum(p.numel() for p in full.parameters())
    model = _lora(full, freeze_tower=True)
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert 0 < sum(trainable.values()) < total / 4
    assert all("lora_" in n for n in trainable)
    assert not any(".visual." in n for n in trainable)
    assert not any("lora_" in n for n, _ in vision_tower(model).named_parameters())


def test_lora_can_adapt_the_vision_tower(tiny):
    model = _lora(load_model(tiny["qwen3_vl"]), freeze_tower=False)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all("lora_" in n for n in trainable)
    assert any(".visual." in n for n in trainable)


@pytest.mark.parametrize("arch", QWEN_ARCHS)
def test_full_fine_tune_freezes_only_the_vision_tower(tiny, arch):
    model = load_model(tiny[arch])
    params = list(vision_tower(model).parameters())
    assert freeze_vision_tower(model) == sum(p.numel() for p in params) > 0  # the count it reports
    tower = {id(p) for p in params}
    for name, p in model.named_parameters():
        assert p.requires_grad == (id(p) not in tower), name


def test_tiny_prefix_resolves_to_a_cached_build(tmp_path, monkeypatch):
    monkeypatch.setenv("MPCC_CACHE", str(tmp_path))
    path = resolve_model_path("tiny:qwen2_vl")
    assert path.startswith(str(tmp_path)) and (Path(path) / "config.json").is_file()
    assert resolve_model_path("tiny:qwen2_vl") == path  # built once, then reused
    assert resolve_model_path("Qwen/Qwen2.5-VL-3B-Instruct") == "Qwen/Qwen2.5-VL-3B-Instruct"


def test_missing_path_is_a_clear_error(tmp_path):
    missing = tmp_path / "no-such-model"
    for load in (load_model, load_processor):
        with pytest.raises(FileNotFoundError, match="no-such-model"):
            load(missing)
    with pytest.raises(OSError, match=str(tmp_path.name)):  # a directory without a model config
        load_model(tmp_path)


def test_text_only_model_is_refused(tiny, tmp_path):
    tokenizer = load_processor(tiny["qwen2_5_vl"]).tokenizer
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1,
    )  # fmt: skip
    Qwen2ForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    tokenizer_config = tmp_path / "tokenizer_config.json"
    settings = json.loads(tokenizer_config.read_text())
    settings.pop("processor_class", None)  # a plain text checkpoint: AutoProcessor gives the tokenizer
    tokenizer_config.write_text(json.dumps(settings))
    with pytest.raises(ValueError, match="not an image-text-to-text"):
        load_model(tmp_path)
    with pytest.raises(ValueError, match="without an image processor"):
        load_processor(tmp_path)


def test_bad_arguments_are_refused(tiny):
    with pytest.raises(ValueError, match="arch"):
        build_tiny_model("llava", "/nonexistent")
    with pytest.raises(ValueError, match="dtype"):
        load_model(tiny["qwen2_vl"], dtype="half")
    with pytest.raises(ValueError, match="min_pixels <= max_pixels"):
        load_processor(tiny["qwen2_vl"], min_pixels=10_000, max_pixels=5_000)


def test_tiny_build_is_deterministic(tiny, tmp_path):
    again = build_tiny_model("qwen2_5_vl", tmp_path / "again", seed=0)
    other = build_tiny_model("qwen2_5_vl", tmp_path / "other", seed=1)
    first = load_file(tiny["qwen2_5_vl"] / "model.safetensors")
    second, third = load_file(again / "model.safetensors"), load_file(other / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], third[k]) for k in first)
    assert (again / "tokenizer.json").read_bytes() == (tiny["qwen2_5_vl"] / "tokenizer.json").read_bytes()


def test_ensure_tiny_model_builds_once(tmp_path, monkeypatch):
    path = ensure_tiny_model("qwen2_vl", tmp_path)
    assert (path / "config.json").is_file() and path.parent == tmp_path

    def fail(*args, **kwargs):
        raise AssertionError("rebuilt a cached model")

    monkeypatch.setattr(models, "build_tiny_model", fail)
    assert ensure_tiny_model("qwen2_vl", tmp_path) == path
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary directory left behind


def test_ensure_tiny_model_loses_a_race_cleanly(tmp_path, monkeypatch):
    real_run = models.subprocess.run
    winner = tmp_path / f"qwen3_vl-{models._tiny_fingerprint('qwen3_vl', 0)}"

    def racing_build(command, **kwargs):  # another process finishes while the child builds
        models.build_tiny_model("qwen3_vl", winner, 0)
        (winner / "winner").touch()
        return real_run(command, **kwargs)

    monkeypatch.setattr(models.subprocess, "run", racing_build)
    assert ensure_tiny_model("qwen3_vl", tmp_path) == winner
    assert (winner / "winner").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [winner.name]
