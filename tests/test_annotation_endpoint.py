"""The endpoint teacher against real HTTP servers on loopback: the tiny model served over the OpenAI API
(tests/openai_server.py) behind a proxy that fails or stalls requests, a killed CLI run that resumes,
servers that always fail (teacher errors are reported, not saved, and retried by the next run; a run with
no answer at all is an error), servers that trickle bytes past the timeout, and answers too long to keep."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from openai_server import Proxy, QuietJsonHandler
from PIL import Image

from mpcc.annotation.annotate import annotate, request_seed
from mpcc.annotation.config import AnnotateConfig
from mpcc.annotation.store import PROGRESS_FILE
from mpcc.annotation.teachers import EndpointTeacher, TeacherError
from mpcc.annotation.verify import verify
from mpcc.cli import main
from mpcc.data.render import load_dataset
from mpcc.generation.decoding import Decoding
from mpcc.generation.endpoint import RateLimiter, Request

DECODING = Decoding(max_new_tokens=16, do_sample=True)


def _rows(path: Path, limit: int) -> list[dict]:
    data = load_dataset(path)
    return [data[i] for i in range(limit)]


def _progress(work: Path) -> list[dict]:
    return [json.loads(line) for line in _saved(work).splitlines()]


def _saved(work: Path) -> str:
    """The progress log's complete lines (a line being written, or cut by a kill, is not one yet)."""
    file = work / PROGRESS_FILE
    text = file.read_text() if file.is_file() else ""
    return text[: text.rfind("\n") + 1]


def test_retries_and_timeouts_against_a_failing_stalling_server(served, tiny_builds, tmp_path):
    """9 rows through a proxy that fails 3 first requests with 500 and stalls 3 past the timeout:
    every row gets exactly one answer, none is lost or duplicated, images arrive pixel-exact."""
    with Proxy(served["url"], faults=True, stall=4.0) as proxy:
        teacher = EndpointTeacher(proxy.url, DECODING, concurrency=3, timeout=3.0, retries=4, backoff=0.05)
        assert teacher.model == served["model"]  # the server's only model, from /v1/models
        start = time.monotonic()
        result = annotate(tiny_builds["train"], tmp_path / "out", teacher, AnnotateConfig(limit=9))
        elapsed = time.monotonic() - start
    print(f"annotate via a flaky server: 9 rows in {elapsed:.1f} s; {dict(teacher.stats)}")
    stats = teacher.stats
    assert stats["http_500"] == 3 and stats["timeouts"] >= 3 and stats["retries"] >= 6 and not stats["failed"]
    assert len(proxy.first) == 9  # each row's request was new to the proxy once
    rows = _rows(tiny_builds["train"], 9)
    lines = _progress(result.work_dir)
    assert sorted(r["ann_id"] for r in lines) == sorted(r["ann_id"] for r in rows)  # each row once
    assert result.counts["rows"] == 9 and result.new_answers == 9

    by_seed = {request_seed(0, r["ann_id"], 1): r for r in rows}
    for body in proxy.bodies:
        row = by_seed[body["seed"]]
        image_part, text_part = body["messages"][1]["content"]
        png = base64.b64decode(image_part["image_url"]["url"].removeprefix("data:image/png;base64,"))
        sent = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        assert np.array_equal(sent, np.asarray(row["image"].convert("RGB")))  # the masked image, exactly
        assert f"The hidden object is: {row['solution']}." in text_part["text"]
        assert body["model"] == served["model"] and body["max_tokens"] == DECODING.max_new_tokens

    data = load_dataset(tmp_path / "out")
    assert data["ann_id"] == [r["ann_id"] for r in rows]
    assert set(data["reasoning_teacher"]) == {f"{served['model']} @ {proxy.url}"}
    for output, solution, verified, rejection in zip(
        data["teacher_output"], data["solution"], data["reasoning_verified"], data["reasoning_rejection"]
    ):
        verdict = verify(output, solution)
        assert (verified, rejection) == (verdict.ok, verdict.reason)


def test_a_killed_run_resumes_with_every_row_exactly_once(served, tiny_builds, tmp_path):
    """SIGKILL the CLI mid-run: no output appears; the re-run asks only for the missing rows."""
    out, limit = tmp_path / "out", 16
    work = tmp_path / "out.annotate"
    with Proxy(served["url"], delay=0.4) as proxy:
        command = [
            sys.executable,
            "-m",
            "mpcc",
            "annotate",
            str(tiny_builds["train"]),
            "--teacher",
            proxy.url,
            "--out",
            str(out),
            "--limit",
            str(limit),
            "--concurrency",
            "2",
            "--max-new-tokens",
            "8",
        ]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while _saved(work).count("\n") < 4:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "no progress within 120 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        before = _saved(work)
        done = before.count("\n")
        assert 4 <= done < limit and not out.exists()  # killed mid-run: no partial dataset

        proxy.delay = 0.0
        start = time.monotonic()
        rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
        elapsed = time.monotonic() - start
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    print(f"killed after {done} of {limit} rows; the re-run took {elapsed:.1f} s")
    assert f"({limit - done} new;" in rerun.stdout
    after = _saved(work)
    assert (
        after.startswith(before) and after == (work / PROGRESS_FILE).read_text()
    )  # what the killed run saved was kept, not asked again
    ann_ids = [r["ann_id"] for r in _rows(tiny_builds["train"], limit)]
    assert sorted(r["ann_id"] for r in _progress(work)) == sorted(ann_ids)  # every row exactly once
    assert load_dataset(out)["ann_id"] == ann_ids


class _Canned(QuietJsonHandler):
    """A stand-in endpoint: `status` for every request (500 for the seeds in `fail`), or (200) a trace
    that names the answer the guided prompt states, so the endpoint path can keep traces too, padded to
    `huge` characters for the seeds in `padded`."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.seen.append((self.headers.get("Authorization"), body))
        status = 500 if body["seed"] in getattr(self.server, "fail", ()) else self.server.status
        if status != 200:
            payload = b'{"error": "down"}'
        else:
            text = body["messages"][1]["content"][1]["text"]
            name = re.search(r"The hidden object is: (.+?)\.\n", text).group(1)
            think = f"Look at what surrounds the mask. It suggests a {name}."
            if body["seed"] in getattr(self.server, "padded", ()):
                think = "Look. " * (self.server.huge // 6) + think
            answer = f"<think> {think}</think><answer>{name}</answer>"
            payload = json.dumps(
                {"choices": [{"message": {"role": "assistant", "content": answer}}]}
            ).encode()
        self.reply(status, payload)


@contextlib.contextmanager
def _serving(handler, **attributes):
    """A stub endpoint on loopback: (server, its base URL); `attributes` are set on the server."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.seen, server.stopping = [], threading.Event()
    for name, value in attributes.items():
        setattr(server, name, value)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()


def test_teacher_errors_are_reported_not_saved_and_retried(tiny_builds, tmp_path, monkeypatch):
    monkeypatch.setenv("MPCC_TEACHER_API_KEY", "secret")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Canned)
    server.seen, server.status = [], 500
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url, out, config = (
        f"http://127.0.0.1:{server.server_address[1]}",
        tmp_path / "out",
        AnnotateConfig(limit=2),
    )
    work = tmp_path / "out.annotate"
    try:
        teacher = EndpointTeacher(url, DECODING, model="m", retries=2, backoff=0.0)
        with pytest.raises(TeacherError, match=r"all 2 requests .* \(2 of 2\): HTTP 500: \{\"error\""):
            annotate(tiny_builds["train"], out, teacher, config)  # no answer at all: an error, no output
        assert (
            teacher.stats["requests"] == 6 and teacher.stats["http_500"] == 6 and teacher.stats["failed"] == 2
        )
        assert not out.exists() and _progress(work) == []  # errors are not answers: the next run asks again
        assert {auth for auth, _ in server.seen} == {"Bearer secret"}

        server.status = 400  # not worth retrying
        teacher = EndpointTeacher(url, DECODING, model="m", retries=2, backoff=0.0)
        with pytest.raises(TeacherError, match="HTTP 400"):
            annotate(tiny_builds["train"], out, teacher, config)
        assert teacher.stats["requests"] == 2 and teacher.stats["http_400"] == 2

        second = _rows(tiny_builds["train"], 2)[1]["ann_id"]
        server.status, server.fail = 200, {request_seed(0, second, 1)}
        teacher = EndpointTeacher(url, DECODING, model="m", retries=1, backoff=0.0)
        result = annotate(tiny_builds["train"], out, teacher, config)  # some answers: output and a warning
        assert result.counts == {"rows": 2, "kept": 1, "rejected": {"teacher_error": 1}}
        assert result.new_answers == 1 and teacher.stats["failed"] == 1
        assert result.teacher_errors == {'HTTP 500: {"error": "down"}': 1}
        assert load_dataset(out)["reasoning_rejection"] == [None, "teacher_error"]

        server.status = 500  # this run's one request fails: an error, the output from saved answers
        teacher = EndpointTeacher(url, DECODING, model="m", retries=0)
        with pytest.raises(TeacherError, match=r"all 1 requests .* wrote .* from the 1 answers saved before"):
            annotate(tiny_builds["train"], out, teacher, config, overwrite=True)
        assert load_dataset(out)["reasoning_rejection"] == [None, "teacher_error"]
        server.fail = set()

        server.status = 200
        teacher = EndpointTeacher(url, DECODING, model="m")
        result = annotate(tiny_builds["train"], out, teacher, config, overwrite=True)
        assert result.counts == {"rows": 2, "kept": 2, "rejected": {}} and result.new_answers == 1
        data = load_dataset(out)
        assert all(data["reasoning_verified"]) and data["reasoning_attempts"] == [1, 1]
        assert (
            data["reasoning"][0] == f"Look at what surrounds the mask. It suggests a {data['solution'][0]}."
        )
        assert set(data["reasoning_teacher"]) == {f"m @ {url}/v1"}
        # saved answers are judged again, by the bounds of the run that writes the dataset
        short = annotate(
            tiny_builds["train"], out, teacher, AnnotateConfig(limit=2, max_words=3), overwrite=True
        )
        assert short.new_answers == 0 and short.counts["rejected"] == {"too_long": 2}
        assert load_dataset(out)["reasoning"] == [None, None]
    finally:
        server.shutdown()
        server.server_close()


def test_rate_limit_spaces_requests():
    limiter = RateLimiter(20.0)
    start = time.monotonic()
    for _ in range(6):
        limiter.wait()
    assert time.monotonic() - start >= 0.24
    with pytest.raises(ValueError, match="rate limit"):
        RateLimiter(0)


class _Trickle(BaseHTTPRequestHandler):
    """An endpoint that never finishes an answer: after the status line it sends a byte every 0.2 s,
    of the body (`trickle` = "body") or of a header that never ends ("headers"), for up to 10 s."""

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.seen.append(time.monotonic())
        self.wfile.write(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n")
        if self.server.trickle == "body":
            self.wfile.write(b"\r\n")
        else:
            self.wfile.write(b"X-Padding: ")
        end = time.monotonic() + 10
        with contextlib.suppress(OSError):  # the client gave up
            while time.monotonic() < end and not self.server.stopping.is_set():
                self.wfile.write(b" " if self.server.trickle == "body" else b"a")
                time.sleep(0.2)


def _request(seed: int = 0) -> Request:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is hidden?"}]}]
    return Request((0, 1), messages, Image.new("RGB", (8, 8)), seed)


@pytest.mark.parametrize("trickle", ["body", "headers"])
def test_the_timeout_bounds_the_whole_request(trickle, tiny_builds, tmp_path):
    """httpx's timeouts are per read: a byte every 0.2 s would keep a request open for as long as the
    server likes. `timeout` is a deadline for the whole request instead, and the run does not hang."""
    with _serving(_Trickle, trickle=trickle) as (server, url):
        teacher = EndpointTeacher(url, DECODING, model="m", timeout=1.0, retries=0)
        start = time.monotonic()
        [reply] = list(teacher.run([_request()]))
        elapsed = time.monotonic() - start
        assert elapsed < 3, (elapsed, reply.error)
        assert reply.text is None and reply.error == "timeout (no complete response within 1 s)"
        assert teacher.stats["timeouts"] == 1 and teacher.stats["failed"] == 1

        teacher = EndpointTeacher(url, DECODING, model="m", timeout=1.0, retries=1, backoff=0.0)
        start = time.monotonic()
        with pytest.raises(TeacherError, match=r"all 2 requests .*\(2 of 2\): timeout"):
            annotate(tiny_builds["train"], tmp_path / "out", teacher, AnnotateConfig(limit=2))
        elapsed = time.monotonic() - start
        assert elapsed < 8 and teacher.stats["timeouts"] == 4 and teacher.stats["retries"] == 2  # retried
        assert len(server.seen) == 5 and not (tmp_path / "out").exists()


def test_an_answer_too_long_is_a_teacher_error_and_never_saved(tiny_builds, tmp_path):
    """A 5 MB answer is not read whole, not retried (the same seed writes it again) and not saved; the
    row counts as teacher_error, the error is named in the build record. `max_answer_chars` sets the
    bound; a run whose answers are all too long is an error."""
    rows = _rows(tiny_builds["train"], 2)
    big = {request_seed(0, rows[0]["ann_id"], 1)}
    with _serving(_Canned, status=200, padded=big, huge=5_000_000) as (server, url):
        teacher = EndpointTeacher(url, DECODING, model="m", backoff=0.0)
        result = annotate(tiny_builds["train"], tmp_path / "out", teacher, AnnotateConfig(limit=2))
        assert (result.work_dir / PROGRESS_FILE).stat().st_size < 10_000
        assert [r["ann_id"] for r in _progress(result.work_dir)] == [rows[1]["ann_id"]]
        assert result.counts == {"rows": 2, "kept": 1, "rejected": {"teacher_error": 1}}
        assert teacher.stats["requests"] == 2 and teacher.stats["too_long"] == 1
        [(error, count)] = result.teacher_errors.items()
        assert count == 1
        assert error.startswith("answer longer than 32000 characters (response body over")
        data = load_dataset(tmp_path / "out")
        assert data["reasoning_rejection"] == ["teacher_error", None] and data["teacher_output"][0] is None
        record = json.loads((tmp_path / "out" / "mpcc_build.json").read_text())
        assert record["annotation"]["teacher_errors"] == {error: 1}

        server.padded = set()  # each ~80 characters: all over a bound of 40
        teacher = EndpointTeacher(url, DECODING, model="m", backoff=0.0)
        short = AnnotateConfig(limit=2, max_answer_chars=40)
        with pytest.raises(TeacherError, match=r"\(2 of 2\): answer longer than 40 characters \(\d+ char"):
            annotate(tiny_builds["train"], tmp_path / "short", teacher, short)
        assert teacher.stats["requests"] == 2 and not (tmp_path / "short").exists()
        assert _progress(tmp_path / "short.annotate") == []


def test_the_command_fails_when_every_request_fails(tiny_builds, tmp_path, capsys):
    """Endpoint up but the model name wrong: every request 404. The command says so in one line and exits
    2, writes no output of failures, keeps its progress; the same command, once the server answers, works."""
    out = tmp_path / "out"
    with _serving(_Canned, status=404) as (server, url):
        command = ["annotate", str(tiny_builds["train"]), "--teacher", url, "--teacher-model", "m"]
        command += ["--out", str(out), "--limit", "2", "--retries", "0"]
        assert main(command) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("mpcc annotate: error: all 2 requests to the teacher m @ ")
        assert 'failed; commonest error (2 of 2): HTTP 404: {"error": "down"}; wrote nothing to' in err
        assert not out.exists() and (tmp_path / "out.annotate" / "run.json").is_file()

        server.status = 200
        assert main(command) == 0
        assert "kept 2" in capsys.readouterr().out
        assert load_dataset(out)["reasoning_verified"] == [True, True]
