"""`mpcc eval --model openai:NAME --endpoint URL` against the tiny model served over the OpenAI API on
loopback (tests/openai_server.py, the annotate tests' server): the same predictions as the local model,
the endpoint in the run identity and the API key in no output; a proxy that fails, stalls and garbles
requests (rows kept, errors counted, the rerun resumes); the diagnostics an API can and cannot run, and
entropy from the server's token log-probs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from openai_server import Proxy

from mpcc.cli import main
from mpcc.evaluation.config import EvalConfig
from mpcc.evaluation.grounding.entropy import SERVED_TOP, top_entropy
from mpcc.evaluation.grounding.forcing import teacher_forced
from mpcc.evaluation.harness import eval_rows
from mpcc.generation.generators import HFGenerator

KEY = "sk-test-never-written"
COMMON = ["--formats", "mc4,yesno", "--limit", "2", "--max-new-tokens", "12"]


def _eval(served, data, out, *options, model=None) -> int:
    model = model or f"openai:{served['model']}"
    return main(["eval", "--model", model, "--data", str(data), "--out", str(out), *COMMON, *options])


def _predictions(out) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def local_run(served, tiny_builds, tmp_path_factory):
    """The same rows on the local model, one row per generate call (as the server generates)."""
    out = tmp_path_factory.mktemp("local") / "run"
    assert _eval(served, tiny_builds["eval"], out, "--batch-size", "1", model=served["model"]) == 0
    return out


def test_a_served_model_is_evaluated_like_a_local_one(served, local_run, tiny_builds, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    out = tmp_path / "run"
    with Proxy(served["url"]) as proxy:
        assert _eval(served, tiny_builds["eval"], out, "--endpoint", proxy.url, "--concurrency", "3") == 0
    assert proxy.keys == {f"Bearer {KEY}"}  # sent, as the OpenAI clients send it
    api, local = _predictions(out), _predictions(local_run)
    fields = ("prompt_id", "completion", "parsed", "correct")
    assert sorted(tuple(p[f] for f in fields) for p in api) == sorted(
        tuple(p[f] for f in fields) for p in local
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["accuracy"] == json.loads((local_run / "metrics.json").read_text())["accuracy"]
    assert metrics["unanswered"] == {"rows": 0, "errors": {}}
    record = json.loads((out / "eval_run.json").read_text())
    assert record["model"] == f"openai:{served['model']}" and record["endpoint"] == proxy.url
    for file in out.rglob("*"):  # the key is in no output
        assert not file.is_file() or KEY.encode() not in file.read_bytes(), file

    # another endpoint is another run: refused, as a changed setting is
    with Proxy(served["url"]) as other:
        assert _eval(served, tiny_builds["eval"], out, "--endpoint", other.url) == 2


def test_a_failing_stalling_garbling_server_keeps_rows_counts_errors_and_resumes(
    served, local_run, tiny_builds, tmp_path, capsys
):
    out = tmp_path / "run"
    actions = ("fail", "stall", "garbage", "forward")
    with Proxy(served["url"], faults=True, stall=7.0, actions=actions) as proxy:
        flaky = ["--endpoint", proxy.url, "--retries", "0", "--timeout", "6", "--concurrency", "2"]
        assert _eval(served, tiny_builds["eval"], out, *flaky) == 0
        first = (out / "predictions.jsonl").read_text()
        metrics = json.loads((out / "metrics.json").read_text())
        total = len(_predictions(local_run))
        kept = len(first.splitlines())
        assert kept == total - metrics["unanswered"]["rows"] and 0 < kept < total
        errors = metrics["unanswered"]["errors"]
        assert sum(errors.values()) == total - kept
        assert any(e.startswith("HTTP 500") for e in errors) and any(e.startswith("timeout") for e in errors)
        assert any(e.startswith("malformed response") for e in errors)
        assert "the same command asks again" in capsys.readouterr().out

        proxy.faults = False
        assert _eval(served, tiny_builds["eval"], out, *flaky) == 0  # resumes: asks for the missing rows
    after = (out / "predictions.jsonl").read_text()
    assert after.startswith(first) and len(after.splitlines()) == total
    assert len(proxy.bodies) == 2 * total - kept  # each row answered once
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["unanswered"] == {"rows": 0, "errors": {}}
    assert metrics["accuracy"] == json.loads((local_run / "metrics.json").read_text())["accuracy"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--diagnostics", "evidence"], "--diagnostics evidence cannot run on openai:"),
        (["--backend", "vllm"], "--backend vllm runs a local model"),
        (["--endpoint", "ftp://x"], "expected an http(s)://HOST[:PORT]/v1 URL"),
        (["--endpoint", ""], "needs --endpoint URL (or $OPENAI_BASE_URL)"),
    ],
)
def test_what_cannot_run_is_refused_in_one_line_before_any_output(
    options, message, served, tiny_builds, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("OPENAI_BASE_URL", served["url"])  # the URL the OpenAI clients read
    if "" in options:
        monkeypatch.delenv("OPENAI_BASE_URL")
    out = tmp_path / "run"
    assert _eval(served, tiny_builds["eval"], out, *options) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_a_model_the_server_does_not_serve_and_a_local_endpoint_are_refused(
    served, tiny_builds, tmp_path, capsys
):
    out = tmp_path / "run"
    assert _eval(served, tiny_builds["eval"], out, "--endpoint", served["url"], model="openai:nope") == 2
    assert "does not serve 'nope'" in capsys.readouterr().err and not out.exists()
    assert _eval(served, tiny_builds["eval"], out, "--endpoint", served["url"], model="tiny:qwen2_5_vl") == 2
    assert "--endpoint is for --model openai:NAME" in capsys.readouterr().err and not out.exists()


def test_entropy_from_the_servers_log_probs(served, tiny_builds, tmp_path, capsys):
    """The entropy diagnostic runs over an API that returns token log-probs (each answer's entropy is
    the top-k bound of the model's own), and is refused at start by one that does not."""
    out = tmp_path / "run"
    assert (
        _eval(served, tiny_builds["eval"], out, "--endpoint", served["url"], "--diagnostics", "entropy") == 0
    )
    predictions = _predictions(out)
    section = json.loads((out / "metrics.json").read_text())["grounding"]["entropy"]
    assert section["n"] == len(predictions) and section["source"] == ["top log-probs"]
    assert "### Answer entropy" in (out / "report.md").read_text()

    generator = HFGenerator(served["model"])
    rows = dict(eval_rows(tiny_builds["eval"], EvalConfig(formats=("mc4", "yesno"), limit=2)))
    for p in predictions[:3]:
        row = rows[p["prompt_id"].split(":")[0]]
        inputs, start, _ = teacher_forced(generator.processor, [row], p["completion"], "cpu")
        with torch.inference_mode():
            logp = generator.model(**inputs).logits[0, start - 1 : -1].float().log_softmax(-1)
        full = -(logp.exp() * logp).sum(-1)
        tops = logp.topk(SERVED_TOP, dim=-1).values
        bound = [top_entropy({"top_logprobs": [{"logprob": v} for v in t.tolist()]}) for t in tops]
        assert p["entropy"]["entropy_full"] == pytest.approx(float(np.mean(bound)), abs=1e-4)
        assert p["entropy"]["entropy_full"] <= float(full.mean()) + 1e-4  # a lower bound
        assert math.isfinite(p["entropy"]["entropy_full"])

    local = tmp_path / "local"  # the same answers on the local model: entropy from its logits, no lower
    assert _eval(served, tiny_builds["eval"], local, "--batch-size", "1", "--diagnostics", "entropy",
                 model=served["model"]) == 0  # fmt: skip
    lines = [json.loads(line) for line in (local / "grounding.jsonl").read_text().splitlines()]
    by_pid = {r["prompt_id"]: r for r in lines if r["kind"] == "entropy"}
    assert {r["source"] for r in by_pid.values()} == {"logits"} and len(by_pid) == len(predictions)
    for p in predictions:
        assert by_pid[p["prompt_id"]]["entropy_full"] >= p["entropy"]["entropy_full"] - 1e-4

    with Proxy(served["url"], strip=True) as proxy:
        out = tmp_path / "stripped"
        assert (
            _eval(served, tiny_builds["eval"], out, "--endpoint", proxy.url, "--diagnostics", "entropy") == 2
        )
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--diagnostics entropy cannot run on openai:" in err and "returned no token log-probs" in err
    assert not out.exists()


def test_answer_level_diagnostics_and_crm_regeneration_over_the_api(served, tiny_builds, tmp_path):
    out = tmp_path / "run"
    options = ["--endpoint", served["url"], "--diagnostics", "blind,crm", "--crm-regions", "1"]
    model, data = f"openai:{served['model']}", str(tiny_builds["eval"])
    command = [
        "eval",
        "--model",
        model,
        "--data",
        data,
        "--out",
        str(out),
        "--formats",
        "mc4",
        "--limit",
        "1",
    ]
    assert main([*command, "--max-new-tokens", "12", *options]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert "blind" in metrics["diagnostics"]
    records = [json.loads(line) for line in (out / "grounding.jsonl").read_text().splitlines()]
    sets = [s for r in records for s in r["sets"]]
    assert sets and all(s["step_delta"] == [] and s["mean_delta"] is None for s in sets)
    assert all(isinstance(s["completion"], str) and isinstance(s["control"]["completion"], str) for s in sets)


def test_a_run_with_no_answer_is_an_error_and_the_same_command_resumes(served, tiny_builds, tmp_path, capsys):
    out = tmp_path / "run"
    with Proxy(served["url"], faults=True, actions=("fail",)) as proxy:
        command = ["--endpoint", proxy.url, "--retries", "0"]
        assert _eval(served, tiny_builds["eval"], out, *command) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert (
            "no row was answered by" in err
            and 'commonest error: HTTP 500: {"error": "injected failure"}' in err
        )
        assert (out / "predictions.jsonl").read_text() == "" and not (out / "metrics.json").exists()
        proxy.faults = False
        assert _eval(served, tiny_builds["eval"], out, *command) == 0
    assert json.loads((out / "metrics.json").read_text())["unanswered"]["rows"] == 0
