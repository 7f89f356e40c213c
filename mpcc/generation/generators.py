"""Batched generation for evaluation: left-padded batches through HF `generate`, greedy by default; the
same prompts through vLLM's offline engine or a model served behind an OpenAI-compatible endpoint.

The MPCC authors' script generates one item at a time; batching the same model over the same items
is the harness's main speed lever (see benchmarks/eval_throughput.py).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict

import torch
from trl.data_utils import prepare_multimodal_messages

from mpcc.errors import ConfigError
from mpcc.families import family, use_speedup
from mpcc.families.layouts import PATCHES
from mpcc.generation.decoding import Decoding
from mpcc.generation.endpoint import Endpoint, EndpointConfig, Request
from mpcc.generation.image_features import ImageFeatureMemo
from mpcc.generation.image_inputs import ImageInputMemo
from mpcc.seeds import mix_seed

API_PREFIX = "openai:"  # `--model openai:NAME`: the model NAME served behind an endpoint
CHARS_PER_TOKEN = 32  # a served answer longer than this many characters per allowed token is an error


def served_name(model: str) -> str | None:
    """NAME of `openai:NAME` (a served model), else None (a local one)."""
    return model[len(API_PREFIX) :] if str(model).startswith(API_PREFIX) else None


def conversation(row: dict) -> list[dict]:
    """The row's chat with its image(s) put in the placeholder(s)."""
    images = row.get("images") or [row["image"]]
    return prepare_multimodal_messages([dict(m) for m in row["prompt"]], images=images)


def prompt_inputs(processor, rows: list[dict]):
    """The rows' chats with the generation prompt, tokenized with their images as one left-padded batch."""
    tokenizer = processor.tokenizer
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        return processor.apply_chat_template(
            [conversation(r) for r in rows],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            processor_kwargs={"padding": True},
        )
    finally:
        tokenizer.padding_side = side


@torch.inference_mode()
def generate(model, processor, rows: list[dict], decoding: Decoding) -> list[str]:
    """Completions (special tokens stripped) for a batch of rows, in order."""
    tokenizer = processor.tokenizer
    inputs = prompt_inputs(processor, rows).to(model.device)
    sampling = {"temperature": decoding.temperature, "top_p": decoding.top_p} if decoding.do_sample else {}
    ids = model.generate(
        **inputs,
        max_new_tokens=decoding.max_new_tokens,
        do_sample=decoding.do_sample,
        pad_token_id=tokenizer.pad_token_id,
        **sampling,
    )
    return processor.batch_decode(ids[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


class HFGenerator:
    """`generate` over a model loaded once, on the GPU when there is one. An item's rows share one image:
    with `reuse_images`, each is encoded once while it is among the last `MEMO_IMAGES` seen (the
    diagnostics' measuring passes on the same image reuse it too), and preprocessed once while among the
    last `INPUT_MEMO_IMAGES` (host memory: a batch's images, then CRM's teacher-forced pass over them)."""

    MEMO_IMAGES = 64
    INPUT_MEMO_IMAGES = 32

    def __init__(self, path: str, reuse_images: bool = True):
        from mpcc.models import best_device, load_model, load_processor

        self.model, self.processor = load_model(path).to(best_device()).eval(), load_processor(path)
        kind = self.model.config.model_type
        reuse_images = use_speedup(kind, "image_feature_memo", reuse_images)
        self.image_memo = ImageFeatureMemo(self.MEMO_IMAGES) if reuse_images else None
        preprocess_once = reuse_images and family(kind).image_layout is PATCHES  # the input memo's layout
        self.input_memo = ImageInputMemo(self.INPUT_MEMO_IMAGES) if preprocess_once else None
        if reuse_images:
            self.image_memo.attach(self.model)
        if preprocess_once:
            self.input_memo.attach(self.processor)

    def __call__(self, rows: list[dict], decoding: Decoding, seed: int) -> list[str]:
        torch.manual_seed(seed)
        return generate(self.model, self.processor, rows, decoding)


class VLLMGenerator:
    """The same prompts through vLLM's offline engine (`pip install vllm`; GPU only).

    The chat template is applied by our processor, so prompts are identical to the HF backend's;
    images go in as `multi_modal_data`. Greedy is temperature 0; sampling seeds each batch like the
    HF backend does, so resumed runs draw the same samples.
    """

    def __init__(self, path: str, max_images: int = 1, prefix_caching: bool = True):
        try:
            import vllm
        except ImportError as e:
            raise ConfigError("--backend vllm needs vLLM (pip install vllm, on a GPU machine)") from e
        from mpcc.models import load_processor

        self._vllm = vllm
        self.processor = load_processor(path)
        self.llm = vllm.LLM(
            model=str(path), limit_mm_per_prompt={"image": max_images}, enable_prefix_caching=prefix_caching
        )

    def __call__(self, rows: list[dict], decoding: Decoding, seed: int) -> list[str]:
        requests = [
            {
                "prompt": self.processor.apply_chat_template(
                    conversation(r), add_generation_prompt=True, tokenize=False
                ),
                "multi_modal_data": {"image": r.get("images") or [r["image"]]},
            }
            for r in rows
        ]
        params = self._vllm.SamplingParams(
            max_tokens=decoding.max_new_tokens,
            temperature=decoding.temperature if decoding.do_sample else 0.0,
            top_p=decoding.top_p if decoding.do_sample else 1.0,
            seed=seed if decoding.do_sample else None,
        )
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        return [o.outputs[0].text for o in outputs]


class APIGenerator:
    """The same prompts, images (PNG, lossless) and decoding sent to `model` behind an OpenAI-compatible
    endpoint, a batch's rows concurrently, with mpcc.generation.endpoint's retries, deadline and answer
    cap (`CHARS_PER_TOKEN` per allowed token). A row whose request failed comes back as None, its error
    counted in `errors`: the caller keeps the others and asks again in its next run. Each row of a batch
    has its own seed, from the batch's. With `top_logprobs`, `logprobs` holds the last call's per-row
    token log-probs (None where the server gave none)."""

    def __init__(self, url: str, model: str, config: EndpointConfig, top_logprobs: int | None = None):
        self.endpoint = Endpoint(url, Decoding(), model=model, top_logprobs=top_logprobs, **asdict(config))
        served = self.endpoint.served_models()
        if model not in served:
            raise ConfigError(f"{self.endpoint.base} does not serve {model!r} (it serves {served})")
        self.errors: Counter = Counter()
        self.logprobs: list[list[dict] | None] = []

    def __call__(self, rows: list[dict], decoding: Decoding, seed: int) -> list[str | None]:
        self.endpoint.decoding = decoding
        requests = [Request(i, conversation(r), None, mix_seed(seed, i)) for i, r in enumerate(rows)]
        cap = decoding.max_new_tokens * CHARS_PER_TOKEN
        replies = sorted(self.endpoint.run(requests, max_chars=cap), key=lambda reply: reply.request.key)
        self.errors.update(r.error for r in replies if r.error is not None)
        self.logprobs = [r.logprobs for r in replies]
        return [r.text for r in replies]
