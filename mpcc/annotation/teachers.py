"""Teacher backends: a local model through transformers (batched), or an OpenAI-compatible endpoint.

Both take requests lazily and yield replies as they finish, so the caller can save each reply at once
and a killed run loses only what was in flight. An endpoint (vLLM, `transformers serve`, a hosted API)
gets bounded concurrency, a rate limit, a timeout per request and retries with exponential backoff on
timeouts, connection errors, 429 and 5xx; a request that still fails comes back as an error, never
as a fake answer.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from itertools import islice
from typing import Any

from mpcc.errors import ConfigError
from mpcc.evaluation.config import Decoding

logger = logging.getLogger(__name__)

API_KEY_VARIABLES = ("MPCC_TEACHER_API_KEY", "OPENAI_API_KEY")
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Request:
    key: tuple[int, int]  # (row index, attempt)
    messages: list[dict]  # TRL-style chat with an {"type": "image"} placeholder
    image: Any  # PIL image for the placeholder
    seed: int


@dataclass(frozen=True)
class Reply:
    request: Request
    text: str | None  # the teacher's answer; None on error
    error: str | None = None


def is_endpoint(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


# ---------------------------------------------------------------------------------------------- local


def _batches(items: Iterable, size: int) -> Iterator[list]:
    items = iter(items)
    while batch := list(islice(items, size)):
        yield batch


class LocalTeacher:
    """A vision-language checkpoint run with mpcc's batched, left-padded `generate` (GPU when present)."""

    def __init__(self, model: str, decoding: Decoding, batch_size: int = 8):
        from mpcc.evaluation.generation import HFGenerator
        from mpcc.models import resolve_model_path

        self.name = model
        self.decoding, self.batch_size = decoding, batch_size
        self._generate = HFGenerator(resolve_model_path(model))
        self.stats: Counter = Counter()

    def run(self, requests: Iterable[Request]) -> Iterator[Reply]:
        for batch in _batches(requests, self.batch_size):
            rows = [{"prompt": r.messages, "image": r.image} for r in batch]
            texts = self._generate(rows, self.decoding, batch[0].seed)
            self.stats["requests"] += len(batch)
            yield from (Reply(r, text) for r, text in zip(batch, texts))


# ------------------------------------------------------------------------------------------- endpoint


class RateLimiter:
    """At most `per_second` starts per second across threads (evenly spaced); None: no limit."""

    def __init__(self, per_second: float | None):
        if per_second is not None and per_second <= 0:
            raise ConfigError(f"rate limit must be > 0 requests per second, got {per_second}")
        self.interval = 1.0 / per_second if per_second else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        time.sleep(max(0.0, start - now))


def image_data_url(image) -> str:
    """A PNG data URL: lossless, so the hidden pixels reach the teacher exactly as the student sees them."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def openai_messages(messages: list[dict], image) -> list[dict]:
    """TRL-style messages -> chat-completions messages: the image placeholder becomes a data URL; system
    and assistant turns become plain strings (what every server accepts)."""
    out = []
    for message in messages:
        parts = message["content"]
        if isinstance(parts, str):
            out.append({"role": message["role"], "content": parts})
            continue
        if message["role"] != "user":
            out.append({"role": message["role"], "content": "".join(p.get("text") or "" for p in parts)})
            continue
        content = [
            {"type": "image_url", "image_url": {"url": image_data_url(image)}}
            if p.get("type") == "image"
            else {"type": "text", "text": p.get("text") or ""}
            for p in parts
        ]
        out.append({"role": "user", "content": content})
    return out


def message_text(message: dict) -> str:
    """The answer text of a chat-completions message. Servers that split reasoning out (vLLM's
    reasoning parsers: `reasoning_content`, or `reasoning`) get it put back inside <think></think>."""
    content = message.get("content") or ""
    if isinstance(content, list):
        content = "".join(p.get("text") or "" for p in content if isinstance(p, dict))
    thinking = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(thinking, str) and thinking.strip() and "<think>" not in content:
        content = f"<think>{thinking}</think>{content}"
    return content


def api_base(url: str) -> str:
    """The OpenAI-style base URL (…/v1): a bare http://host:port gets /v1 appended."""
    url = url.rstrip("/")
    return url + "/v1" if url.count("/") == 2 else url


class EndpointTeacher:
    """Chat completions over HTTP with httpx: `concurrency` requests in flight, `rate_limit` starts per
    second, `timeout` seconds per request, `retries` more tries with backoff `backoff * 2**i` seconds
    (jittered, capped at 60 s, at least what a Retry-After header asks)."""

    def __init__(
        self,
        url: str,
        decoding: Decoding,
        model: str | None = None,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout: float = 120.0,
        retries: int = 5,
        backoff: float = 1.0,
        rate_limit: float | None = None,
    ):
        import httpx

        if concurrency < 1 or retries < 0 or timeout <= 0 or backoff < 0:
            raise ConfigError("need concurrency >= 1, retries >= 0, timeout > 0 and backoff >= 0")
        self.base = api_base(url)
        self.decoding, self.concurrency, self.retries, self.backoff = decoding, concurrency, retries, backoff
        key = api_key or next((os.environ[v] for v in API_KEY_VARIABLES if os.environ.get(v)), None)
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._timeout = httpx.Timeout(timeout)
        self._httpx = httpx
        self._client: httpx.Client | None = None  # open while `run` runs
        self._limiter = RateLimiter(rate_limit)
        self._lock = threading.Lock()
        self.stats: Counter = Counter()
        self.model = model or self._only_model()
        self.name = f"{self.model} @ {self.base}"

    def _only_model(self) -> str:
        """The model the server serves, when it serves exactly one (vLLM, `transformers serve MODEL`)."""
        try:
            response = self._httpx.get(f"{self.base}/models", headers=self._headers, timeout=self._timeout)
            response.raise_for_status()
            names = [m["id"] for m in response.json()["data"]]
        except (self._httpx.HTTPError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(
                f"{self.base}/models: cannot list the served models ({e}); pass --teacher-model"
            ) from e
        if len(names) != 1:
            raise ConfigError(
                f"{self.base} serves {len(names)} models {names}; choose one with --teacher-model"
            )
        return names[0]

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    def _body(self, request: Request) -> dict:
        d = self.decoding
        return {
            "model": self.model,
            "messages": openai_messages(request.messages, request.image),
            "max_tokens": d.max_new_tokens,
            "temperature": d.temperature if d.do_sample else 0.0,
            "top_p": d.top_p if d.do_sample else 1.0,
            "seed": request.seed,
        }

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        delay = min(60.0, self.backoff * 2**attempt) * random.uniform(0.5, 1.0)
        try:
            return max(delay, min(60.0, float(retry_after))) if retry_after else delay
        except ValueError:
            return delay

    def complete(self, request: Request) -> Reply:
        """One request with retries; the last error comes back in the reply when every try failed."""
        body, error = self._body(request), "no try made"
        for attempt in range(self.retries + 1):
            if attempt:
                self._count("retries")
            self._limiter.wait()
            self._count("requests")
            retry_after = None
            try:
                response = self._client.post(f"{self.base}/chat/completions", json=body)
                if response.status_code == 200:
                    return Reply(request, message_text(response.json()["choices"][0]["message"]))
                error = f"HTTP {response.status_code}: {response.text[:200]}"
                self._count(f"http_{response.status_code}")
                if response.status_code not in RETRY_STATUS:
                    break
                retry_after = response.headers.get("retry-after")
            except self._httpx.TimeoutException as e:
                error = f"timeout ({type(e).__name__})"
                self._count("timeouts")
            except self._httpx.TransportError as e:
                error = f"connection error ({type(e).__name__}: {e})"
                self._count("connection_errors")
            except (ValueError, KeyError, IndexError, TypeError) as e:
                error = f"malformed response ({type(e).__name__}: {e})"
                self._count("malformed")
            if attempt < self.retries:
                delay = self._delay(attempt, retry_after)
                logger.debug("teacher request %s failed (%s); retrying in %.1f s", request.key, error, delay)
                time.sleep(delay)
        logger.warning("teacher request %s failed after %d tries: %s", request.key, attempt + 1, error)
        self._count("failed")
        return Reply(request, None, error)

    def run(self, requests: Iterable[Request]) -> Iterator[Reply]:
        """Replies in completion order, with at most 2 x `concurrency` requests prepared at a time."""
        requests = iter(requests)
        limits = self._httpx.Limits(max_connections=self.concurrency)
        with (
            self._httpx.Client(headers=self._headers, timeout=self._timeout, limits=limits) as self._client,
            ThreadPoolExecutor(self.concurrency, thread_name_prefix="teacher") as pool,
        ):
            pending: set = set()
            try:
                while True:
                    while (
                        len(pending) < 2 * self.concurrency and (request := next(requests, None)) is not None
                    ):
                        pending.add(pool.submit(self.complete, request))
                    if not pending:
                        return
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        yield future.result()
            finally:  # stopped early (Ctrl-C, an error downstream): drop what has not started
                for future in pending:
                    future.cancel()


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
