"""Model families beyond Qwen (mpcc.families) through the whole path on the real tinycoco build: tiny
model, token grids for grounding, SFT / GRPO / GRPO + prior sampling (replace, append), `mpcc eval` with
every diagnostic, export, and a reload of the export in a process that never imports mpcc (same logits).
One module-scoped SFT run per family feeds the eval and the export; models stay tiny (hidden size 64)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from stock_files import assert_stock_folders
from transformers import LlavaConfig

from mpcc.cli import main as cli
from mpcc.data.build import BuildConfig, build
from mpcc.errors import ConfigError, ValidationError
from mpcc.evaluation.grounding.attention import measure, resolve_layers
from mpcc.evaluation.grounding.regions import cell_coverage, grids_tokens
from mpcc.families import FAMILIES, TINY_ARCHS, family
from mpcc.families.image_only import ImageOnly
from mpcc.models import check_grounding, load_model, load_processor, random_vlm
from mpcc.train import main as train

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes" / "tiny"
# The Qwen families have their own tests (test_models, test_grounding, test_training, ...).
NEW_FAMILIES = ("idefics3", "smolvlm", "gemma3", "glm4v", "glm46v", "llava_onevision", "internvl")
# The whole path (train, eval, export) per distinct family: GLM-4.1V differs from GLM-4.6V only in its class
# names, which its tiny model, grids, memo, prefill and stock-loading tests cover (suite time on 2 cores).
PATH_FAMILIES = ("idefics3", "smolvlm", "gemma3", "glm46v", "llava_onevision", "internvl")
STEPS = ["--max_steps", "2", "--save_steps", "2"]


@pytest.fixture(scope="module")
def traced_train(tinycoco, tmp_path_factory) -> Path:
    """A tinycoco train build with template traces (SFT targets and prior samples)."""
    out = tmp_path_factory.mktemp("traced") / "train"
    config = BuildConfig("train", template_traces=True)
    build(tinycoco / "instances.json", tinycoco / "images", out, config, num_proc=1)
    return out


@pytest.fixture(scope="module")
def sft_runs(traced_train, tmp_path_factory) -> dict[str, Path]:
    """Two SFT steps per new family; the output feeds the eval and export tests."""
    root = tmp_path_factory.mktemp("sft")
    runs = {}
    for arch in PATH_FAMILIES:
        out = root / arch
        argv = [str(RECIPES / "sft.yaml"), "--model_name_or_path", f"tiny:{arch}", "--output_dir", str(out)]
        assert train([*argv, "--dataset_path", str(traced_train), *STEPS]) == 0
        runs[arch] = out
    return runs


def _image_message(image) -> list[dict]:
    text = {"type": "text", "text": "Which object is hidden?"}
    return [{"role": "user", "content": [{"type": "image", "image": image}, text]}]


def _inputs(processor, image):
    return processor.apply_chat_template(
        _image_message(image),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )


def _grids(arch: str, processor, inputs, image) -> list:
    """The family's token grids of one row, given its image's size as the evidence diagnostic gives it."""
    size = torch.tensor([[image.height, image.width]])
    return FAMILIES[arch].token_grids(processor, {**inputs, "image_sizes": size})


def test_every_family_has_a_tiny_model_and_the_command_lists_them(capsys):
    with pytest.raises(SystemExit):
        cli(["tiny-model", "--help"])
    listed = capsys.readouterr().out
    assert all(arch in listed for arch in TINY_ARCHS) and set(NEW_FAMILIES) <= set(TINY_ARCHS)


def test_an_unsupported_family_is_refused_at_start_in_one_line(tmp_path):
    tiny = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    LlavaConfig(text_config={"model_type": "llama", **tiny}, vision_config=tiny).save_pretrained(tmp_path)
    with pytest.raises(ConfigError) as refused:
        load_model(tmp_path)  # before any weights are read (the folder has none)
    message = str(refused.value)
    assert (
        "\n" not in message and "'llava'" in message and all(t in message for t in ("qwen2_5_vl", "idefics3"))
    )
    with pytest.raises(ConfigError, match="'llava'.*supported"):
        family("llava")
    recipe = str(RECIPES / "sft.yaml")
    with pytest.raises(ConfigError, match="'llava' is not a supported model family"):  # before any data
        train([recipe, "--model_name_or_path", str(tmp_path), "--output_dir", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("arch", ("qwen2_5_vl", *NEW_FAMILIES))
@pytest.mark.parametrize("size", [(300, 200), (640, 480), (90, 60), (123, 457)])
def test_each_token_sees_its_preimage_box(arch, size):
    """A coordinate image (red = x, green = y): every image token's pixels in the processor's output
    average to the centre of the preimage box its family's grids give it, on images the processor
    tiles, resizes up and down and to another aspect ratio (a box reaching into a black padding: the
    mean of the coordinates there, 0 outside the image)."""
    model, processor = random_vlm(arch)
    width, height = size
    x, y = np.meshgrid((np.arange(width) + 0.5) / width, (np.arange(height) + 0.5) / height)
    pixels = np.stack([x * 255, y * 255, np.zeros_like(x)], -1).round().astype(np.uint8)
    image = Image.fromarray(pixels)
    inputs = _inputs(processor, image)
    grids = _grids(arch, processor, inputs, image)
    centres = []
    for rows, cols, box in grids:
        if box is None:  # no preimage: the model's newline token (NaN below)
            centres += [(np.nan, np.nan)] * rows * cols
            continue
        left, top, right, bottom = box
        for i in range(rows):
            for j in range(cols):
                x = _mean_inside(left + j * (right - left) / cols, left + (j + 1) * (right - left) / cols)
                y = _mean_inside(top + i * (bottom - top) / rows, top + (i + 1) * (bottom - top) / rows)
                centres.append((x[0] * y[1], y[0] * x[1]))
    seen = _token_colours(arch, model, processor, inputs)
    assert len(seen) == len(centres) == int((inputs["input_ids"] == model.config.image_token_id).sum())
    # resampling blurs across a cell's edge
    tolerance = max((box[3] - box[1]) / rows for rows, _, box in grids if box is not None) / 4
    np.testing.assert_allclose(np.array(seen), np.array(centres), atol=tolerance)


def _mean_inside(start: float, end: float) -> tuple[float, float]:
    """Over [start, end): the mean of the coordinate, taken as 0 outside [0, 1], and the share inside."""
    lo, hi = min(max(start, 0.0), 1.0), min(max(end, 0.0), 1.0)
    return (hi**2 - lo**2) / 2 / (end - start), (hi - lo) / (end - start)


def _token_colours(arch: str, model, processor, inputs) -> list[tuple[float, float]]:
    """(red, green) in [0, 1] averaged over each image token's pixels, in token order."""
    mean, std = (
        torch.tensor(v)[:, None, None]
        for v in (processor.image_processor.image_mean, processor.image_processor.image_std)
    )
    if arch == "llava_onevision":  # each patch's colour, laid out by the model's own code (unpad, shrink)
        side = int(processor.num_image_tokens**0.5)
        tiles = (inputs["pixel_values"][0] * std + mean)[:, :2]  # the base image, then the canvas's tiles
        cells = tiles.unflatten(-1, (side, -1)).unflatten(-3, (side, -1)).mean((-3, -1))
        newline = torch.full((2,), torch.nan)
        packed, _ = model.model.pack_image_features(
            [cells.flatten(-2).transpose(1, 2)],
            inputs["image_sizes"],
            newline,
            model.config.vision_aspect_ratio,
        )
        return [tuple(c) for c in packed[0].tolist()]
    if arch in ("idefics3", "smolvlm"):
        images = inputs["pixel_values"][0]  # the tiles row-major, then the global image
        side = int(processor.image_seq_len**0.5)
    elif arch in (
        "gemma3",
        "internvl",
    ):  # one square image; InternVL: its tiles row-major, then the thumbnail
        images, side = inputs["pixel_values"], int(processor.image_seq_length**0.5)
    else:  # Qwen-VL's layout (GLM's too): each token's merge x merge patches in a row, (C, T, P, P) each
        ip = processor.image_processor
        shape = (-1, ip.merge_size**2, 3, ip.temporal_patch_size, ip.patch_size**2)
        patches = inputs["pixel_values"].reshape(shape) * std + mean  # (3, 1, 1): per channel
        return [tuple(p.tolist()) for p in patches[:, :, :2].mean((1, 3, 4))]
    out = []
    for image in images:
        image = image * std + mean
        cell = image.shape[-1] // side
        for i in range(side):
            for j in range(side):
                patch = image[:2, i * cell : (i + 1) * cell, j * cell : (j + 1) * cell]
                out.append(tuple(patch.mean((1, 2)).tolist()))
    return out


@pytest.mark.parametrize("arch", NEW_FAMILIES)
def test_a_region_of_known_cells_gets_exactly_those_tokens(arch):
    """Cells chosen in the whole image's grid, as a pixel mask: exactly those tokens of the whole image,
    and (a tiling family) in each tile the tokens whose preimage lies inside the chosen cells."""
    _, processor = random_vlm(arch)
    width, height = 300, 200
    image = Image.new("RGB", (width, height))
    grids = _grids(arch, processor, _inputs(processor, image), image)
    # the whole image after the tiles (LLaVA-OneVision: before)
    whole = 0 if arch == "llava_onevision" else -1
    rows, cols, box = grids[whole]
    assert box == (0.0, 0.0, 1.0, 1.0)
    chosen = np.random.default_rng(0).random((rows, cols)) < 0.3
    cell_y = np.minimum((np.arange(height) + 0.5) * rows // height, rows - 1).astype(int)
    cell_x = np.minimum((np.arange(width) + 0.5) * cols // width, cols - 1).astype(int)
    mask = chosen[cell_y[:, None], cell_x[None, :]]
    tokens = grids_tokens(mask, grids)
    assert ((tokens[-rows * cols :] if whole else tokens[: rows * cols]) == chosen.reshape(-1)).all()
    if arch == "llava_onevision":  # rows of the unpadded canvas, each ending in a newline token in no region
        assert [g[2] is None for g in grids[1:]] == [False, True] * (len(grids) // 2)
        strip_cols, first = grids[1][1], grids[1][2]
        everything = grids_tokens(np.ones((height, width), bool), grids)
        assert not everything[rows * cols :][strip_cols :: strip_cols + 1].any()
        assert first[1] < 0  # 300 x 200 on a square canvas: the first row reaches into the padding above
        inside = cell_coverage(np.ones((height, width), bool), (1, strip_cols), first)
        share = first[3] / (first[3] - first[1])  # PIL's box filter takes a fractional box edge to a pixel
        np.testing.assert_allclose(inside, share, atol=1 / ((first[3] - first[1]) * height))
        return
    if len(grids) == 1:
        return
    tiles = [
        chosen[r * rows // 2 : (r + 1) * rows // 2, c * cols // 2 : (c + 1) * cols // 2]
        for r in range(2)
        for c in range(2)
    ]
    per_tile = tokens[: -rows * cols].reshape(len(tiles), rows, cols)
    for tile, got in zip(tiles, per_tile):  # a 2 x 2 tiling: each global cell spans 2 x 2 tile tokens
        assert (got == np.kron(tile, np.ones((2, 2), bool))).all()


# Plain GRPO runs the path of a prior-sampling run without the traces (nothing family-specific is left
# out): it runs for one family. Prior sampling runs for each, its two modes taking turns: what a family
# changes in either (the generation inputs of the rows that are not trace slots, the memo, the prefill)
# is the same code in both, and each mode runs on three families (suite time on 2 cores).
TRAINERS = [
    pytest.param(arch, trainer, marks=pytest.mark.slow)
    for i, arch in enumerate(PATH_FAMILIES)
    for trainer in ("grpo", f"grpo_prior:{('replace', 'append')[i % 2]}")
    if trainer != "grpo" or arch == "gemma3"
]


@pytest.mark.parametrize("arch, trainer", TRAINERS)
def test_grpo_and_prior_sampling_train(arch, trainer, traced_train, tmp_path, caplog):
    recipe, _, mode = trainer.partition(":")
    argv = [
        str(RECIPES / f"{recipe}.yaml"),
        "--model_name_or_path",
        f"tiny:{arch}",
        "--output_dir",
        str(tmp_path),
    ]
    argv += ["--dataset_path", str(traced_train), *STEPS, "--max_completion_length", "16"]
    if mode:  # groups of 4 rows either way: 3 generated + the trace appended, or 4 with one replaced
        argv += ["--prior_mode", mode, "--num_generations", "3" if mode == "append" else "4"]
    with caplog.at_level(logging.WARNING, logger="mpcc.families"):
        assert train(argv) == 0
    history = json.loads((tmp_path / "trainer_state.json").read_text())["log_history"]
    steps = [h for h in history if "loss" in h]
    assert len(steps) == 2 and all(np.isfinite(h["loss"]) for h in steps)
    if mode:
        assert all(h["prior/traces"] >= 1 for h in steps)
    for speedup in ("image_feature_memo", "shared_prefill"):  # said at start where the family lacks it
        said = any(speedup in r.getMessage() and arch in r.getMessage() for r in caplog.records)
        assert said == (not getattr(FAMILIES[arch], speedup))


@pytest.mark.parametrize("arch", PATH_FAMILIES)
def test_eval_with_every_diagnostic(arch, sft_runs, tiny_builds, tmp_path):
    out = tmp_path / "eval"
    argv = ["eval", "--model", str(sft_runs[arch]), "--data", str(tiny_builds["eval"]), "--out", str(out)]
    argv += ["--limit", "1", "--max-new-tokens", "24", "--diagnostics", "blind,context,shape,crm,evidence"]
    assert cli(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["diagnostics"]) >= {"blind", "context", "shape"}
    grounding = [json.loads(line) for line in (out / "grounding.jsonl").read_text().splitlines()]
    kinds = {g["kind"] for g in grounding}
    assert {"evidence", "crm"} <= kinds
    evidence = [g for g in grounding if g["kind"] == "evidence"]
    assert all(g["tokens"]["image"] > g["tokens"]["evidence"] > 0 for g in evidence)


# Runs in a fresh interpreter that never imports mpcc: the exported folder as any user loads it.
STOCK_SCRIPT = """
import json, sys
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
folder, image, saved = sys.argv[1], Image.open(sys.argv[2]), sys.argv[3]
processor = AutoProcessor.from_pretrained(folder)
model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
question = {"type": "text", "text": "Which object is hidden?"}
messages = [{"role": "user", "content": [{"type": "image", "image": image}, question]}]
inputs = processor.apply_chat_template(
    messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
)
with torch.no_grad():
    logits = model(**inputs).logits[0, -1].tolist()
torch.save(dict(inputs), saved)
mpcc = any(m.split(".")[0] == "mpcc" for m in sys.modules)
print(json.dumps({"processor": type(processor).__name__, "logits": logits, "mpcc imported": mpcc}))
"""


@pytest.mark.parametrize("arch", PATH_FAMILIES)
def test_export_reloads_without_mpcc_with_equal_logits(arch, sft_runs, tmp_path):
    out = tmp_path / "export"
    assert cli(["export", str(sft_runs[arch]), "--out", str(out)]) == 0
    assert_stock_folders(out)
    # a stock processor with a torchvision video processor loads only where torchvision is (see
    # test_stock_transformers.py); the others load in this very Python, without mpcc
    python = os.environ.get("MPCC_STOCK_PYTHON")
    if python is None and issubclass(FAMILIES[arch].processor, ImageOnly):
        pytest.skip("its stock processor needs torchvision: MPCC_STOCK_PYTHON (make stock-check) not set")
    image = tmp_path / "image.png"
    Image.effect_noise((300, 220), 64).convert("RGB").save(image)
    command = [
        python or sys.executable,
        "-c",
        STOCK_SCRIPT,
        str(out),
        str(image),
        str(tmp_path / "inputs.pt"),
    ]
    run = subprocess.run(command, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    stock = json.loads(run.stdout.splitlines()[-1])
    assert not stock["mpcc imported"] and stock["processor"] == FAMILIES[arch].processor.__name__
    model, processor = load_model(out, dtype="float32").eval(), load_processor(out)
    theirs, ours = torch.load(tmp_path / "inputs.pt"), _inputs(processor, Image.open(image))
    assert torch.equal(theirs["input_ids"], ours["input_ids"])
    # the weights as stock transformers loads them, on its own inputs (a stock Python with torchvision
    # resizes with it: pixels a rounding apart from mpcc's PIL processor's, test_stock_transformers.py)
    with torch.no_grad():
        logits = model(**theirs).logits[0, -1]
    torch.testing.assert_close(torch.tensor(stock["logits"]), logits, rtol=1e-5, atol=1e-5)


def test_gemma3_pan_and_scan_is_refused_for_grounding_at_start(tmp_path):
    """Pan-and-scan crops have no mapping to image regions: the evidence diagnostic refuses in one line."""
    model, processor = random_vlm("gemma3")
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    check_grounding(tmp_path)  # the tiny model: no pan-and-scan
    processor.image_processor.do_pan_and_scan = True
    processor.save_pretrained(tmp_path)
    with pytest.raises(
        ConfigError, match="^the evidence diagnostic cannot run: Gemma 3 pan-and-scan[^\\n]*$"
    ):
        check_grounding(tmp_path)


@pytest.mark.parametrize("arch", NEW_FAMILIES)
def test_the_measuring_pass_keeps_each_familys_logits(arch):
    """The evidence diagnostic's attention pass reproduces the model's own forward: Gemma 3's sliding window
    (made shorter than the prompt here) and its bidirectional attention inside the image block included."""
    model, processor = random_vlm(arch, text={"sliding_window": 16} if arch == "gemma3" else None)
    inputs = _inputs(processor, Image.effect_noise((300, 200), 64).convert("RGB"))
    length = inputs["input_ids"].shape[1]
    with torch.no_grad():
        reference = model.eval()(**inputs).logits
    measured = measure(model, inputs, torch.ones(1, 1, length), slice(0, length), resolve_layers(model, None))
    assert (measured.logits - reference).abs().max() < 1e-4
    assert measured.mass[0, 0] == pytest.approx(torch.ones(length), abs=1e-5)  # softmax sums to one


@pytest.mark.parametrize(
    ("arch", "patch", "named"),
    [("llava_onevision", 16, "LLaVA-OneVision"), ("internvl", 15, "InternVL"), ("idefics3", 13, "Idefics3")]
    + [("smolvlm", 13, "SmolVLM")],
)
def test_tiles_of_partial_patches_are_refused_for_grounding_at_start(arch, patch, named, tmp_path):
    """A tile that is not a whole number of patches (LLaVA-OneVision's and SmolVLM's real 384-pixel tiles
    of 14-pixel patches) leaves a strip of each tile unseen (the patch convolution's stride), so its cells
    are not a regular grid of the tile: the evidence diagnostic refuses in one line."""
    model, processor = random_vlm(arch)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    check_grounding(tmp_path)  # the tiny model: whole patches
    model.config.vision_config.patch_size = patch  # 56- or 112-pixel tiles
    model.config.save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=f"^the evidence diagnostic cannot run: {named} tiles[^\\n]*$"):
        check_grounding(tmp_path)


def test_internvl_tiles_that_disagree_with_the_image_size_are_refused():
    """InternVL's prompt does not name its tiles: they are recomputed from the image's size, and a size that
    tiles otherwise than the image tokens show is refused rather than mapped wrongly."""
    _, processor = random_vlm("internvl")
    image = Image.new("RGB", (300, 200))  # 2 x 2 tiles and the thumbnail
    inputs = _inputs(processor, image)
    assert len(_grids("internvl", processor, inputs, image)) == 5
    with pytest.raises(ValidationError, match="5 InternVL image blocks, but a 200x600 image tiles into 1x3"):
        FAMILIES["internvl"].token_grids(processor, {**inputs, "image_sizes": torch.tensor([[200, 600]])})
