"""Datasets that are not mpcc builds (`mpcc.evaluation.external`): both sources give the same rows, each
region form lands on the image tokens it covers, a bad mapping stops in one line naming what is wrong,
and `mpcc eval --diagnostics evidence,blind` runs and resumes on the shapes fixture
(tests/evidence_fixture.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from datasets import Dataset, DatasetDict
from evidence_fixture import TASKS, write_shapes
from PIL import Image
from pycocotools import mask as mask_utils

from mpcc.cli import main
from mpcc.errors import InputError
from mpcc.evaluation.config import DatasetColumns, EvalConfig
from mpcc.evaluation.grounding.annotated import AnnotatedRegions, parse_regions, regions_mask
from mpcc.evaluation.grounding.evidence import evidence_record
from mpcc.evaluation.grounding.forcing import teacher_forced
from mpcc.evaluation.grounding.regions import region_tokens, token_grid
from mpcc.evaluation.harness import eval_rows
from mpcc.models import random_vlm

MAPPED = DatasetColumns(id_column="pid", subset_column="task")
TRACE = "<think>The blue shape has three corners. So it is a triangle.</think><answer>C</answer>"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_shapes(tmp_path_factory.mktemp("shapes"), rows=16, seed=1)


@pytest.fixture(scope="module")
def processor():
    return random_vlm("qwen2_5_vl")[1]


def _rows(data, **config) -> list[dict]:
    return [row for _, row in eval_rows(data, EvalConfig(**{"columns": MAPPED, **config}))]


def test_jsonl_and_saved_dataset_give_the_same_rows(shapes):
    """The JSONL file and its save_to_disk copy: the same questions, answers, formats, ids, regions and
    pixels; each task gets its answer format (MathVista's choice text -> its letter)."""
    from_jsonl, from_disk = _rows(shapes), _rows(shapes.parent / "shapes_disk")
    assert len(from_jsonl) == len(from_disk) == 16
    for a, b in zip(from_jsonl, from_disk):
        assert {k: v for k, v in a.items() if k not in ("image", "supercategory")} == {
            k: v for k, v in b.items() if k not in ("image", "supercategory")
        }
        assert (np.asarray(a["image"]) == np.asarray(b["image"])).all()
    records = [json.loads(line) for line in shapes.read_text().splitlines()]
    formats = {"shape": "mc", "colour": "text", "count": "text", "existence": "yesno"}
    for row, record in zip(from_jsonl, records):
        assert row["item_id"] == record["pid"] and row["supercategory"] == record["task"]
        assert row["format"] == formats[record["task"]] and row["solution"] == record["answer"]
        if row["format"] == "mc":
            assert row["options"][("ABCD").index(row["answer"])] == record["answer"]
    assert {r["supercategory"] for r in from_jsonl} == set(TASKS)


def _cells(processor, size) -> tuple[tuple[int, int], np.ndarray]:
    image = Image.new("RGB", size)
    chat = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "?"}]}]
    inputs = processor.apply_chat_template(
        [chat], add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    grid = token_grid(inputs["image_grid_thw"][0], processor.image_processor.merge_size)
    chosen = np.random.default_rng(size[0]).random(grid) < 0.3
    return grid, chosen


@pytest.mark.parametrize("size", [(300, 200), (123, 457), (640, 480)])
def test_each_region_form_gets_exactly_the_tokens_of_its_cells(processor, size):
    """Chosen cells of the processor's own grid written as boxes (xyxy, xywh, dicts), polygons (flat,
    points) and COCO RLE (compressed, runs): each form gives exactly those image tokens."""
    width, height = size
    grid, chosen = _cells(processor, size)
    rows, cols = grid
    cells = [
        (j * width / cols, i * height / rows, (j + 1) * width / cols, (i + 1) * height / rows)
        for i, j in zip(*np.nonzero(chosen))
    ]
    cell_y = np.minimum((np.arange(height) + 0.5) * rows // height, rows - 1).astype(int)
    cell_x = np.minimum((np.arange(width) + 0.5) * cols // width, cols - 1).astype(int)
    pixels = chosen[cell_y[:, None], cell_x[None, :]]
    rle = mask_utils.encode(np.asfortranarray(pixels.astype(np.uint8)))
    forms = {
        "xyxy": ([list(c) for c in cells], "xyxy"),
        "xywh": ([[x0, y0, x1 - x0, y1 - y0] for x0, y0, x1, y1 in cells], "xywh"),
        "box dicts": ([{"bbox": list(c)} for c in cells], "xyxy"),
        "flat polygons": ([[x0, y0, x1, y0, x1, y1, x0, y1] for x0, y0, x1, y1 in cells], "xyxy"),
        "point polygons": (
            [{"polygon": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]} for x0, y0, x1, y1 in cells],
            "xyxy",
        ),
        "rle": ({"size": [height, width], "counts": rle["counts"].decode("ascii")}, "xyxy"),
        "rle runs": ([{"rle": {"size": [height, width], "counts": _runs(pixels)}}], "xyxy"),
    }
    for name, (value, box_format) in forms.items():
        mask = regions_mask(parse_regions(value, box_format, (height, width)), (height, width))
        assert (region_tokens(mask, grid) == chosen.reshape(-1)).all(), name


def _runs(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE: alternating run lengths of 0 and 1, column-major, starting with 0s."""
    flat = mask.flatten(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return np.diff(np.concatenate([[0], edges])).tolist()


def test_regions_that_cannot_be_read_are_named():
    size = (100, 200)
    for value, message in (
        ([10, 10, 5, 5], "empty as xyxy"),
        ([300, 10, 320, 20], "outside the 200x100 image"),
        ([1, 2, 3, 4, 5], "3 or more"),
        ({"size": [50, 50], "counts": "abc"}, "not the image's"),
        ({"shape": "box"}, "needs box, bbox, polygon"),
        ("box", "not a box, polygon or RLE"),
    ):
        with pytest.raises(InputError, match=message):
            parse_regions(value, "xyxy", size)
    assert parse_regions([10, 10, 5, 5], "xywh", size) == [("box", (10.0, 10.0, 15.0, 15.0))]
    assert parse_regions(None, "xyxy", size) == parse_regions([], "xyxy", size) == []


def _tiny_jsonl(folder, records: list[dict]):
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(folder / "a.png")
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


GOOD = {"image": "a.png", "question": "Which colour?", "answer": "red", "evidence": [[0, 0, 20, 30]]}


@pytest.mark.parametrize(
    ("change", "config", "message"),
    [
        ({}, {"columns": DatasetColumns(question_column="q")}, r"no column 'q' \(--question-column\)"),
        ({}, {"columns": DatasetColumns(id_column="pid")}, r"no column 'pid' \(--id-column\)"),
        (
            {},
            {"columns": DatasetColumns(evidence_column="boxes")},
            r"no column 'boxes' \(--evidence-column\)",
        ),
        (
            {"evidence": None},
            {"diagnostics": ("context",)},
            "context cannot run here: they need an mpcc build",
        ),
        ({"evidence": None}, {"diagnostics": ("crm", "evidence")}, "crm cannot run here"),
        ({"image": "missing.png"}, {}, "row 2, column 'image': cannot read the image 'missing.png'"),
        ({"choices": ["blue", "green"]}, {}, "row 2: answer 'red' is neither one option's text"),
        ({"choices": ["red"]}, {}, "row 2: choices must be a list of 2 to 10"),
        ({"answer": " "}, {}, "row 2: no answer"),
        ({"evidence": [[5, 5, 1, 1]]}, {}, r"row 2, column 'evidence': box \[5, 5, 1, 1\] is empty as xyxy"),
    ],
)
def test_a_bad_mapping_or_row_is_one_line_naming_it(tmp_path, change, config, message):
    path = _tiny_jsonl(tmp_path, [GOOD, {**GOOD, **change}])
    with pytest.raises(InputError, match=message) as caught:
        eval_rows(path, EvalConfig(**config))
    assert "\n" not in str(caught.value)


def test_missing_evidence_column_only_matters_to_the_evidence_diagnostic(tmp_path):
    path = _tiny_jsonl(tmp_path, [{k: v for k, v in GOOD.items() if k != "evidence"}])
    assert _rows(path, columns=DatasetColumns())[0]["evidence"] == []
    with pytest.raises(InputError, match="evidence diagnostic needs evidence regions"):
        eval_rows(path, EvalConfig(diagnostics=("evidence",)))


def test_sources_that_cannot_be_read_are_named(tmp_path):
    path = _tiny_jsonl(tmp_path / "j", [GOOD])
    path.write_text(json.dumps(GOOD) + "\n{not json\n")
    with pytest.raises(InputError, match="line 2 is not JSON"):
        eval_rows(path, EvalConfig())
    path.write_text(json.dumps({**GOOD, "pid": "x"}) + "\n" + json.dumps({**GOOD, "pid": "x"}) + "\n")
    with pytest.raises(InputError, match="item id 'x' repeats"):
        eval_rows(path, EvalConfig(columns=DatasetColumns(id_column="pid")))
    image = Image.new("RGB", (40, 30))
    split = Dataset.from_list([{**GOOD, "image": image}])
    DatasetDict({"test": split, "testmini": split}).save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(InputError, match=r"splits \['test', 'testmini'\]: choose one with --split"):
        eval_rows(tmp_path / "dict", EvalConfig())
    rows = _rows(tmp_path / "dict", columns=DatasetColumns(split="testmini"))
    assert rows[0]["supercategory"] == "dict" and rows[0]["evidence"] == [("box", (0.0, 0.0, 20.0, 30.0))]


def test_uniform_attention_puts_the_area_share_on_annotated_evidence(shapes):
    """Zero queries attend uniformly, so the evidence share of image attention is exactly the share of
    image tokens the annotated evidence covers; the whole image as evidence gets share 1, no region none,
    and there is no hidden target to measure."""
    row = _rows(shapes, limit=1)[0]
    model, processor = random_vlm("qwen2_5_vl")
    for layer in model.model.language_model.layers:
        layer.self_attn.q_proj.weight.data.zero_()
        layer.self_attn.q_proj.bias.data.zero_()
    evidence, target = AnnotatedRegions().regions(row)
    inputs, _, _ = teacher_forced(processor, [row], TRACE, "cpu")
    grid = token_grid(inputs["image_grid_thw"][0], processor.image_processor.merge_size)
    n_evidence, n_image = int(region_tokens(evidence, grid).sum()), grid[0] * grid[1]
    assert 0 < n_evidence < n_image and not target.any()
    record = evidence_record(model.eval(), processor, row, TRACE, (evidence, target), frozenset({0, 1}))
    assert record["evidence_share"] == pytest.approx(n_evidence / n_image, rel=1e-5)
    assert record["tokens"] == {"image": n_image, "evidence": n_evidence, "target": 0}
    assert record["target_mass_raw"] is None
    whole = evidence_record(model, processor, row, TRACE, (np.ones_like(evidence), target), frozenset({0}))
    assert whole["evidence_share"] == pytest.approx(1.0, rel=1e-5)


def test_mpcc_eval_measures_evidence_on_the_shapes_fixture_and_resumes(shapes, tmp_path, monkeypatch):
    """`mpcc eval --diagnostics evidence,blind` end to end with the mapping in a --config YAML: metrics per
    format and task, the blind gap, evidence records whose regions cover tokens; a rerun with the same
    mapping given as flags is the same run and measures nothing again."""
    from mpcc.evaluation.grounding import evidence

    (tmp_path / "columns.yaml").write_text(yaml.safe_dump({"id_column": "pid", "subset_column": "task"}))
    out = tmp_path / "run"
    command = ["eval", "--model", "tiny:qwen2_5_vl", "--data", str(shapes), "--out", str(out)]
    command += ["--diagnostics", "evidence,blind", "--limit", "4", "--max-new-tokens", "24"]
    assert main([*command, "--config", str(tmp_path / "columns.yaml")]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 4 and set(metrics["per_format"]) == {"mc", "text", "yesno"}
    assert set(metrics["per_supercategory"]) == set(TASKS)
    assert metrics["diagnostics"]["blind"]["accuracy"] is not None
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    answered = {p["prompt_id"] for p in predictions if p["completion"] and p["condition"] == "normal"}
    records = [json.loads(line) for line in (out / "grounding.jsonl").read_text().splitlines()]
    assert {r["prompt_id"] for r in records} == answered and answered
    assert all(
        0 < r["tokens"]["evidence"] < r["tokens"]["image"] and r["tokens"]["target"] == 0 for r in records
    )
    section = metrics["grounding"]
    assert section["evidence"]["all"]["n"] == len(answered)
    assert 0 < section["evidence"]["all"]["evidence_share"]["value"] < 1
    assert "## Step-level grounding" in (out / "report.md").read_text()

    def fail(*args, **kwargs):
        raise AssertionError("measured again on resume")

    monkeypatch.setattr(evidence, "measure", fail)
    before = (out / "predictions.jsonl").read_bytes()
    assert main([*command, "--id-column", "pid", "--subset-column", "task"]) == 0
    assert (out / "predictions.jsonl").read_bytes() == before
    assert json.loads((out / "metrics.json").read_text())["grounding"] == section
    assert main([*command, "--id-column", "pid"]) == 2  # another mapping is another run
