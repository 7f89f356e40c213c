"""A minimal OpenAI-compatible chat-completions server for the tests: one local model behind
`GET /v1/models` and `POST /v1/chat/completions`, answered with mpcc's own generation (with `logprobs`,
each answer token's log-probability and its `top_logprobs` alternatives, as vLLM gives them); and a
proxy in front of it that fails, stalls, garbles or strips requests, for the endpoint tests.

The endpoint tests need a real model behind real HTTP; `transformers serve` changed under them between
minor releases (5.25 loads a video processor, which needs torchvision). This server depends only on what
the tests already use, and answers the request shape mpcc's client sends: a system turn, a user turn with
an image as a data URL and text, `max_tokens`, `temperature`, `top_p`, `seed`.

    python tests/openai_server.py MODEL_DIR --port PORT
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import io
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import torch
from PIL import Image

from mpcc.errors import ValidationError
from mpcc.evaluation.grounding.forcing import teacher_forced
from mpcc.generation.decoding import Decoding
from mpcc.generation.generators import HFGenerator

DATA_URL = "data:image/png;base64,"


def trl_messages(messages: list[dict]) -> tuple[list[dict], list]:
    """Chat-completions messages -> (TRL-style messages with image placeholders, the decoded images)."""
    out, images = [], []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        parts = []
        for part in content:
            if part["type"] == "image_url":
                url = part["image_url"]["url"]
                if not url.startswith(DATA_URL):
                    raise ValueError("only PNG data URLs are served")
                images.append(Image.open(io.BytesIO(base64.b64decode(url[len(DATA_URL) :]))).convert("RGB"))
                parts.append({"type": "image"})
            elif part["type"] == "text":
                parts.append({"type": "text", "text": part["text"]})
            else:
                raise ValueError(f"unsupported content part {part['type']!r}")
        out.append({"role": message["role"], "content": parts})
    return out, images


class QuietJsonHandler(BaseHTTPRequestHandler):
    """A handler that logs nothing and answers JSON bodies (the endpoint tests' stub servers use it too)."""

    def log_message(self, *args):
        pass

    def reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def reply_json(self, status: int, payload: dict) -> None:
        self.reply(status, json.dumps(payload).encode())


class _Handler(QuietJsonHandler):
    def do_GET(self):
        if self.path.rstrip("/") != "/v1/models":
            return self.reply_json(404, {"error": f"no route {self.path}"})
        return self.reply_json(
            200, {"object": "list", "data": [{"id": self.server.model, "object": "model"}]}
        )

    def do_POST(self):
        if self.path.rstrip("/") != "/v1/chat/completions":
            return self.reply_json(404, {"error": f"no route {self.path}"})
        try:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if body.get("model") != self.server.model:
                return self.reply_json(404, {"error": f"model {body.get('model')!r} is not served"})
            messages, images = trl_messages(body["messages"])
            temperature = float(body.get("temperature", 1.0))
            decoding = Decoding(
                max_new_tokens=int(body.get("max_tokens", 64)),
                do_sample=temperature > 0,
                temperature=temperature or 1.0,
                top_p=float(body.get("top_p", 1.0)),
            )
            if not images:
                raise ValueError("no image in the messages (the tiny model is served for image prompts)")
        except (ValueError, KeyError, TypeError) as e:
            return self.reply_json(400, {"error": f"bad request: {e}"})
        row = {"prompt": messages, "images": images}
        with self.server.lock:  # one model, one generation at a time
            [text] = self.server.generate([row], decoding, int(body.get("seed", 0)))
            logprobs = None
            if body.get("logprobs"):
                logprobs = {
                    "content": token_logprobs(self.server.generate, row, text, body.get("top_logprobs"))
                }
        return self.reply_json(
            200,
            {
                "id": f"chatcmpl-{time.monotonic_ns()}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.server.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": logprobs,
                        "finish_reason": "stop",
                    }
                ],
            },
        )


@torch.inference_mode()
def token_logprobs(generator: HFGenerator, row: dict, text: str, top: int | None) -> list[dict]:
    """`logprobs.content` of an answer: per token its text, log-probability and the `top` likeliest
    tokens' (from one teacher-forced forward over prompt + answer)."""
    try:
        inputs, prompt_len, offsets = teacher_forced(generator.processor, [row], text, generator.model.device)
    except ValidationError:  # an empty answer has no tokens
        return []
    scores = generator.model(**inputs).logits[0, prompt_len - 1 : -1].float().log_softmax(-1)
    ids = inputs["input_ids"][0, prompt_len:]
    tops = scores.topk(top or 0, dim=-1)
    decode = generator.processor.tokenizer.decode
    return [
        {
            "token": text[a:b],
            "logprob": scores[i, ids[i]].item(),
            "top_logprobs": [
                {"token": decode([j]), "logprob": v}
                for j, v in zip(tops.indices[i].tolist(), tops.values[i].tolist())
            ],
        }
        for i, (a, b) in enumerate(offsets)
    ]


class Proxy(ThreadingHTTPServer):
    """Forwards to an upstream server. With `faults`, the first time it sees a request body it takes the
    next of `actions` in turn: `fail` (500), `stall` (`stall` seconds, then nothing), `garbage` (200 with
    a body that is no JSON) or `forward`; a body seen again (a retry) is forwarded. `delay` slows every
    forwarded request; `strip` drops the `logprobs` of forwarded answers (a server that gives none).
    `bodies` and `keys` (the Authorization headers) record what it was sent."""

    daemon_threads = True

    def __init__(
        self, upstream: str, faults: bool = False, stall: float = 0.0, delay: float = 0.0,
        actions: tuple[str, ...] = ("fail", "stall", "forward"), strip: bool = False,
    ):  # fmt: skip
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream, self.faults, self.stall, self.delay = upstream, faults, stall, delay
        self.actions, self.strip = actions, strip
        self.seen: dict[str, int] = {}
        self.first: list[str] = []
        self.bodies: list[dict] = []
        self.keys: set[str | None] = set()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def decide(self, body: bytes, key: str | None) -> str:
        digest = hashlib.sha256(body).hexdigest()
        with self.lock:
            self.bodies.append(json.loads(body))
            self.keys.add(key)
            self.seen[digest] = self.seen.get(digest, 0) + 1
            if self.seen[digest] > 1 or not self.faults:
                return "forward"
            self.first.append(digest)
            return self.actions[(len(self.first) - 1) % len(self.actions)]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()


class _ProxyHandler(QuietJsonHandler):
    def do_GET(self):
        response = httpx.get(self.server.upstream + self.path, timeout=30)
        self.reply(response.status_code, response.content)

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        action = self.server.decide(body, self.headers.get("Authorization"))
        if action == "fail":
            return self.reply(500, b'{"error": "injected failure"}')
        if action == "garbage":
            return self.reply(200, b"<html>not json</html>")
        if action == "stall":
            time.sleep(self.server.stall)  # the client has timed out by now; it gets nothing
            return None
        time.sleep(self.server.delay)
        response = httpx.post(
            self.server.upstream + self.path,
            content=body,
            headers={"Content-Type": "application/json"},
            timeout=120,
        )
        content = response.content
        if self.server.strip and response.status_code == 200:
            answer = json.loads(content)
            for choice in answer["choices"]:
                choice.pop("logprobs", None)
            content = json.dumps(answer).encode()
        with contextlib.suppress(OSError):  # the client gave up (timeout) while the model answered
            self.reply(response.status_code, content)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a local model folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer((args.host, args.port), _Handler)
    server.daemon_threads = True
    server.model, server.lock = args.model, threading.Lock()
    server.generate = HFGenerator(args.model)
    print(f"serving {args.model} on http://{args.host}:{args.port}/v1", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
