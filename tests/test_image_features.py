"""Encode each image once (mpcc.generation.image_features): the same outputs as without the memo, fewer
encodes, never one image's features for another, and GRPO steps equal to vanilla TRL's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trl
from PIL import Image
from test_bench import _one_step
from transformers import AutoModelForImageTextToText

from mpcc.bench import BenchConfig, bench_dataset
from mpcc.families import FAMILIES
from mpcc.generation import image_features
from mpcc.generation.decoding import Decoding
from mpcc.generation.generators import generate
from mpcc.generation.image_features import ImageFeatureMemo
from mpcc.models import freeze_vision_tower, random_vlm
from mpcc.training.config import MpccGRPOConfig
from mpcc.training.grpo import MpccGRPOTrainer


def _rows(sizes=((300, 200), (300, 200), (160, 120)), order=(0, 0, 1, 0, 2, 2, 1, 0)):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is hidden?"}]}]
    return [{"prompt": prompt, "image": images[i]} for i in order]


def _inputs(processor, rows):
    chats = [
        [{"role": "user", "content": [{"type": "image", "image": r["image"]}, {"type": "text", "text": "?"}]}]
        for r in rows
    ]
    return processor.apply_chat_template(
        chats, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
        processor_kwargs={"padding": True},
    )  # fmt: skip


@pytest.mark.parametrize("arch", [f.name for f in FAMILIES.values() if f.image_feature_memo])
def test_memo_gives_the_same_completions_and_logits(arch):
    model, processor = random_vlm(arch)
    model.eval()
    rows = _rows()
    decoding = Decoding(max_new_tokens=12)
    inputs = _inputs(processor, rows)
    with torch.no_grad():
        plain_logits = model(**inputs).logits
    plain = generate(model, processor, rows, decoding)
    memo = ImageFeatureMemo()
    memo.attach(model)
    assert generate(model, processor, rows, decoding) == plain
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, plain_logits)
    # 8 rows, 3 distinct images: generation encodes 3; the forward after it finds all 8 in the memo
    # (counted in the layout's entries: images, or InternVL's tiles)
    rows_units, distinct_units = _units(arch, processor, rows), _units(arch, processor, rows[:5:2])
    assert (memo.counts["images"], memo.counts["encoded"]) == (2 * rows_units, distinct_units)
    memo.clear()
    with torch.no_grad():
        model(**inputs)
    assert memo.counts["encoded"] == 2 * distinct_units  # cleared: encoded again, each once


def _units(arch, processor, rows) -> int:
    """The memo's entries for `rows`: one per image, or per tile where the layout is tiles."""
    layout, inputs = FAMILIES[arch].image_layout, _inputs(processor, rows)
    return len(layout.split({k: inputs[k] for k in layout.keys}))


def test_different_images_never_share_features(monkeypatch):
    """Even when the cheap checksum collides, features follow the pixels; a memo that ignored the
    pixels would change the logits, which this comparison sees."""
    model, processor = random_vlm("qwen2_5_vl")
    model.eval()
    rows = _rows(sizes=((300, 200), (300, 200)), order=(0, 1, 0, 1))
    inputs = _inputs(processor, rows)
    with torch.no_grad():
        plain = model(**inputs).logits
    monkeypatch.setattr(image_features, "_checksum", lambda pixels: (0.0, 0.0))  # every image collides
    memo = ImageFeatureMemo()
    memo.attach(model)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, plain)
    assert memo.counts["encoded"] == 2
    memo.clear()
    monkeypatch.setattr(image_features, "_find", lambda pairs, pixels: next((v for _, v in pairs), None))
    with torch.no_grad():
        wrong = model(**inputs).logits
    assert not torch.allclose(wrong, plain)  # the test would catch features given to the wrong image


def test_a_trainable_tower_gets_its_gradient():
    """Grad enabled and a trainable tower: the memo steps aside, the tower's weights get gradients."""
    model, processor = random_vlm("qwen2_5_vl")
    memo = ImageFeatureMemo()
    memo.attach(model)
    inputs = _inputs(processor, _rows())
    model(**inputs).logits.sum().backward()
    assert memo.counts["bypassed_calls"] == 1 and memo.counts["encoded"] == 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.model.visual.parameters())
    freeze_vision_tower(model)
    model.zero_grad()
    model(**inputs).logits.sum().backward()  # frozen: memoised even with grad enabled
    assert memo.counts["encoded"] == 3


def test_a_trainable_projector_gets_its_gradient():
    """Gemma 3's projector lies outside its tower: frozen tower, trainable projector, grad enabled, and
    the memo steps aside so the projector gets its gradient."""
    model, processor = random_vlm("gemma3")
    freeze_vision_tower(model)
    memo = ImageFeatureMemo()
    memo.attach(model)
    model(**_inputs(processor, _rows())).logits.sum().backward()
    assert memo.counts["bypassed_calls"] == 1 and memo.counts["encoded"] == 0
    assert all(p.grad is not None for p in model.model.multi_modal_projector.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("frozen", [True, False])
def test_grpo_steps_with_reuse_equal_vanilla_trl(frozen, tmp_path, monkeypatch):
    """Two steps with a reference model (beta > 0) and old log-probs (num_iterations 2): completions,
    losses and every gradient equal vanilla TRL's; generation encodes one image per group."""
    saved = tmp_path / "model"  # TRL loads the reference model from the policy's path
    model, processor = random_vlm("qwen2_5_vl", seed=0)
    model.save_pretrained(saved)

    def from_saved(*args, **kwargs):
        loaded = AutoModelForImageTextToText.from_pretrained(saved)
        if frozen:
            freeze_vision_tower(loaded)
        return loaded, processor

    monkeypatch.setattr("test_bench.random_vlm", from_saved)
    dataset = bench_dataset(BenchConfig(prompts=2, steps=1, warmup=0, image_size=(320, 240)), tmp_path / "d")
    common = {
        "per_device_train_batch_size": 4,
        "num_generations": 4,
        "max_completion_length": 8,
        "max_steps": 2,
        "num_iterations": 2,
        "beta": 0.04,
        "generation_kwargs": {"do_sample": False},
        "loss_type": "grpo",
        "use_cpu": True,
        "bf16": False,  # float32: TRL's default bf16 autocast rounds a P-token prefill and P-1 + 1 apart
        "save_strategy": "no",
        "report_to": "none",
        "logging_steps": 1,
    }
    vanilla = _one_step(trl.GRPOTrainer, trl.GRPOConfig(str(tmp_path / "v"), **common), dataset, False)
    reuse = _one_step(MpccGRPOTrainer, MpccGRPOConfig(str(tmp_path / "r"), **common), dataset, False)
    assert reuse[0] == vanilla[0]
    assert reuse[1] == pytest.approx(vanilla[1], rel=1e-5, abs=1e-7)
    assert reuse[2].keys() == vanilla[2].keys() and vanilla[2]
    for name, grad in vanilla[2].items():
        torch.testing.assert_close(reuse[2][name], grad, rtol=1e-4, atol=1e-6)  # as the compiled path


def test_eval_predictions_equal_with_and_without_reuse(tiny_builds, tmp_path, monkeypatch):
    from mpcc.evaluation.config import EvalConfig
    from mpcc.evaluation.harness import run_eval
    from mpcc.generation.generators import HFGenerator

    encoded = []
    attach = ImageFeatureMemo.attach

    def counting_attach(memo, model):
        encoded.append(memo.counts)
        attach(memo, model)

    monkeypatch.setattr(ImageFeatureMemo, "attach", counting_attach)
    predictions = {}
    for reuse in (True, False):
        config = EvalConfig(limit=3, decoding=Decoding(max_new_tokens=6), reuse_images=reuse)
        run_eval("tiny:qwen2_5_vl", tiny_builds["eval"], tmp_path / str(reuse), config)
        lines = (tmp_path / str(reuse) / "predictions.jsonl").read_text().splitlines()
        predictions[reuse] = sorted(lines)
    assert predictions[True] == predictions[False]
    rows = len(predictions[True])
    assert len(encoded) == 1 and encoded[0]["images"] == rows and encoded[0]["encoded"] == 3  # one per item
    assert HFGenerator.MEMO_IMAGES >= 3


def test_detach_restores_the_models_own_encoding():
    model, _ = random_vlm("qwen2_5_vl")
    own = model.model.get_image_features
    memo = ImageFeatureMemo()
    memo.attach(model)
    assert model.model.get_image_features != own
    with pytest.raises(ValueError, match="already"):
        ImageFeatureMemo().attach(model)
    memo.detach(model)
    assert model.model.get_image_features == own
    with pytest.raises(ValueError, match="not attached"):
        memo.detach(model)
