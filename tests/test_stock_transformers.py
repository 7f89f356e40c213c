"""What mpcc writes loads in a plain transformers + torchvision install that has never seen mpcc.

These machines cannot have torchvision beside the project's torch, so the check runs in a second Python
named by $MPCC_STOCK_PYTHON, with stock transformers and torchvision and without mpcc; without it the
tests skip with the reason. `make stock-check` builds that environment (a CUDA build of torch 2.14.1,
about 5.5 GB, from this machine's wheel files) and runs them.

In it, for tiny models of every family and for an exported training checkpoint: stock `AutoProcessor`
gives the stock processor class with its video processor, processor outputs equal mpcc's, stock
`AutoModelForImageTextToText` gives mpcc's logits, and the stock processor re-saves the same files.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image

from mpcc.cli import main as cli
from mpcc.families import FAMILIES
from mpcc.families.image_only import ImageOnly
from mpcc.models import build_tiny_model, load_model, load_processor
from mpcc.train import main as train

# The families whose stock processor has a torchvision video processor; the others: tests/test_families.py
VIDEO_ARCHS = tuple(f.name for f in FAMILIES.values() if issubclass(f.processor, ImageOnly))
STOCK_PYTHON = os.environ.get("MPCC_STOCK_PYTHON")
pytestmark = pytest.mark.skipif(
    not STOCK_PYTHON, reason="MPCC_STOCK_PYTHON (a Python with stock transformers + torchvision) not set"
)
ROOT = Path(__file__).resolve().parents[1]

# Runs in the stock Python: loads the folder as any user would and writes what it got.
STOCK_SCRIPT = """
import json, sys
from pathlib import Path
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

folder, work = Path(sys.argv[1]), Path(sys.argv[2])
processor = AutoProcessor.from_pretrained(folder)
messages = json.loads((work / "messages.json").read_text())
messages[1]["content"][0]["image"] = Image.open(work / "image.png")
inputs = processor.apply_chat_template(
    messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
)
out = {
    "processor": type(processor).__name__,
    "video_processor": type(getattr(processor, "video_processor", None)).__name__,
    "mpcc imported": any(m.split(".")[0] == "mpcc" for m in sys.modules),
}
if (folder / "config.json").is_file():
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        out["logits"] = model(**inputs).logits[0, -1].tolist()
torch.save(dict(inputs), work / "stock_inputs.pt")
processor.save_pretrained(work / "resaved")
print(json.dumps(out))
"""


def _messages() -> list[dict]:
    return [
        {"role": "system", "content": [{"type": "text", "text": "You are a careful visual reasoner."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which object is hidden?"}]},
    ]


def _check_stock_loading(folder: Path, work: Path) -> None:
    work.mkdir(parents=True)
    image = Image.effect_noise((300, 220), 64).convert("RGB")
    image.save(work / "image.png")
    (work / "messages.json").write_text(json.dumps(_messages()))
    command = [STOCK_PYTHON, "-c", STOCK_SCRIPT, str(folder), str(work)]
    run = subprocess.run(command, capture_output=True, text=True, cwd=work, env={"PATH": os.environ["PATH"]})
    assert run.returncode == 0, run.stderr[-3000:]
    stock = json.loads(run.stdout.splitlines()[-1])
    named = json.loads((folder / "processor_config.json").read_text())["processor_class"]
    assert stock["processor"] == named and stock["processor"].endswith("Processor")
    assert stock["video_processor"].endswith("VideoProcessor") and not stock["mpcc imported"]

    processor = load_processor(folder)
    messages = _messages()
    messages[1]["content"][0]["image"] = Image.open(work / "image.png")
    ours = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    theirs = torch.load(work / "stock_inputs.pt")
    assert ours.keys() == theirs.keys()
    for key in theirs.keys() - {"pixel_values"}:  # token ids, image grids or sizes: equal
        assert torch.equal(ours[key], theirs[key]), key
    # torchvision's resize (stock) vs PIL's (mpcc without torchvision): the same image, rounding apart
    torch.testing.assert_close(ours["pixel_values"], theirs["pixel_values"], rtol=0, atol=0.05)
    if "logits" in stock:
        model = load_model(folder, dtype="float32").eval()
        with torch.no_grad():
            logits = model(**theirs).logits[0, -1]
        torch.testing.assert_close(torch.tensor(stock["logits"]), logits, rtol=1e-4, atol=1e-4)

    # Loaded from the folder and saved again, the stock processor and mpcc's write the same files; only
    # the video processor gains the defaults mpcc leaves to it (mpcc writes the keys it shares with the
    # image processor, without torchvision to fill in the rest).
    processor.save_pretrained(work / "ours")
    for name in ("tokenizer_config.json", "tokenizer.json", "chat_template.jinja"):
        assert (work / "resaved" / name).read_text() == (work / "ours" / name).read_text(), name
    ours, again = (json.loads((work / d / "processor_config.json").read_text()) for d in ("ours", "resaved"))
    video, stock_video = ours.pop("video_processor"), again.pop("video_processor")
    assert ours == again and video.items() <= stock_video.items()


@pytest.mark.parametrize("arch", VIDEO_ARCHS)
def test_tiny_models_load_with_stock_transformers(arch, tmp_path):
    _check_stock_loading(build_tiny_model(arch, tmp_path / "model"), tmp_path / "stock")


def test_export_loads_with_stock_transformers(tmp_path, monkeypatch):
    monkeypatch.setenv("MPCC_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    recipe = str(ROOT / "recipes" / "tiny" / "sft.yaml")
    assert train([recipe, "--output_dir", str(run), "--max_steps", "1", "--save_steps", "1"]) == 0
    assert cli(["export", str(run / "checkpoint-1"), "--out", str(tmp_path / "export")]) == 0
    _check_stock_loading(tmp_path / "export", tmp_path / "stock")
