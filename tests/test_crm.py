"""Contrastive region masking with controls: the neutral fill, the control ablation, the classes of a
regenerated reasoning, the symmetric step similarity, and the evidence-minus-control contrasts on a model
that ignores the image (they must cover 0) and on one built to look at the hidden objects (they must not)."""

from __future__ import annotations

import types
from dataclasses import replace

import numpy as np
import pytest
import torch

from mpcc.errors import ConfigError
from mpcc.evaluation.config import CRM_FILLS, EvalConfig
from mpcc.evaluation.grounding.conditions import Diagnostics, avoid_spectrum, matched_colour, place_like
from mpcc.evaluation.grounding.crm import (
    CLASSES,
    ablate,
    classify,
    crm_record,
    gone_categories,
    step_similarity,
    summarise_crm,
)
from mpcc.evaluation.grounding.runner import GROUNDING, run_step_diagnostics
from mpcc.evaluation.harness import eval_rows
from mpcc.models import random_vlm
from mpcc.reports.grounding import compare_grounding, grounding_markdown

ITEMS = 20  # answers in the contrast tests: above the 16 an interval needs


@pytest.fixture(scope="module")
def crm_rows(tiny_builds):
    """The build's diagnostics and its open rows that have two context objects or more."""
    diagnostics = Diagnostics(tiny_builds["eval"], k=2)
    rows = [row for _, row in eval_rows(tiny_builds["eval"], EvalConfig(formats=("open",)))]
    return diagnostics, [row for row in rows if len(diagnostics.context_by_prediction(row)) >= 2]


class TextOnly(torch.nn.Module):
    """A model that ignores the image: its logits depend on the token ids alone."""

    def __init__(self, vocabulary: int):
        super().__init__()
        self.embed = torch.nn.Embedding(vocabulary, vocabulary)

    @property
    def device(self):
        return torch.device("cpu")

    def forward(self, input_ids, **_):
        return types.SimpleNamespace(logits=self.embed(input_ids))


@pytest.fixture(scope="module")
def text_only():
    _, processor = random_vlm("qwen2_5_vl")
    return TextOnly(len(processor.tokenizer)).eval(), processor


def _names(diagnostics, ann_ids) -> list[str]:
    coco = diagnostics.coco
    return [coco.cats[coco.anns[a]["category_id"]]["name"] for a in ann_ids]


def _trace(row, names: list[str], answer: str | None = None) -> str:
    """A well-formed reasoning that names `names` and answers `answer` (the solution by default)."""
    answer = answer or row["solution"]
    return (
        f"<think>The scene shows a {' and a '.join(names)}. Such scenes often hold one more object.\n"
        f"So the hidden object is a {answer}.</think> <answer>{answer}</answer>"
    )


def test_surround_fill_is_not_the_targets_fill(crm_rows):
    """`surround` paints a hidden object the mean colour of a band of visible pixels around it, never
    the target's fill; `target` (still a choice) paints the build's fill, as before."""
    diagnostics, rows = crm_rows
    row = rows[0]
    ann_id = diagnostics.context_by_prediction(row)[0]
    target = diagnostics.target_region(row)
    region = diagnostics.object_region(ann_id) & ~target
    before = np.array(diagnostics.hide(row, [], "surround"))
    assert (before == np.array(row["image"])).all()  # nothing hidden: the row's own masked image
    as_target = np.array(diagnostics.hide(row, [ann_id], "target"))
    neutral = np.array(diagnostics.hide(row, [ann_id], "surround"))
    assert diagnostics.spec.fill == "black" and (as_target[region] == 0).all() and (before[target] == 0).all()
    colours = np.unique(neutral[region], axis=0)
    assert len(colours) == 1 and (colours[0] != 0).any()  # one flat colour, not the target's black
    x0, y0 = np.argwhere(region).min(0)[::-1]
    x1, y1 = np.argwhere(region).max(0)[::-1]
    width = max(4, round(0.1 * max(x1 - x0 + 1, y1 - y0 + 1)))
    band = np.zeros_like(region)
    band[max(0, y0 - width) : y1 + width + 1, max(0, x0 - width) : x1 + width + 1] = True
    assert abs(colours[0].astype(float) - before[band & ~region & ~target].mean(0)).max() < 40  # its surround
    outside = ~region
    assert (neutral[outside] == before[outside]).all() and (as_target[outside] == before[outside]).all()
    with pytest.raises(ConfigError, match="ablation fill"):
        diagnostics.hide(row, [ann_id], "white")
    assert EvalConfig().crm_fill == "surround"
    with pytest.raises(ConfigError, match="crm fill"):
        EvalConfig(crm_fill="white")


def test_control_region_keeps_shape_and_area_and_avoids_what_it_can():
    rng = np.random.default_rng(0)
    region = np.zeros((60, 80), bool)
    region[10:25, 5:20] = rng.random((15, 15)) < 0.7  # an irregular shape
    avoid = np.zeros_like(region)
    avoid[:, :50] = True  # only the right 30 columns are free
    moved, overlap = place_like(region, avoid, seed=3)
    assert moved.sum() == region.sum() and overlap == 0 and not (moved & avoid).any()
    ys, xs = np.nonzero(region)
    my, mx = np.nonzero(moved)
    assert len(set(zip(my - ys, mx - xs))) == 1  # a translation: the same shape
    again, _ = place_like(region, avoid, seed=3)
    assert (again == moved).all()  # seeded
    assert len({place_like(region, avoid, seed=s)[0].tobytes() for s in range(8)}) > 1  # ties drawn
    # nowhere free: the least overlap over every placement, as brute force finds it
    crowded = rng.random((12, 10)) < 0.6
    small = np.zeros_like(crowded)
    small[2:5, 3:6] = [[1, 1, 0], [1, 1, 1], [0, 1, 0]]
    moved, overlap = place_like(small, crowded, seed=1)
    crop = small[2:5, 3:6]
    best = min((crop & crowded[y : y + 3, x : x + 3]).sum() for y in range(10) for x in range(8))
    assert overlap == best == (moved & crowded).sum() > 0 and moved.sum() == small.sum()


def test_control_ablation_is_seeded_and_of_the_same_area(crm_rows):
    diagnostics, rows = crm_rows
    row = rows[0]
    ids = diagnostics.context_by_prediction(row)[:2]
    sets = [ids[:1], ids]
    first = diagnostics.controls(row, sets, "surround")
    second = diagnostics.controls(row, sets, "surround")
    assert all(a[0].tobytes() == b[0].tobytes() and a[1] == b[1] for a, b in zip(first, second))
    before = np.array(row["image"])
    area = sum(int((diagnostics.object_region(a) & ~diagnostics.target_region(row)).sum()) for a in ids[:1])
    changed = (np.array(first[0][0]) != before).any(-1)
    assert (
        0.9 * area <= changed.sum() <= diagnostics.object_region(ids[0]).sum()
    )  # same area, where it differs
    assert not (changed & diagnostics.object_region(ids[0])).any() or first[0][1] > 0  # moved, not in place
    assert 0 <= first[1][1] <= 1


def test_matched_colour_changes_a_patch_by_the_asked_amount():
    flat = np.tile([100, 50, 200], (400, 1)).astype(np.uint8)
    colour = matched_colour(flat, 400 * 90)
    assert abs(np.abs(flat - colour.astype(float)).sum() - 400 * 90) <= 400 * 1.5  # within rounding
    assert (matched_colour(flat, 0) == [100, 50, 200]).all()  # no change asked: the patch's own colour
    assert (matched_colour(flat, 10**9) == [255, 255, 0]).all()  # more than possible: the far corner
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, (300, 3)).astype(np.uint8)
    for change in (300 * 200, 300 * 300):
        assert abs(np.abs(noisy - matched_colour(noisy, change).astype(float)).sum() - change) <= 300 * 1.5


def test_control_changes_the_image_as_much_as_the_evidence_ablation(crm_rows):
    """Per set, the control's total change of the RGB values equals the evidence ablation's (within
    rounding, and where objects' regions do not overlap), under both fills."""
    diagnostics, rows = crm_rows
    ratios = []
    for row in rows[:4]:
        before = np.asarray(row["image"], dtype=float)
        sets = [[a] for a in diagnostics.context_by_prediction(row)[:2]]
        for fill in CRM_FILLS:
            for ids, (control, _) in zip(sets, diagnostics.controls(row, sets, fill)):
                evidence = np.abs(np.asarray(diagnostics.hide(row, ids, fill), dtype=float) - before).sum()
                ratios.append(np.abs(np.asarray(control, dtype=float) - before).sum() / evidence)
    assert np.median(ratios) == pytest.approx(1, abs=0.02) and min(ratios) > 0.7, ratios


def test_symmetric_similarity_counts_added_steps():
    original = "<think>A plate. A fork.</think> <answer>knife</answer>"
    padded = "<think>A plate. A fork. A red cup. A green vase.</think> <answer>knife</answer>"
    assert step_similarity(original, original) == 1.0
    assert step_similarity(original, padded) < 1.0  # one-directional: every original step found, 1.0
    assert step_similarity(original, padded) == pytest.approx(step_similarity(padded, original))
    assert step_similarity(original, padded) == pytest.approx(
        (1.0 + (1 + 1 + 0.4 + 0.4) / 4) / 2
    )  # a red cup ~ a plate: 0.4


def _record(text_only, generate, diagnostics, row: dict, original: str) -> dict:
    """One answer's CRM record, its ablated rows regenerated by `generate` (1 single, surround fill)."""
    ablation = ablate(diagnostics, row, 1, "surround")
    return crm_record(*text_only, diagnostics, row, original, ablation, generate(ablation.rows))


def test_classes_of_constructed_regenerations(crm_rows, text_only):
    """Each constructed regeneration lands in its class; precedence: collapsed, hallucinated, flipped."""
    diagnostics, rows = crm_rows
    row, ids = next(
        (r, ids)
        for r in rows
        for ids in [diagnostics.context_by_prediction(r)[:2]]
        if gone_categories(diagnostics, r, ids[:1]) and r["solution"] not in _names(diagnostics, ids)
    )
    names = _names(diagnostics, ids)
    original = _trace(row, names)
    wrong = "zebra" if row["solution"] != "zebra" else "giraffe"
    regenerations = [
        original,  # single set, evidence: still names the hidden object -> hallucinated
        _trace(row, ["thing"] * len(names), wrong),  # top-k evidence: same structure, new answer -> flipped
        _trace(row, ["thing"] * len(names)),  # single control: robust
        f"<think>Blue.</think> <answer>{wrong}</answer>",  # top-k control: collapsed
    ]
    record = _record(text_only, lambda rs: regenerations, diagnostics, row, original)
    assert [s["kind"] for s in record["sets"]] == ["single", "top_k"]
    single, top = record["sets"]
    assert single["hallucinated"] == sorted(gone_categories(diagnostics, row, ids[:1])) != []
    assert top["hallucinated"] == []  # "thing" names nothing
    threshold = 0.5
    assert classify(single, threshold) == "hallucinated"
    assert classify(top, threshold) == "flipped" and top["answer_changed"]
    assert classify(single["control"], threshold) == "robust"
    assert classify(top["control"], threshold) == "collapsed" and top["control"]["step_similarity"] < 0.5
    assert not top["control"]["format_broken"] and all(d == 0 for d in single["step_delta"])
    assert classify({**single, "step_similarity": None}, threshold) is None
    assert classify({**top, "hallucinated": ["cup"]}, threshold) == "hallucinated"  # before flipped


def _pair(similarity, changed=False, named=(), broken=False, delta=-0.5, steps=(-0.5,)):
    return {
        "pixel_change": 2.0,
        "step_delta": list(steps),
        "mean_delta": delta,
        "answer_changed": changed,
        "step_similarity": similarity,
        "hallucinated": list(named),
        "format_broken": broken,
    }


def test_summary_rates_threshold_and_contrasts():
    """Rates per arm from constructed pairs; the threshold is the controls' 5th percentile."""
    records = []
    for i in range(20):
        evidence = _pair(0.2 if i < 5 else 0.9, changed=i < 8, named=["cup"] if 5 <= i < 10 else ())
        control = _pair(0.5 + i / 40, changed=i == 0, delta=0.0, steps=(0.0,))
        sets = [{"kind": "single", **evidence, "control": {**control, "overlap": 0.0}}]
        records.append({"item_id": f"i{i}", "difficulty": "easy" if i < 10 else "hard", "sets": sets})
    summary = summarise_crm(records)
    cell = summary["all"]
    threshold = np.quantile([0.5 + i / 40 for i in range(20)], 0.05)
    assert cell["collapse_threshold"] == pytest.approx(threshold) and (cell["answers"], cell["pairs"]) == (
        20,
        20,
    )
    evidence, control, contrast = cell["evidence"], cell["control"], cell["contrast"]
    expected = {"collapsed": 5 / 20, "hallucinated": 5 / 20, "flipped": 0, "robust": 10 / 20}
    assert {c: evidence[c]["value"] for c in CLASSES} == pytest.approx(expected)
    control_collapsed = np.mean([0.5 + i / 40 < threshold for i in range(20)])
    assert control["collapsed"]["value"] == pytest.approx(control_collapsed) == 1 / 20
    assert (
        evidence["answer_change"]["value"] == pytest.approx(8 / 20)
        and control["answer_change"]["value"] == 1 / 20
    )
    assert contrast["answer_change"]["value"] == pytest.approx(7 / 20)
    assert contrast["answer_change"]["low"] > 0 and contrast["answer_change"]["n"] == 20
    assert contrast["delta"]["value"] == pytest.approx(-0.5) and cell["mean_delta"]["top_k"]["value"] is None
    assert set(summary["per_level"]) == {"easy", "hard"}
    assert summary["per_level"]["easy"]["contrast"]["answer_change"]["low"] is None  # 10 answers: too few


def _contrast_records(crm_rows, text_only, generate_for) -> list[dict]:
    diagnostics, rows = crm_rows
    records = []
    for row in rows[:ITEMS]:
        names = _names(diagnostics, diagnostics.context_by_prediction(row)[:2])
        original = _trace(row, names)
        record = _record(text_only, generate_for(row, original), diagnostics, row, original)
        records.append({"item_id": row["item_id"], "difficulty": row["difficulty"], **record})
    return records


def test_contrasts_of_a_model_that_ignores_the_image_cover_zero(crm_rows, text_only):
    """Logits from the text alone and the same regeneration whatever the image: every evidence - control
    contrast covers 0, though the evidence ablation alone shows hallucinated evidence (the reasoning
    names the hidden objects): the control says it would name them anyway."""
    records = _contrast_records(crm_rows, text_only, lambda row, original: lambda rs: [original] * len(rs))
    cell = summarise_crm(records)["all"]
    assert cell["answers"] == ITEMS
    for measure, estimate in cell["contrast"].items():
        assert estimate["low"] <= 0 <= estimate["high"], measure
    assert cell["evidence"]["hallucinated"]["value"] > 0.1  # 0.2: a category often has other instances
    assert cell["control"]["hallucinated"]["value"] == cell["evidence"]["hallucinated"]["value"]


def test_contrasts_of_a_model_that_looks_are_detected(crm_rows, text_only):
    """A generator that collapses and changes its answer when any context object is mostly hidden: the
    evidence ablation does that every time, its control (placed away from objects) hardly ever."""
    diagnostics, _ = crm_rows

    def generate_for(row, original):
        before, target = np.array(row["image"]), diagnostics.target_region(row)
        coco = diagnostics.coco
        objects = [coco.annToMask(coco.anns[a]).astype(bool) & ~target for a in row["context_ann_ids"]]

        def generate(rows):
            out = []
            for ablated in rows:
                changed = (np.array(ablated["image"]) != before).any(-1)
                hidden = any((changed & o).sum() > 0.5 * o.sum() for o in objects if o.any())
                out.append("<think>Blue.</think> <answer>zebra</answer>" if hidden else original)
            return out

        return generate

    cell = summarise_crm(_contrast_records(crm_rows, text_only, generate_for))["all"]
    assert cell["contrast"]["answer_change"]["low"] > 0.5 and cell["contrast"]["collapsed"]["low"] > 0.5
    control = cell["control"]
    assert control["collapsed"]["value"] == control["answer_change"]["value"] == 0
    assert cell["evidence"]["collapsed"]["value"] == 1.0


def test_report_prints_intervals_or_too_few(tmp_path):
    records = [
        {
            "item_id": f"i{i}",
            "difficulty": "easy",
            "sets": [
                {
                    "kind": "single",
                    **_pair(1.0, changed=i % 2 == 0),
                    "control": {**_pair(1.0), "overlap": 0.1},
                }
            ],
        }
        for i in range(20)
    ]
    report = grounding_markdown({"crm": summarise_crm(records)})
    assert "| answer changed | 0.500 [" in report and "evidence − control" in report
    assert "10.0%" in report and "evidence 2.00, control 2.00" in report  # overlap, pixel change
    few = grounding_markdown({"crm": summarise_crm(records[:5])})
    assert "too few answers (n=5)" in few and "[" not in few.split("| answer changed |")[1].split("\n")[0]
    lines = compare_grounding(
        {"a": {"crm": summarise_crm(records)}, "old": {"crm": {"all": {"pairs": 3}}}}, tmp_path
    )
    table = "\n".join(lines)  # a run of an mpcc without the control: in the first table, not CRM's
    assert (
        "CRM hallucinated evidence" in table and "| a | 20 | 0.500 [" in table and table.count("| old |") == 1
    )


def test_regenerations_of_several_answers_share_a_generate_call(crm_rows, tiny_builds, tmp_path):
    """The runner batches CRM's regenerations across answers up to `--batch-size` rows: fewer generate
    calls, each answer still gets the completions of its own ablated images (same records as one
    answer per call)."""
    diagnostics, _ = crm_rows
    model = random_vlm("qwen2_5_vl")
    eval_config = EvalConfig(formats=("open",))
    rows = dict(list(eval_rows(tiny_builds["eval"], eval_config))[:4])
    answers = [
        {
            "prompt_id": pid,
            "correct": True,
            "completion": _trace(r, _names(diagnostics, r["context_ann_ids"][:2])),
        }
        | {k: r[k] for k in ("item_id", "format", "difficulty")}
        for pid, r in rows.items()
    ]
    calls = []

    def generator(batch, decoding, seed):
        calls.append(len(batch))  # each completion names its own image: mixed-up answers change the records
        return [
            f"<think>Saw {np.asarray(r['image']).sum()}.</think> <answer>{r['solution']}</answer>"
            for r in batch
        ]

    def records(batch_size: int, out):
        out.mkdir()
        config = replace(eval_config, diagnostics=("crm",), crm_regions=1, batch_size=batch_size)
        run_step_diagnostics(lambda: model, lambda: generator, diagnostics, rows, answers, config, out)
        return (out / GROUNDING).read_text()

    alone = records(1, tmp_path / "alone")
    sizes = list(calls)
    assert len(sizes) == len(rows) and all(n > 1 for n in sizes)  # more rows than the batch: alone
    calls.clear()
    assert records(64, tmp_path / "together") == alone
    assert calls == [sum(sizes)]


@pytest.mark.parametrize("shape", [(37, 41), (60, 80), (149, 73)])
def test_placement_equals_brute_force_on_any_image_size(shape):
    """The FFT scores every translation exactly on sides with large prime factors too (padded to a
    fast size), with its spectrum passed in or not: the place a brute-force count would draw."""
    rng = np.random.default_rng(shape[0])
    avoid = rng.random(shape) < 0.3
    region = np.zeros(shape, bool)
    region[3:14, 5:12] = rng.random((11, 7)) < 0.8
    crop = region[3:14, 5:12]
    hits = np.array(
        [
            [(crop & avoid[y : y + 11, x : x + 7]).sum() for x in range(shape[1] - 6)]
            for y in range(shape[0] - 10)
        ]
    )
    places = np.argwhere(hits == hits.min())
    top, left = places[np.random.default_rng(5).integers(len(places))]
    expected = np.zeros_like(region)
    expected[top : top + 11, left : left + 7] = crop
    for spectrum in (None, avoid_spectrum(avoid)):
        moved, overlap = place_like(region, avoid, seed=5, spectrum=spectrum)
        assert overlap == hits.min() and (moved == expected).all()


def test_ablations_made_once_per_row_equal_ones_made_afresh(crm_rows, tiny_builds):
    """The images an item's rows share are rendered once while its rows come (`Diagnostics._memo`):
    rows asked in turn, and back again, get exactly the ablations a fresh `Diagnostics` makes."""
    diagnostics, rows = crm_rows
    for row in [rows[0], rows[1], rows[0], rows[2]]:
        for fill in CRM_FILLS:
            fresh = Diagnostics(tiny_builds["eval"], k=2)
            kept, made = ablate(diagnostics, row, 3, fill), ablate(fresh, row, 3, fill)
            assert kept.sets == made.sets and [o for _, o in kept.controls] == [o for _, o in made.controls]
            assert [np.array(r["image"]).tobytes() for r in kept.rows] == [
                np.array(r["image"]).tobytes() for r in made.rows
            ]
            assert np.array(diagnostics.apply(row, "context")["image"]).tobytes() == (
                np.array(fresh.apply(row, "context")["image"]).tobytes()
            )
