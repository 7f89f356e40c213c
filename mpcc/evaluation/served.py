"""`mpcc eval --model openai:NAME --endpoint URL`: a model served behind an OpenAI-compatible endpoint
(vLLM, SGLang, a hosted API), evaluated with the prompts, images, parsing, metrics, report, resume and run
identity of a local one. What cannot run over an API is refused here, before anything is written.

A server gives text (and, when asked, the log-probabilities of the tokens it chose and their top
alternatives), never the model's attention or its logits on a completion it did not write. So the
answer-level diagnostics (blind, context, shape: the same questions on a changed image) run, and CRM's
regenerated contrast; `evidence` (attention) is refused, CRM's teacher-forced step deltas are left out
(null), and `entropy` runs when the server returns token log-probs (checked with one request at start).
"""

from __future__ import annotations

import logging
import os

from mpcc.errors import ConfigError
from mpcc.evaluation.config import EvalConfig
from mpcc.evaluation.grounding.entropy import SERVED_TOP
from mpcc.generation.decoding import Decoding
from mpcc.generation.endpoint import EndpointConfig, api_base, is_endpoint
from mpcc.generation.generators import API_PREFIX, APIGenerator, served_name

logger = logging.getLogger(__name__)

BASE_URL_VARIABLE = "OPENAI_BASE_URL"  # the OpenAI clients' own; the key is their OPENAI_API_KEY
NEEDS_WEIGHTS = {
    "evidence": "it measures the attention inside the model during its reasoning, and a served model "
    "gives text only (blind, context, shape, crm's regenerated contrast and entropy run over an API)",
}


def served_endpoint(model: str, endpoint: str | None, config: EvalConfig) -> str | None:
    """The base URL of a served `model` (openai:NAME), None for a local one, after refusing in one line
    what cannot run: a missing name or URL, --endpoint with a local model, another backend, a diagnostic
    that needs the weights."""
    name = served_name(model)
    if name is None:
        if endpoint is not None:
            raise ConfigError(f"--endpoint is for --model {API_PREFIX}NAME (a served model), not {model!r}")
        return None
    if not name:
        raise ConfigError(f"--model {API_PREFIX}NAME needs the served model's NAME")
    url = endpoint or os.environ.get(BASE_URL_VARIABLE)
    if not url:
        raise ConfigError(f"--model {model} needs --endpoint URL (or ${BASE_URL_VARIABLE})")
    if not is_endpoint(url):
        raise ConfigError(f"--endpoint {url!r}: expected an http(s)://HOST[:PORT]/v1 URL")
    if config.backend != "hf":
        raise ConfigError(f"--backend {config.backend} runs a local model; {model} runs where it is served")
    for diagnostic, why in NEEDS_WEIGHTS.items():
        if diagnostic in config.diagnostics:
            raise ConfigError(f"--diagnostics {diagnostic} cannot run on {model}: {why}")
    if "crm" in config.diagnostics:
        logger.warning(
            "crm on %s: the regenerated contrast only; the teacher-forced step deltas need the weights", model
        )
    return api_base(url)


def served_generator(model: str, url: str, rows: list[dict], client: EndpointConfig, config: EvalConfig):
    """The APIGenerator of `model` at `url` (refused when the server does not serve it). With the entropy
    diagnostic it asks for token log-probs, and one request of the first row checks they come back."""
    name = served_name(model)
    entropy = "entropy" in config.diagnostics
    generator = APIGenerator(url, name, client, top_logprobs=SERVED_TOP if entropy else None)
    if entropy:
        [text] = generator([rows[0]], Decoding(max_new_tokens=1), config.seed)
        if text is None:
            raise ConfigError(f"{url}: the first request to {name} failed: {next(iter(generator.errors))}")
        if not generator.logprobs[0]:
            raise ConfigError(
                f"--diagnostics entropy cannot run on {model}: {url} returned no token log-probs "
                "(asked with logprobs=true; vLLM, SGLang and OpenAI's API return them)"
            )
        generator.errors.clear()
    return generator
