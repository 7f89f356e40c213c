"""The vLLM backend's adapter: what it sends to vLLM and how it reads the answers back.

vLLM cannot run on these CPU machines, so a stand-in module records the calls; it checks our side
of the contract (prompts identical to the HF backend's, images as multi_modal_data, greedy as
temperature 0, per-batch sampling seeds), not vLLM itself.
"""

from __future__ import annotations

import json
import sys
import types

import pytest

from mpcc.cli import main
from mpcc.evaluation.config import EvalConfig
from mpcc.evaluation.harness import eval_rows
from mpcc.generation.decoding import Decoding
from mpcc.generation.generators import VLLMGenerator, conversation
from mpcc.models import load_processor, resolve_model_path


class _Output:
    def __init__(self, text):
        self.outputs = [types.SimpleNamespace(text=text)]


def _eval(data, out, *options) -> int:
    return main(["eval", "--model", "tiny:qwen2_5_vl", "--data", str(data), "--out", str(out), *options])


@pytest.fixture
def fake_vllm(monkeypatch):
    calls = {"init": [], "generate": []}

    class LLM:
        def __init__(self, **kwargs):
            calls["init"].append(kwargs)

        def generate(self, requests, params, use_tqdm=True):
            calls["generate"].append((requests, params))
            return [_Output("<think>x</think><answer>A</answer>") for _ in requests]

    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = LLM, lambda **kw: kw
    monkeypatch.setitem(sys.modules, "vllm", module)
    return calls


def test_prompts_images_and_decoding(fake_vllm, tiny_builds):
    rows = [row for _, row in eval_rows(tiny_builds["eval"], EvalConfig(formats=("mc4",), limit=3))]
    path = resolve_model_path("tiny:qwen2_5_vl")
    generator = VLLMGenerator(path)
    texts = generator(rows, Decoding(max_new_tokens=12), seed=7)
    assert texts == ["<think>x</think><answer>A</answer>"] * 3
    assert fake_vllm["init"] == [
        {"model": str(path), "limit_mm_per_prompt": {"image": 1}, "enable_prefix_caching": True}
    ]
    requests, params = fake_vllm["generate"][0]
    processor = load_processor(path)
    for request, row in zip(requests, rows):
        expected = processor.apply_chat_template(
            conversation(row), add_generation_prompt=True, tokenize=False
        )
        assert request["prompt"] == expected and "<|image_pad|>" in expected
        assert request["multi_modal_data"]["image"] == [row["image"]]
    assert params == {"max_tokens": 12, "temperature": 0.0, "top_p": 1.0, "seed": None}
    generator(rows, Decoding(max_new_tokens=12, do_sample=True, temperature=0.7, top_p=0.9), seed=7)
    assert fake_vllm["generate"][1][1] == {"max_tokens": 12, "temperature": 0.7, "top_p": 0.9, "seed": 7}


def test_mpcc_eval_with_the_vllm_backend(fake_vllm, tiny_builds, tmp_path):
    out = tmp_path / "run"
    args = ["--limit", "4", "--formats", "mc4", "--backend", "vllm"]
    assert _eval(tiny_builds["eval"], out, *args) == 0
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 4 and all(p["parsed"] == "A" and p["format_ok"] for p in predictions)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(sum(p["correct"] for p in predictions) / 4)


def test_vllm_backend_without_vllm_is_a_clear_error(monkeypatch, tiny_builds, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import fails
    out = tmp_path / "run"
    args = ["--limit", "1", "--formats", "mc4", "--backend", "vllm"]
    assert _eval(tiny_builds["eval"], out, *args) == 2
    assert "needs vLLM" in capsys.readouterr().err
