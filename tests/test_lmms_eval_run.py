"""The exported MPCC-Eval task run by lmms-eval itself (`--model openai` on the tiny model served on
loopback, and on a canned server whose answers score above zero), against `mpcc eval` of the same served
model on the same items: the same completions per row and the same accuracy, overall, per level, per
format and in / out of distribution.

Opt-in: lmms-eval (and its dependencies) live in a second environment, named by $MPCC_LMMS_PYTHON, with
mpcc installed there without its dependencies (the task's utils.py imports mpcc's parsing); without it the
test skips with the reason. `make lmms-eval-check` builds that environment and runs this file.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
from http.server import ThreadingHTTPServer

import pytest
from openai_server import QuietJsonHandler

from mpcc.cli import main

LMMS_PYTHON = os.environ.get("MPCC_LMMS_PYTHON")
pytestmark = pytest.mark.skipif(
    not LMMS_PYTHON,
    reason="MPCC_LMMS_PYTHON (a Python with lmms-eval and mpcc) not set: make lmms-eval-check",
)
TOKENS, ITEMS = "24", "1"
SPLIT = {"in": "accuracy_in_distribution", "out": "accuracy_ood"}


class _Canned(QuietJsonHandler):
    """A served model that answers "yes" to yes/no questions and "A" to the others, in mpcc's format."""

    def do_GET(self):
        self.reply_json(200, {"object": "list", "data": [{"id": "canned", "object": "model"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = json.dumps(body["messages"])
        answer = "yes" if "answer yes or no" in text else "A"
        message = {"role": "assistant", "content": f"<think>I look.</think><answer>{answer}</answer>"}
        self.reply_json(200, {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]})


@contextlib.contextmanager
def _canned():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Canned)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def task(tiny_builds, tmp_path_factory):
    out = tmp_path_factory.mktemp("lmms") / "task"
    export = ["export-mpcc-eval", str(tiny_builds["eval"]), "--format", "lmms-eval", "--out", str(out)]
    assert main([*export, "--limit", ITEMS]) == 0
    return out


def _lmms_eval(task, model: str, url: str, out) -> tuple[dict, list[dict]]:
    """lmms-eval's metrics of the task and its samples (in doc order)."""
    command = [
        LMMS_PYTHON, "-m", "lmms_eval", "--model", "openai", "--model_args", f"model={model},base_url={url}",
        "--tasks", "mpcc_eval", "--include_path", str(task), "--gen_kwargs", f"max_new_tokens={TOKENS}",
        "--output_path", str(out), "--log_samples", "--batch_size", "1",
    ]  # fmt: skip
    env = {**os.environ, "OPENAI_API_KEY": "unused", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    [results] = out.rglob("*_results.json")
    [samples] = out.rglob("*_samples_mpcc_eval.jsonl")
    lines = [json.loads(line) for line in samples.read_text().splitlines()]
    metrics = {k.split(",")[0]: v for k, v in json.loads(results.read_text())["results"]["mpcc_eval"].items()}
    return metrics, sorted(lines, key=lambda s: s["doc_id"])


def _mpcc_eval(data, model: str, url: str, out) -> tuple[dict, list[str]]:
    """`mpcc eval`'s metrics of the same items on the same served model, and its completions in row order."""
    command = [
        "eval",
        "--model",
        f"openai:{model}",
        "--endpoint",
        url,
        "--data",
        str(data),
        "--out",
        str(out),
    ]
    assert main([*command, "--limit", ITEMS, "--max-new-tokens", TOKENS]) == 0
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    completions = [
        p["completion"] for p in sorted(predictions, key=lambda p: int(p["prompt_id"].split(":")[0]))
    ]
    return json.loads((out / "metrics.json").read_text()), completions


def _same_metrics(lmms: dict, mpcc: dict) -> None:
    assert lmms["accuracy"] == pytest.approx(mpcc["accuracy"])
    assert lmms["format_compliance"] == pytest.approx(mpcc["format_compliance"])
    cells = {f"accuracy_{k}": c for k, c in (*mpcc["per_level"].items(), *mpcc["per_format"].items())}
    cells |= {SPLIT[k]: c for k, c in mpcc["distribution"].items()}
    for name, cell in cells.items():
        assert lmms[name] == pytest.approx(cell["accuracy"]), name


@pytest.mark.parametrize("server", ["tiny", "canned"])
def test_lmms_eval_scores_the_task_as_mpcc_eval_does(server, task, served, tiny_builds, tmp_path):
    with contextlib.ExitStack() as stack:
        if server == "tiny":
            model, url = served["model"], served["url"] + "/v1"
        else:
            model, url = "canned", stack.enter_context(_canned())
        lmms, samples = _lmms_eval(task, model, url, tmp_path / "lmms")
        mpcc, completions = _mpcc_eval(tiny_builds["eval"], model, url, tmp_path / "mpcc")
    print(
        f"{server}: lmms-eval accuracy {lmms['accuracy']}, mpcc eval {mpcc['accuracy']} over {mpcc['n']} rows"
    )
    # the same prompts: the same greedy answers (lmms-eval's sample log drops `resps` when it equals
    # `filtered_resps`: loggers/evaluation_tracker.py)
    assert [s.get("resps", s["filtered_resps"]) for s in samples] == completions
    _same_metrics(lmms, mpcc)
    if server == "canned":
        assert 0 < mpcc["accuracy"] < 1
