"""Step-level grounding: regions on the vision-token grid, the measuring pass, evidence records and
contrastive region masking, each against an independent reference."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from mpcc.errors import ConfigError, ValidationError
from mpcc.evaluation.config import EVAL_FORMATS, EvalConfig, parse_layers
from mpcc.evaluation.grounding import attention, runner
from mpcc.evaluation.grounding.attention import measure, resolve_layers
from mpcc.evaluation.grounding.conditions import Diagnostics
from mpcc.evaluation.grounding.crm import (
    gone_categories,
    hallucinated,
    region_sets,
    step_deltas,
    step_similarity,
)
from mpcc.evaluation.grounding.entropy import entropy_records
from mpcc.evaluation.grounding.evidence import (
    evidence_record,
    evidence_records,
    reasoning_measures,
    summarise_evidence,
    top_k_overlap,
)
from mpcc.evaluation.grounding.forcing import answer_tokens, teacher_forced, teacher_forced_pairs, token_steps
from mpcc.evaluation.grounding.regions import cell_coverage, region_tokens, token_grid
from mpcc.evaluation.grounding.runner import GROUNDING, run_step_diagnostics
from mpcc.evaluation.harness import eval_rows
from mpcc.generation.generators import conversation
from mpcc.models import random_vlm
from mpcc.text.answers import extract_answer
from mpcc.text.names import mentions
from mpcc.text.steps import split_steps

TRACE = "<think>The table holds a plate. A fork lies beside it.\nSo a knife is likely.</think> " + (
    "<answer>knife</answer>"
)


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def tiny(request):
    model, processor = random_vlm(request.param)
    return model.eval(), processor


def _prompt(image: Image.Image) -> list[dict]:
    return [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "what?"}]}
    ]


def _inputs(processor, image):
    return processor.apply_chat_template(
        [_prompt(image)], add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )


@pytest.mark.parametrize("size", [(300, 200), (640, 480), (123, 457), (1000, 90), (56, 56)])
def test_a_region_of_known_cells_gets_exactly_those_tokens(tiny, size):
    """Pixels whose centres fall in chosen cells of the processor's own grid -> exactly those tokens,
    on images the processor resizes up, down and to another aspect ratio."""
    model, processor = tiny
    width, height = size
    inputs = _inputs(processor, Image.new("RGB", size))
    rows, cols = token_grid(inputs["image_grid_thw"][0], processor.image_processor.merge_size)
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == rows * cols
    rng = np.random.default_rng(width)
    chosen = rng.random((rows, cols)) < 0.3
    cell_y = np.minimum((np.arange(height) + 0.5) * rows // height, rows - 1).astype(int)
    cell_x = np.minimum((np.arange(width) + 0.5) * cols // width, cols - 1).astype(int)
    mask = chosen[cell_y[:, None], cell_x[None, :]]
    assert (region_tokens(mask, (rows, cols)) == chosen.reshape(-1)).all()


def test_coverage_counts_fractional_pixels_by_area():
    mask = np.zeros((200, 300), bool)
    mask[:100, :150] = True  # 9 columns of 33.3 px: column 4 is cut in half
    coverage = cell_coverage(mask, (6, 9))
    assert coverage[:3, :4] == pytest.approx(1.0) and coverage[:3, 4] == pytest.approx(0.5, abs=1e-3)
    assert coverage[3:].max() == 0 and coverage[:, 5:].max() == 0
    assert region_tokens(mask, (6, 9)).sum() == 3 * 5  # half covered counts (threshold 1/2)
    with pytest.raises(ValidationError, match="still image"):
        token_grid((2, 4, 4), 2)


def test_measuring_pass_keeps_logits_and_restores_attention(tiny):
    model, processor = tiny
    inputs = _inputs(processor, Image.new("RGB", (300, 200), (90, 30, 200)))
    length = inputs["input_ids"].shape[1]
    with torch.no_grad():
        reference = model(**inputs).logits
    groups = torch.ones(1, 1, length)
    measured = measure(model, inputs, groups, slice(0, length), resolve_layers(model, None))
    assert (measured.logits - reference).abs().max() < 1e-4
    assert measured.mass[0, 0] == pytest.approx(torch.ones(length), abs=1e-5)  # softmax sums to one
    heads = model.config.get_text_config().num_attention_heads
    assert measured.profile.shape == (1, 2, heads, 1, 1) and measured.layers == (0, 1)
    assert measured.profile == pytest.approx(torch.full(measured.profile.shape, float(length)), rel=1e-5)
    assert float(measured.keys.sum()) == pytest.approx(length, rel=1e-5)  # every query gives out one
    assert model.config.get_text_config()._attn_implementation == "sdpa"
    with pytest.raises(ConfigError, match="out of range"):
        resolve_layers(model, (5,))
    assert resolve_layers(model, (-1,)) == frozenset({1})


@pytest.mark.parametrize("chunk", [1 << 24, 64])
def test_forced_uniform_attention_gives_the_expected_mass(chunk, monkeypatch):
    """Zero queries make every layer attend uniformly over the causal prefix, so the mass of the query
    at position p on a key set S is |S before p| / (p + 1) exactly, in every head (the per-head profile
    sums it per bucket) and key k receives 1 / (p + 1) from each bucketed query p >= k; also with tiny
    query chunks."""
    monkeypatch.setattr(attention, "CHUNK_ELEMENTS", chunk)
    model, processor = random_vlm("qwen2_5_vl")
    for layer in model.model.language_model.layers:
        layer.self_attn.q_proj.weight.data.zero_()
        layer.self_attn.q_proj.bias.data.zero_()
    inputs = _inputs(processor, Image.new("RGB", (300, 200)))
    ids = inputs["input_ids"][0]
    image = ids == model.config.image_token_id
    some = torch.zeros_like(image)
    some[image.nonzero().flatten()[::3]] = True
    groups = torch.stack([image, some]).float()[None]
    kept = torch.arange(10, len(ids))
    buckets = torch.where(kept % 5 == 0, -1, kept % 3)  # three buckets and some queries in none
    layers = resolve_layers(model, (0,))
    measured = measure(model.eval(), inputs, groups, slice(10, len(ids)), layers, buckets, 3)
    position = torch.arange(len(ids), dtype=torch.float32)
    heads = model.config.get_text_config().num_attention_heads
    assert measured.profile.shape == (1, 1, heads, 2, 3)
    for g, keys in enumerate((image, some)):
        expected = (torch.cumsum(keys.float(), 0) / (position + 1))[10:]
        assert measured.mass[0, g] == pytest.approx(expected, abs=1e-6)
        for b in range(3):
            summed = float(expected[buckets == b].sum())
            assert measured.profile[0, 0, :, g, b] == pytest.approx(torch.full((heads,), summed), rel=1e-5)
    from_bucketed = torch.zeros(len(ids))
    from_bucketed[kept[buckets >= 0]] = 1 / (position[kept[buckets >= 0]] + 1)
    received = torch.flip(torch.cumsum(torch.flip(from_bucketed, [0]), 0), [0])  # sum over p >= k
    assert measured.keys[0] == pytest.approx(received, abs=1e-6)


_MEMORY_PROBE = """
import sys, torch
from mpcc.evaluation.grounding.attention import measure, resolve_layers
from mpcc.models import random_vlm
model, _ = random_vlm("qwen2_5_vl")
model.eval()
ids = torch.randint(10, 900, (1, 3000))
inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
groups = (torch.rand(1, 3, 3000) < 0.5).float()
thirds = torch.arange(3000) * 3 // 3000  # per-head profiles over every query
def peak_mb():  # VmHWM: this process's peak resident memory since the last reset
    status = open("/proc/self/status").read()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak to what is resident now
before = peak_mb()
with torch.no_grad():
    if sys.argv[1] == "plain":
        model(**inputs)
    elif sys.argv[1] == "measure":
        measure(model, inputs, groups, slice(0, 3000), resolve_layers(model, None), thirds, 3)
    else:  # every layer's full attention map, as output_attentions gives
        model.set_attn_implementation("eager")
        model(**inputs, output_attentions=True)
print(peak_mb() - before)
"""


def test_measuring_memory_stays_bounded_on_a_long_sequence():
    """3,000 tokens, each pass in a fresh process: the measuring pass with per-head profiles of every
    query and the default chunk peaks at most 64 MB above a plain forward (one chunk of weights and its
    temporaries; the profiles are heads x groups x queries floats), while returning every layer's full
    attention map (2 layers x 4 heads x 3,000^2 floats = 275 MB) visibly does not. glibc's dynamic mmap
    threshold makes a peak depend on the allocation history (+-30 MB between identical runs): a fixed
    threshold gives every large buffer back when freed, so the peaks are reproducible."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    runs = {
        mode: subprocess.Popen(
            [sys.executable, "-c", _MEMORY_PROBE, mode], stdout=subprocess.PIPE, text=True, env=env
        )
        for mode in ("plain", "measure", "full_maps")
    }
    extra_mb = {}
    for mode, run in runs.items():
        out, _ = run.communicate(timeout=300)
        assert run.returncode == 0, mode
        extra_mb[mode] = float(out.strip().splitlines()[-1])
    assert extra_mb["measure"] < extra_mb["plain"] + 64, extra_mb
    assert extra_mb["full_maps"] > extra_mb["plain"] + 150, extra_mb  # the check can see full maps


def test_answer_tokens_are_the_answer_span(tiny):
    _, processor = tiny
    encoded = processor.tokenizer(TRACE, add_special_tokens=False, return_offsets_mapping=True)
    offsets = [tuple(o) for o in encoded["offset_mapping"]]
    picked = "".join(TRACE[a:b] for (a, b), keep in zip(offsets, answer_tokens(TRACE, offsets)) if keep)
    assert "knife" in picked and "table" not in picked and len(picked) <= len(">knife")
    assert not answer_tokens("<think>no answer</think>", offsets[:3]).any()


def test_answer_tokens_are_the_block_the_reward_grades():
    """Two answer blocks: the measured span is the last one, the answer `extract_answer` (and so every
    reward) reads, not the first after the reasoning."""
    completion = "<think>A plate. So a cup.</think><answer>cup</answer> <answer>knife</answer>"
    offsets = [(i, i + 1) for i in range(len(completion))]
    kept = answer_tokens(completion, offsets)
    picked = "".join(completion[a:b] for (a, b), keep in zip(offsets, kept) if keep)
    assert picked == extract_answer(completion) == "knife"


@pytest.fixture(scope="module")
def eval_row(tiny_builds):
    diagnostics = Diagnostics(tiny_builds["eval"], k=2)
    rows = [row for _, row in eval_rows(tiny_builds["eval"], EvalConfig(formats=("open",)))]
    row = max(rows, key=lambda r: len(diagnostics.context_by_prediction(r)))  # the most context objects
    return diagnostics, row


def test_evidence_record_under_uniform_attention(eval_row):
    """With uniform attention, a reasoning token produced at query position q puts |E| / (q + 1) on the
    evidence tokens E: the raw masses, steps and positions follow from that exactly, and every
    length-free measure says "no preference, no collapse": share |E| / |I| early and late, in every
    layer, head and third, lift 1, top-k overlap at chance."""
    diagnostics, row = eval_row
    model, processor = random_vlm("qwen2_5_vl")
    for layer in model.model.language_model.layers:
        layer.self_attn.q_proj.weight.data.zero_()
        layer.self_attn.q_proj.bias.data.zero_()
    evidence, target = diagnostics.regions(row)
    assert evidence.any() and target.any() and not (evidence & target).any()
    record = evidence_record(model.eval(), processor, row, TRACE, (evidence, target), frozenset({0, 1}))
    inputs, prompt_len, offsets = teacher_forced(processor, [row], TRACE, "cpu")
    grid = token_grid(inputs["image_grid_thw"][0], processor.image_processor.merge_size)
    n_evidence = int(region_tokens(evidence, grid).sum())
    assert n_evidence > 0
    n_image = int((inputs["input_ids"][0] == model.config.image_token_id).sum())
    step_of = np.array(token_steps(offsets, split_steps(TRACE)))
    query = prompt_len - 1 + np.flatnonzero(step_of >= 0)
    assert record["evidence_mass_raw"] == pytest.approx(np.mean(n_evidence / (query + 1)), rel=1e-5)
    assert record["image_mass_raw"] == pytest.approx(np.mean(n_image / (query + 1)), rel=1e-5)
    assert [s["tokens"] for s in record["steps"]] == [int((step_of == s).sum()) for s in range(3)]
    assert record["late_raw"] < record["early_raw"]  # the prefix grows, so uniform mass per key shrinks
    share = n_evidence / n_image
    for measure_ in (record["evidence_share"], record["early"], record["late"], *record["curve"]):
        assert measure_ == pytest.approx(share, rel=1e-5)
    assert [s["evidence_share"] for s in record["steps"]] == pytest.approx([share] * 3, rel=1e-5)
    assert record["evidence_lift"] == pytest.approx(1, rel=1e-5)
    assert record["evidence_overlap"] == pytest.approx(share)  # all image tokens tie: chance
    assert record["profile"]["layers"] == [0, 1]
    heads = model.config.get_text_config().num_attention_heads
    assert np.array(record["profile"]["share"]) == pytest.approx(np.full((3, 2, heads), share), abs=1e-4)
    assert record["entropy_answer"] is not None and record["entropy_full"] > 0
    assert record["tokens"] == {
        "image": n_image,
        "evidence": n_evidence,
        "target": record["tokens"]["target"],
    }
    blank = evidence_record(model, processor, row, TRACE, (np.zeros_like(evidence), target), frozenset({0}))
    assert blank["tokens"]["evidence"] == 0 and blank["evidence_mass_raw"] is None and blank["early"] is None
    assert blank["evidence_share"] is None and blank["evidence_overlap"] is None
    assert blank["image_mass_raw"] == pytest.approx(record["image_mass_raw"])
    bare = evidence_record(model, processor, row, "<answer>knife</answer>", (evidence, target), {0})
    assert bare["evidence_share"] is None and bare["early"] is None and bare["evidence_overlap"] is None
    assert bare["profile"]["share"] == [[[None] * heads]] * 3  # no reasoning: three empty thirds
    measured = [{**record, "difficulty": row["difficulty"], "item_id": "one"}, {**blank, "item_id": "other"}]
    measured.append({**bare, "item_id": "bare"})
    summary = summarise_evidence(measured)
    cell = summary["all"]
    assert cell["collapse_ratio"]["value"] == pytest.approx(1, rel=1e-5)
    assert cell["collapse_ratio"]["n"] == 1 and cell["collapse_ratio"]["low"] is None  # too few to claim
    assert cell["collapse_ratio_raw"]["value"] == pytest.approx(record["late_raw"] / record["early_raw"])
    assert set(summary["per_level"]) == {row["difficulty"]}
    assert summary["profile"]["n"] == 1 and summary["profile"]["thirds"] == ["early", "middle", "late"]
    assert np.array(summary["profile"]["lift"]) == pytest.approx(np.ones((3, 2, heads)), abs=1e-3)


def _uniform_answer(prompt: int, reasoning: int, image: int, evidence: int) -> dict:
    """The measures of one answer whose every reasoning token attends uniformly to its causal prefix:
    the token at query position q puts |S| / (q + 1) on a key set S of the prompt."""
    query = prompt + np.arange(reasoning)
    mass = np.stack([image / (query + 1), evidence / (query + 1), np.full(reasoning, np.nan)])
    return reasoning_measures(mass, (image, evidence, 0))


def test_uniform_attention_gives_a_length_free_collapse_of_one_while_raw_mass_falls():
    """The issue's hand-worked cases: uniform attention, no change of focus, yet the raw late / early
    mass is 0.84 / 0.45 / 0.29 for (prompt, reasoning) = (1000, 300) / (400, 1000) / (300, 2000). Over
    answers of all those lengths and region sizes the length-free collapse ratio is 1 within its interval
    (exactly 1 here), while the raw one falls with an interval far below 1."""
    for (prompt, reasoning), raw in {(1000, 300): 0.84, (400, 1000): 0.45, (300, 2000): 0.29}.items():
        answer = _uniform_answer(prompt, reasoning, image=256, evidence=40)
        assert answer["late_raw"] / answer["early_raw"] == pytest.approx(raw, abs=0.01)
        assert answer["late"] == pytest.approx(answer["early"]) == pytest.approx(40 / 256)
        assert answer["evidence_lift"] == pytest.approx(1)
    rng = np.random.default_rng(0)
    records = []
    for item in range(40):
        prompt, reasoning = int(rng.integers(300, 1200)), int(rng.integers(30, 2000))
        image = int(rng.integers(64, 1024))
        answer = _uniform_answer(prompt, reasoning, image, evidence=int(rng.integers(1, image // 2)))
        records.append({**answer, "item_id": item, "difficulty": "easy", "tokens": {}})
    cell = summarise_evidence(records)["all"]
    assert cell["collapse_ratio"]["value"] == pytest.approx(1)
    assert cell["collapse_ratio"]["low"] <= 1 <= cell["collapse_ratio"]["high"]
    assert cell["evidence_lift"]["value"] == pytest.approx(1)
    assert cell["collapse_ratio_raw"]["high"] < 0.9  # the length artifact the raw mass shows


def _decaying_answers(decay: float, seed: int) -> list[dict]:
    """Answers whose share of image attention on the evidence falls by `decay` from the first reasoning
    token to the last (none at 0), with noisy image attention and reasonings of different lengths."""
    rng = np.random.default_rng(seed)
    records = []
    for item in range(30):
        reasoning = int(rng.integers(20, 400))
        position = (np.arange(reasoning) + 0.5) / reasoning
        image = rng.uniform(0.05, 0.4, reasoning)
        share = rng.uniform(0.1, 0.3) * (1 - decay * position) * rng.uniform(0.7, 1.3, reasoning)
        mass = np.stack([image, image * share, np.full(reasoning, np.nan)])
        records.append({**reasoning_measures(mass, (200, 40, 0)), "item_id": item, "tokens": {}})
    return records


def test_decaying_evidence_attention_is_detected():
    """A constructed model whose evidence share really falls (by half along the reasoning: late / early
    about 0.6) is detected, interval below 1; the same noise without the decay is not."""
    decaying = summarise_evidence(_decaying_answers(0.5, seed=1))["all"]["collapse_ratio"]
    assert 0.5 < decaying["value"] < 0.7 and decaying["high"] < 0.9
    steady = summarise_evidence(_decaying_answers(0.0, seed=1))["all"]["collapse_ratio"]
    assert steady["low"] <= 1 <= steady["high"] and 0.9 < steady["value"] < 1.1


def test_top_k_overlap_counts_the_most_attended_image_tokens():
    evidence = np.array([True, True, False, False, False])
    assert top_k_overlap(np.array([5.0, 4.0, 1.0, 1.0, 1.0]), evidence) == 1.0
    assert top_k_overlap(np.array([5.0, 1.0, 4.0, 1.0, 1.0]), evidence) == 0.5
    assert top_k_overlap(np.array([0.0, 0.0, 3.0, 2.0, 1.0]), evidence) == 0.0
    assert top_k_overlap(np.ones(5), evidence) == pytest.approx(2 / 5)  # ties: chance, not index order
    assert top_k_overlap(np.array([5.0, 1.0, 1.0, 1.0, 1.0]), evidence) == pytest.approx((1 + 1 / 4) / 2)
    assert top_k_overlap(None, evidence) is None and top_k_overlap(np.ones(5), ~np.ones(5, bool)) is None


def test_a_random_weight_model_shows_no_length_free_collapse(tiny_builds):
    """The model that should show nothing: the random-weight tiny model's own greedy answers on the
    first items of the tiny eval build. Its length-free collapse ratio is within [0.9, 1.1] with an
    interval covering 1, while on the same answers the raw mass "collapses" (the demo's 0.76)."""
    from mpcc.generation.decoding import Decoding
    from mpcc.generation.generators import generate

    model, processor = random_vlm("qwen2_5_vl")  # what `tiny:qwen2_5_vl` builds
    model.eval()
    diagnostics = Diagnostics(tiny_builds["eval"])
    rows = [row for _, row in eval_rows(tiny_builds["eval"], EvalConfig(formats=EVAL_FORMATS, limit=6))]
    completions = generate(model, processor, rows, Decoding(max_new_tokens=48))
    layers = resolve_layers(model, None)
    records = []
    for row, text in zip(rows, completions):
        record = evidence_record(model, processor, row, text, diagnostics.regions(row), layers)
        records.append({**record, "item_id": row["item_id"], "difficulty": row["difficulty"]})
    cell = summarise_evidence(records)["all"]
    collapse, raw = cell["collapse_ratio"], cell["collapse_ratio_raw"]
    assert collapse["n"] >= 16 and collapse["low"] is not None, collapse
    assert 0.9 <= collapse["value"] <= 1.1 and collapse["low"] <= 1 <= collapse["high"], collapse
    assert raw["high"] < 0.95, raw


def _same(batched, alone, path="record"):
    """Equal records: numbers to 1e-5 relative (plus 1e-7 absolute), everything else exactly."""
    if isinstance(alone, dict):
        assert batched.keys() == alone.keys(), path
        for key in alone:
            _same(batched[key], alone[key], f"{path}.{key}")
    elif isinstance(alone, list):
        assert len(batched) == len(alone), path
        for i, (b, a) in enumerate(zip(batched, alone)):
            _same(b, a, f"{path}[{i}]")
    elif isinstance(alone, float):
        assert batched == pytest.approx(alone, rel=1e-5, abs=1e-7), path
    else:
        assert batched == alone, path


@pytest.mark.parametrize(
    "arch", ["qwen2_5_vl", "qwen3_vl", "idefics3", "gemma3", "glm4v", "llava_onevision", "internvl"]
)
def test_evidence_records_in_one_batch_equal_one_at_a_time(tiny_builds, arch):
    """Answers of different prompt lengths (rows of every format, images of several sizes) and completion
    lengths, measured in one right-padded forward, give exactly the records each gives alone: padding
    takes no attention and no row's queries count in another's profile or received keys. In each model
    family's positions and masks (Gemma 3: a sliding window shorter than the prompt)."""
    model, processor = random_vlm(arch, text={"sliding_window": 16} if arch == "gemma3" else None)
    model.eval()
    diagnostics = Diagnostics(tiny_builds["eval"])
    rows = [row for _, row in eval_rows(tiny_builds["eval"], EvalConfig(formats=EVAL_FORMATS, limit=3))]
    texts = [TRACE, "<answer>knife</answer>", TRACE.replace("A fork", "A fork and a cup and a spoon")]
    answers = [(row, texts[i % 3], diagnostics.regions(row)) for i, row in enumerate(rows[:7])]
    assert len({row["format"] for row, _, _ in answers}) > 1 and len({t for _, t, _ in answers}) == 3
    layers = resolve_layers(model, None)
    _, forced = teacher_forced_pairs(
        processor, [row for row, _, _ in answers], [t for _, t, _ in answers], "cpu"
    )
    assert len({f.prompt_len for f in forced}) > 1 and len({f.length for f in forced}) > 2  # real padding
    alone = [evidence_record(model, processor, row, text, regions, layers) for row, text, regions in answers]
    _same(evidence_records(model, processor, answers, layers), alone)


def _completion_scores(model, processor, row: dict, completion_ids: list[int]) -> torch.Tensor:
    """(completion tokens, vocab) log-softmax of one plain forward of the row's prompt + the completion:
    the reference the batched passes are checked against."""
    prompt = processor.apply_chat_template(
        conversation(row), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    ids = torch.cat([prompt["input_ids"][0], torch.tensor(completion_ids)])
    inputs = {"pixel_values": prompt["pixel_values"], "image_grid_thw": prompt["image_grid_thw"]}
    with torch.no_grad():
        logits = model(input_ids=ids[None], **inputs).logits[0, len(prompt["input_ids"][0]) - 1 : -1]
    return logits.log_softmax(-1)


def test_teacher_forced_crm_equals_one_at_a_time(eval_row):
    """The batched contrast equals a plain forward per image, step means taken by hand."""
    diagnostics, row = eval_row
    model, processor = random_vlm("qwen2_5_vl")
    model.eval()
    sets = region_sets(diagnostics, row, singles=2)
    assert [kind for kind, _ in sets] == ["single", "single", "top_k"]
    assert sets[2][1] == diagnostics.context_by_prediction(row)[:2] == [ids[0] for _, ids in sets[:2]]
    images = [row["image"], *(diagnostics.hide(row, ids) for _, ids in sets)]
    deltas = step_deltas(model, processor, [{**row, "image": im} for im in images], TRACE)
    completion = processor.tokenizer(TRACE, add_special_tokens=False, return_offsets_mapping=True)
    step_of = np.array(token_steps([tuple(o) for o in completion["offset_mapping"]], split_steps(TRACE)))
    means = []
    for image in images:
        scores = _completion_scores(model, processor, {**row, "image": image}, completion["input_ids"])
        token_lp = scores.gather(-1, torch.tensor(completion["input_ids"])[:, None])[:, 0].numpy()
        means.append([np.mean(token_lp[step_of == s]) for s in range(3)])
    expected = [[a - b for a, b in zip(m, means[0])] for m in means[1:]]
    assert np.allclose(deltas, expected, atol=1e-4)
    assert not np.allclose(deltas, 0, atol=1e-7)  # hiding objects does change the model's view


def test_crm_text_measures():
    assert mentions("I see two Forks and a knife.", "fork") and mentions("a dining table", "dining table")
    assert not mentions("a forklift", "fork") and not mentions("dining chairs", "dining table")
    assert hallucinated("The cup sits by the pizza.", {"cup", "bowl"}, solution="pizza") == ["cup"]
    assert hallucinated("The pizza is there.", {"pizza"}, solution="pizza") == []
    same = "<think>A plate. A fork.</think>"
    assert step_similarity(same, same) == 1.0
    # forward: (1 + 0.5) / 2 (A fork ~ A plate: 0.5); backward: (1 + 0) / 2 (Then nothing matches nothing)
    assert step_similarity(same, "<think>A plate. Then nothing.</think>") == pytest.approx((0.75 + 0.5) / 2)
    assert step_similarity(same, "<answer>x</answer>") == 0.0 and step_similarity("", same) is None


def test_crm_names_categories_as_exact_match_does():
    """Irregular plurals and synonyms count as naming a category, as they do for the reward."""
    reasoning = "Two knives lie by the television."
    assert hallucinated(reasoning, {"knife", "tv", "cup"}, solution="pizza") == ["knife", "tv"]


def test_gone_categories_keep_visible_instances(eval_row):
    diagnostics, row = eval_row
    coco = diagnostics.coco
    by_name: dict[str, list[int]] = {}
    for ann_id in diagnostics.context_by_prediction(row):
        by_name.setdefault(coco.cats[coco.anns[ann_id]["category_id"]]["name"], []).append(ann_id)
    for name, ids in by_name.items():
        assert name in gone_categories(diagnostics, row, ids)
        if len(ids) > 1:  # another instance of the category is still visible
            assert name not in gone_categories(diagnostics, row, ids[:1])


def test_step_diagnostics_options_are_checked():
    with pytest.raises(ConfigError, match="greedy"):
        EvalConfig(diagnostics=("crm",), samples=2)
    with pytest.raises(ConfigError, match="comma-separated integers"):
        parse_layers("0,last")
    assert parse_layers("0, -1") == (0, -1)
    assert EvalConfig(diagnostics=("evidence", "blind")).diagnostics == ("evidence", "blind")


def test_entropy_with_evidence_comes_from_the_evidence_pass(tiny_builds, tmp_path, monkeypatch):
    """With `evidence,entropy` the entropy records are the evidence pass's (no second forward) and equal
    the records the entropy pass alone writes, answers of every format and of several lengths."""
    model = random_vlm("qwen2_5_vl")
    model[0].eval()
    diagnostics = Diagnostics(tiny_builds["eval"])
    config = EvalConfig(formats=EVAL_FORMATS, limit=2, batch_size=4)
    rows = {f"{pid}:normal": row for pid, row in eval_rows(tiny_builds["eval"], config)}
    texts = [TRACE, "<answer>knife</answer>", "<think>A fork.</think> no answer block"]
    answers = [
        {"prompt_id": pid, "completion": texts[i % 3], "correct": i % 2 == 0}
        | {k: row[k] for k in ("item_id", "format", "difficulty")}
        for i, (pid, row) in enumerate(rows.items())
    ]

    def entropy(kinds: tuple[str, ...], out) -> dict:
        out.mkdir()
        run_step_diagnostics(
            lambda: model, lambda: None, diagnostics, rows, answers, replace(config, diagnostics=kinds), out
        )
        records = [json.loads(line) for line in (out / GROUNDING).read_text().splitlines()]
        return {r["prompt_id"]: r for r in records if r["kind"] == "entropy"}

    alone = entropy(("entropy",), tmp_path / "alone")
    monkeypatch.setattr(runner, "entropy_records", None)  # a second forward would now fail
    both = entropy(("evidence", "entropy"), tmp_path / "both")
    assert set(both) == set(alone) == set(rows)
    assert any(r["entropy_answer"] is None for r in alone.values())  # the no-answer-block case is there
    _same(both, alone)


def test_measured_entropies_and_logprobs_equal_a_plain_forward(tiny_builds):
    """The passes read logits at the completion positions only (`forcing.window_logits`): the evidence
    and entropy records' entropies and step log-probabilities equal those of one plain full forward per
    answer, taken by hand (to the precision of the measuring pass's own attention)."""
    model, processor = random_vlm("qwen2_5_vl")
    model.eval()
    diagnostics = Diagnostics(tiny_builds["eval"])
    rows = [row for _, row in eval_rows(tiny_builds["eval"], EvalConfig(formats=EVAL_FORMATS, limit=1))][:3]
    texts = [TRACE, "<answer>knife</answer>", TRACE.replace("A fork", "A fork and a cup")]
    layers = resolve_layers(model, None)
    evidence = evidence_records(
        model, processor, [(r, t, diagnostics.regions(r)) for r, t in zip(rows, texts)], layers
    )
    entropy = entropy_records(model, processor, list(zip(rows, texts)))
    for row, text, measured, alone in zip(rows, texts, evidence, entropy):
        completion = processor.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        scores = _completion_scores(model, processor, row, completion["input_ids"])
        entropies = -(scores.exp() * scores).sum(-1).numpy()
        logprobs = scores.gather(-1, torch.tensor(completion["input_ids"])[:, None])[:, 0].numpy()
        offsets = [tuple(o) for o in completion["offset_mapping"]]
        in_answer = answer_tokens(text, offsets)
        step_of = np.array(token_steps(offsets, split_steps(text)))
        for record in (measured, alone):
            assert record["entropy_full"] == pytest.approx(entropies.mean(), rel=1e-5)
            assert record["entropy_answer"] == pytest.approx(entropies[in_answer].mean(), rel=1e-5)
        assert [s["logprob"] for s in measured["steps"]] == pytest.approx(
            [logprobs[step_of == s].mean() for s in range(len(measured["steps"]))], rel=1e-4
        )  # the measuring pass's attention is eager in float32 chunks, the plain forward's sdpa
