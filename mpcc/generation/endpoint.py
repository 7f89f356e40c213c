"""An OpenAI-compatible chat-completions client, shared by `mpcc annotate` (a teacher behind an endpoint)
and `mpcc eval --model openai:NAME` (a served model evaluated).

Requests are taken lazily and replies yielded as they finish, so the caller can save each reply at once
and a killed run loses only what was in flight. An endpoint (vLLM, SGLang, `transformers serve`, a hosted
API) gets bounded concurrency, a rate limit, a deadline per request (connecting, sending and the whole
response body together, so a server that trickles bytes cannot hold a request open) and retries with
exponential backoff on timeouts, connection errors, 429 and 5xx; a request that still fails comes back
as an error, never as a fake answer. An answer longer than the caller's `max_chars` is an error too, and
an endpoint's response is not read past a size derived from it. The API key is read from the
environment when the client is made and sent only in the Authorization header.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, ClassVar

from mpcc.errors import ConfigError
from mpcc.generation.decoding import Decoding
from mpcc.options import option
from mpcc.text.answers import THINK_CLOSE, THINK_OPEN

logger = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
# A response body is read up to this many bytes per allowed answer character (JSON may escape one
# character as a 12-byte surrogate pair \ud83d\ude00), plus room for the rest of the JSON.
BODY_BYTES_PER_CHAR, BODY_SLACK = 12, 64 * 1024
MODELS_BYTES = 16 * 2**20  # the list of served models, at most


class DeadlineExceeded(Exception):
    """A try that did not finish (connect, send, the whole response) within the request timeout."""


class AnswerTooLong(Exception):
    """An answer (or a response body) past the size allowed for one answer."""


@dataclass(frozen=True)
class EndpointConfig:
    """How an OpenAI-compatible endpoint is asked (not what: these never change an answer)."""

    options_group: ClassVar[str] = "endpoint"

    concurrency: int = option(8, "endpoint: requests in flight", minimum=1)
    timeout: float = option(
        120.0, "endpoint: seconds per request, all told (connecting, sending, the whole answer)", above=0
    )
    retries: int = option(5, "endpoint: more tries after a timeout, connection error, 429 or 5xx", minimum=0)
    backoff: float = option(1.0, "endpoint: first retry delay in seconds, doubling", minimum=0)
    rate_limit: float | None = option(
        None, "endpoint: requests per second at most (default: no limit)", above=0
    )


@dataclass(frozen=True)
class Request:
    key: Any  # the caller's: names the request in its reply and in log lines
    messages: list[dict]  # TRL-style chat; an {"type": "image"} part holds its image or takes `image`
    image: Any  # PIL image for the placeholders that hold none (None: every image part holds its own)
    seed: int


@dataclass(frozen=True)
class Reply:
    request: Request
    text: str | None  # the answer; None on error
    error: str | None = None
    logprobs: list[dict] | None = None  # the server's per-token `logprobs.content`, when asked and given


def is_endpoint(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


def too_long(max_chars: int | None) -> str:
    return f"answer longer than {max_chars} characters"


def one_line(text: str, limit: int = 200) -> str:
    """`text` with its whitespace runs as single spaces, cut to `limit` characters (error messages)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
    """A PNG data URL: lossless, so a served model sees the pixels a local one would."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def openai_messages(messages: list[dict], image=None) -> list[dict]:
    """TRL-style messages -> chat-completions messages: an image part becomes a PNG data URL of the image
    it holds (`prepare_multimodal_messages` puts it there), else of `image`; system and assistant turns
    become plain strings (what every server accepts)."""
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
            {"type": "image_url", "image_url": {"url": image_data_url(p.get("image") or image)}}
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
    if isinstance(thinking, str) and thinking.strip() and THINK_OPEN not in content:
        content = f"{THINK_OPEN}{thinking}{THINK_CLOSE}{content}"
    return content


def api_base(url: str) -> str:
    """The OpenAI-style base URL (…/v1): a bare http://host:port gets /v1 appended."""
    url = url.rstrip("/")
    return url + "/v1" if url.count("/") == 2 else url


class Endpoint:
    """Chat completions over HTTP with httpx: `concurrency` requests in flight, `rate_limit` starts per
    second, `timeout` seconds per try all told (connect, send, the whole response), `retries` more tries
    with backoff `backoff * 2**i` seconds (jittered, capped at 60 s, at least what a Retry-After header
    asks). With `top_logprobs` the server is asked for each answer token's log-probability and that many
    alternatives (`Reply.logprobs`). The API key is the first of KEY_VARIABLES set, unless given."""

    KEY_VARIABLES: ClassVar[tuple[str, ...]] = ("OPENAI_API_KEY",)
    MODEL_OPTION: ClassVar[str] = "--model openai:NAME"  # how a user names the model (error messages)

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
        top_logprobs: int | None = None,
    ):
        import httpx

        if concurrency < 1 or retries < 0 or timeout <= 0 or backoff < 0:
            raise ConfigError("need concurrency >= 1, retries >= 0, timeout > 0 and backoff >= 0")
        self.base = api_base(url)
        self.decoding, self.concurrency, self.retries, self.backoff = decoding, concurrency, retries, backoff
        key = api_key or next((os.environ[v] for v in self.KEY_VARIABLES if os.environ.get(v)), None)
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.timeout = timeout
        self._timeout = httpx.Timeout(timeout)  # per operation: a silent server is noticed within it
        self._httpx = httpx
        self._client: httpx.Client | None = None  # open while `run` runs
        self._limiter = RateLimiter(rate_limit)
        self._lock = threading.Lock()
        self.stats: Counter = Counter()
        self.top_logprobs = top_logprobs
        self.model = model or self._only_model()
        self.name = f"{self.model} @ {self.base}"

    def served_models(self) -> list[str]:
        """The names `GET /models` lists; a ConfigError naming the URL when it cannot be read."""
        try:
            with self._httpx.Client(headers=self._headers, timeout=self._timeout) as client:
                status, _, body = self._fetch(client, "GET", f"{self.base}/models", max_bytes=MODELS_BYTES)
            if status != 200:
                raise ValueError(f"HTTP {status}: {one_line(body.decode('utf-8', 'replace'))}")
            names = [m["id"] for m in json.loads(body)["data"]]
        except (self._httpx.HTTPError, DeadlineExceeded, AnswerTooLong, ValueError, KeyError, TypeError) as e:
            reason = f"no answer within {self.timeout:g} s" if isinstance(e, DeadlineExceeded) else e
            raise ConfigError(
                f"{self.base}/models: cannot list the served models ({reason}); pass {self.MODEL_OPTION}"
            ) from e
        return names

    def _only_model(self) -> str:
        """The model the server serves, when it serves exactly one (vLLM, `transformers serve MODEL`)."""
        names = self.served_models()
        if len(names) != 1:
            raise ConfigError(
                f"{self.base} serves {len(names)} models {names}; choose one with {self.MODEL_OPTION}"
            )
        return names[0]

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    def _body(self, request: Request) -> dict:
        d = self.decoding
        body = {
            "model": self.model,
            "messages": openai_messages(request.messages, request.image),
            "max_tokens": d.max_new_tokens,
            "temperature": d.temperature if d.do_sample else 0.0,
            "top_p": d.top_p if d.do_sample else 1.0,
            "seed": request.seed,
        }
        if self.top_logprobs is not None:
            body |= {"logprobs": True, "top_logprobs": self.top_logprobs}
        return body

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        delay = min(60.0, self.backoff * 2**attempt) * random.uniform(0.5, 1.0)
        try:
            return max(delay, min(60.0, float(retry_after))) if retry_after else delay
        except ValueError:
            return delay

    def _fetch(self, client, method: str, url: str, max_bytes: int | None = None, **kwargs) -> tuple:
        """One try: (status, headers, body), within `timeout` seconds from start to the body's last byte.

        httpx's timeouts bound each connect, write or read alone, so a server sending a byte now and then
        would keep a request open for ever; the try runs in a thread of its own and is given up at the
        deadline (DeadlineExceeded). That thread stops reading at its next chunk, or within `timeout` of
        a silent server, and closes the connection. A 200 body past `max_bytes` raises AnswerTooLong;
        another status's body is cut after its first BODY_SLACK bytes (the start of an error page)."""
        deadline = time.monotonic() + self.timeout
        future: Future = Future()

        def read() -> None:
            try:
                with client.stream(method, url, **kwargs) as response:
                    chunks, size = [], 0
                    for chunk in response.iter_bytes():
                        if time.monotonic() > deadline:
                            raise DeadlineExceeded
                        chunks.append(chunk)
                        size += len(chunk)
                        if response.status_code != 200 and size >= BODY_SLACK:
                            break
                        if max_bytes is not None and size > max_bytes:
                            raise AnswerTooLong(f"response body over {max_bytes} bytes")
                    result = response.status_code, response.headers, b"".join(chunks)
            except BaseException as e:  # handed to the waiting thread (or dropped, once it gave up)
                future.set_exception(e)
            else:
                future.set_result(result)

        threading.Thread(target=read, name="endpoint-request", daemon=True).start()
        if not wait([future], timeout=max(0.0, deadline - time.monotonic())).done:
            raise DeadlineExceeded
        return future.result()

    def complete(self, request: Request, max_chars: int | None = None) -> Reply:
        """One request with retries; the last error comes back in the reply when every try failed. An
        answer longer than `max_chars` fails the request (not retried: the same seed writes it again)."""
        body, error = self._body(request), "no try made"
        max_bytes = None if max_chars is None else max_chars * BODY_BYTES_PER_CHAR + BODY_SLACK
        for attempt in range(self.retries + 1):
            if attempt:
                self._count("retries")
            self._limiter.wait()
            self._count("requests")
            retry_after = None
            try:
                status, headers, content = self._fetch(
                    self._client, "POST", f"{self.base}/chat/completions", max_bytes, json=body
                )
                if status == 200:
                    choice = json.loads(content)["choices"][0]
                    text = message_text(choice["message"])
                    if max_chars is not None and len(text) > max_chars:
                        raise AnswerTooLong(f"{len(text)} characters")
                    return Reply(request, text, logprobs=(choice.get("logprobs") or {}).get("content"))
                error = f"HTTP {status}: {one_line(content.decode('utf-8', 'replace'))}"
                self._count(f"http_{status}")
                if status not in RETRY_STATUS:
                    break
                retry_after = headers.get("retry-after")
            except AnswerTooLong as e:
                error = f"{too_long(max_chars)} ({e})"
                self._count("too_long")
                break
            except DeadlineExceeded:
                error = f"timeout (no complete response within {self.timeout:g} s)"
                self._count("timeouts")
            except self._httpx.TimeoutException as e:
                error = f"timeout ({type(e).__name__})"
                self._count("timeouts")
            except self._httpx.TransportError as e:
                error = f"connection error ({type(e).__name__}: {one_line(str(e))})"
                self._count("connection_errors")
            except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
                error = f"malformed response ({type(e).__name__}: {one_line(str(e))})"
                self._count("malformed")
            if attempt < self.retries:
                delay = self._delay(attempt, retry_after)
                logger.debug("request %s failed (%s); retrying in %.1f s", request.key, error, delay)
                time.sleep(delay)
        logger.warning("request %s failed after %d tries: %s", request.key, attempt + 1, error)
        self._count("failed")
        return Reply(request, None, error)

    def run(self, requests: Iterable[Request], max_chars: int | None = None) -> Iterator[Reply]:
        """Replies in completion order, with at most 2 x `concurrency` requests prepared at a time; an
        answer longer than `max_chars` comes back as an error."""
        requests = iter(requests)
        # `concurrency` workers bound the requests in flight; the pool is not capped as well, so the
        # connection of a try given up at its deadline (its thread closes it at the next chunk, or after
        # `timeout` of silence) never holds up a new one.
        limits = self._httpx.Limits(max_connections=None, max_keepalive_connections=self.concurrency)
        with (
            self._httpx.Client(headers=self._headers, timeout=self._timeout, limits=limits) as self._client,
            ThreadPoolExecutor(self.concurrency, thread_name_prefix="endpoint") as pool,
        ):
            pending: set = set()
            try:
                while True:
                    while (
                        len(pending) < 2 * self.concurrency and (request := next(requests, None)) is not None
                    ):
                        pending.add(pool.submit(self.complete, request, max_chars))
                    if not pending:
                        return
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        yield future.result()
            finally:  # stopped early (Ctrl-C, an error downstream): drop what has not started
                for future in pending:
                    future.cancel()
