"""A minimal OpenAI-compatible chat-completions server for the tests: one local model behind
`GET /v1/models` and `POST /v1/chat/completions`, answered with mpcc's own generation.

The endpoint tests need a real model behind real HTTP; `transformers serve` changed under them between
minor releases (5.25 loads a video processor, which needs torchvision). This server depends only on what
the tests already use, and answers the request shape mpcc's client sends: a system turn, a user turn with
an image as a data URL and text, `max_tokens`, `temperature`, `top_p`, `seed`.

    python tests/openai_server.py MODEL_DIR --port PORT
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

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
        return self.reply_json(
            200,
            {
                "id": f"chatcmpl-{time.monotonic_ns()}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.server.model,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                ],
            },
        )


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
