"""Teacher backends: a local model through transformers (batched), or an OpenAI-compatible endpoint
(mpcc.generation.endpoint: concurrency, deadlines, retries, capped answers).

Both take requests lazily and yield replies as they finish, so the caller can save each reply at once
and a killed run loses only what was in flight; a request that fails comes back as an error, never as a
fake answer, and so does an answer longer than the caller's `max_chars`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

from mpcc.errors import ConfigError, MpccError
from mpcc.generation.decoding import Decoding
from mpcc.generation.endpoint import Endpoint, Reply, Request, is_endpoint, too_long

logger = logging.getLogger(__name__)


class TeacherError(MpccError):
    """The teacher answered none of a run's requests (endpoint down, wrong model name, ...)."""


# ---------------------------------------------------------------------------------------------- local


def _batches(items: Iterable, size: int) -> Iterator[list]:
    items = iter(items)
    while batch := list(islice(items, size)):
        yield batch


class LocalTeacher:
    """A vision-language checkpoint run with mpcc's batched, left-padded `generate` (GPU when present)."""

    def __init__(self, model: str, decoding: Decoding, batch_size: int = 8):
        from mpcc.generation.generators import HFGenerator
        from mpcc.models import resolve_model_path

        self.name = model
        self.decoding, self.batch_size = decoding, batch_size
        self._generate = HFGenerator(resolve_model_path(model))
        self.stats: Counter = Counter()

    def run(self, requests: Iterable[Request], max_chars: int | None = None) -> Iterator[Reply]:
        """Replies in request order; an answer longer than `max_chars` comes back as an error."""
        for batch in _batches(requests, self.batch_size):
            rows = [{"prompt": r.messages, "image": r.image} for r in batch]
            texts = self._generate(rows, self.decoding, batch[0].seed)
            self.stats["requests"] += len(batch)
            for request, text in zip(batch, texts):
                if max_chars is not None and len(text) > max_chars:
                    logger.warning("teacher request %s failed: %s", request.key, too_long(max_chars))
                    self.stats["too_long"] += 1
                    self.stats["failed"] += 1
                    yield Reply(request, None, too_long(max_chars))
                else:
                    yield Reply(request, text)


# ------------------------------------------------------------------------------------------- endpoint


class EndpointTeacher(Endpoint):
    """A teacher behind an OpenAI-compatible endpoint (mpcc.generation.endpoint); its key may be the
    teacher's own."""

    KEY_VARIABLES = ("MPCC_TEACHER_API_KEY", "OPENAI_API_KEY")
    MODEL_OPTION = "--teacher-model"


def make_teacher(
    spec: str,
    decoding: Decoding,
    model: str | None = None,
    batch_size: int = 8,
    **endpoint: Any,
) -> LocalTeacher | EndpointTeacher:
    """An http(s) URL -> EndpointTeacher (`model` and the `endpoint` options: concurrency, timeout,
    retries, backoff, rate_limit, api_key); anything else is a local checkpoint (path, hub name or
    tiny:<arch>) -> LocalTeacher generating `batch_size` rows at a time."""
    if is_endpoint(spec):
        return EndpointTeacher(spec, decoding, model=model, **endpoint)
    if model is not None:
        raise ConfigError("--teacher-model names an endpoint's model; a local --teacher is the model itself")
    return LocalTeacher(spec, decoding, batch_size=batch_size)
