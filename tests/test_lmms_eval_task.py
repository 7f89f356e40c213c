"""`mpcc export-mpcc-eval --format lmms-eval`: the task folder's files against lmms-eval's task schema
(TaskConfig's fields in lmms-eval 0.7.3, read from its source), and its utils.py round trip: the prompts
`mpcc eval` sends and the metrics `mpcc eval` computes, from the same completions. Running it in lmms-eval
itself is `make lmms-eval-check` (tests/test_lmms_eval_run.py)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import yaml
from datasets import load_from_disk

from mpcc.cli import main
from mpcc.evaluation.config import EvalConfig
from mpcc.evaluation.harness import _score, eval_rows
from mpcc.evaluation.metrics import compute_metrics
from mpcc.generation.generators import conversation

# lmms_eval/api/task.py (0.7.3): the fields of TaskConfig, and generate_until among its output types
TASK_CONFIG_FIELDS = {
    "task",
    "task_alias",
    "tag",
    "group",
    "group_alias",
    "dataset_path",
    "dataset_name",
    "dataset_kwargs",
    "training_split",
    "validation_split",
    "test_split",
    "fewshot_split",
    "full_docs",
    "process_results_use_image",
    "process_docs",
    "doc_to_visual",
    "doc_to_text",
    "doc_to_target",
    "doc_to_choice",
    "doc_to_messages",
    "process_results",
    "use_prompt",
    "description",
    "target_delimiter",
    "fewshot_delimiter",
    "fewshot_config",
    "num_fewshot",
    "metric_list",
    "output_type",
    "generation_kwargs",
    "repeats",
    "filter_list",
    "should_decontaminate",
    "doc_to_decontamination_query",
    "cluster_key",
    "score_key",
    "metadata",
    "lmms_eval_specific_kwargs",
    "model_specific_generation_kwargs",
    "model_specific_target_kwargs",
    "reasoning_tags",
    "auto_strip_thinking",
}


class _Function(str):
    """A `!function module.name` tag, as lmms-eval's YAML loader reads it (here: the name)."""


def _read_task(path):
    loader = type("TaskLoader", (yaml.SafeLoader,), {})
    loader.add_constructor("!function", lambda lo, node: _Function(lo.construct_scalar(node)))
    return yaml.load(path.read_text(), Loader=loader)


@pytest.fixture(scope="module")
def task(tiny_builds, tmp_path_factory):
    out = tmp_path_factory.mktemp("lmms") / "task"
    assert main(["export-mpcc-eval", str(tiny_builds["eval"]), "--format", "lmms-eval", "--out", str(out),
                 "--limit", "3"]) == 0  # fmt: skip
    spec = importlib.util.spec_from_file_location("mpcc_task_utils", out / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    return out, utils


def test_the_task_yaml_follows_lmms_evals_schema(task):
    out, utils = task
    assert sorted(p.name for p in out.iterdir()) == [".mpcc-output", "data", "mpcc_eval.yaml", "utils.py"]
    config = _read_task(out / "mpcc_eval.yaml")
    assert set(config) <= TASK_CONFIG_FIELDS and config["task"] == "mpcc_eval"
    assert config["output_type"] == "generate_until" and config["dataset_kwargs"] == {"load_from_disk": True}
    functions = [v for v in config.values() if isinstance(v, _Function)]
    functions += [m["aggregation"] for m in config["metric_list"]]
    for name in functions:  # every function the YAML names is in utils.py
        module, _, function = name.partition(".")
        assert module == "utils" and callable(getattr(utils, function)), name
    assert [m["metric"] for m in config["metric_list"]] == list(utils.METRICS)
    data = load_from_disk(config["dataset_path"])
    assert list(data) == [config["test_split"]] and config["doc_to_target"] in data["test"].column_names


def test_utils_send_mpcc_evals_prompts_and_compute_its_metrics(task, tiny_builds):
    out, utils = task
    docs = load_from_disk(str(out / "data"))["test"]
    rows = eval_rows(tiny_builds["eval"], EvalConfig(limit=3))
    assert len(docs) == len(rows)
    records, results = [], {}
    for i, (doc, (pid, row)) in enumerate(zip(docs, rows)):
        sent, expected = utils.mpcc_doc_to_messages(doc), conversation(row)
        assert [m["role"] for m in sent] == [m["role"] for m in expected]
        for got, want in zip(sent, expected):
            assert [p["type"] for p in got["content"]] == [p["type"] for p in want["content"]]
            for g, w in zip(got["content"], want["content"]):
                if g["type"] == "image":
                    assert np.array_equal(np.asarray(g["url"]), np.asarray(w["image"].convert("RGB")))
                else:
                    assert g["text"] == w["text"]
        answer = row["answer"] if i % 3 else "Z"  # some right, some wrong
        completion = f"<think>look</think><answer>{answer}</answer>" if i % 4 else f"{answer}"
        records.append(_score(completion, 0, f"{pid}:normal", row, "normal"))
        for metric, record in utils.mpcc_process_results(doc, [completion]).items():
            results.setdefault(metric, []).append(record)
    metrics = compute_metrics(records)
    agg = {metric: getattr(utils, f"mpcc_{metric}")(rs) for metric, rs in results.items()}
    assert agg["accuracy"] == pytest.approx(metrics["accuracy"])
    assert agg["format_compliance"] == pytest.approx(metrics["format_compliance"])
    for level, cell in metrics["per_level"].items():
        assert agg[f"accuracy_{level}"] == pytest.approx(cell["accuracy"])
    for fmt, cell in metrics["per_format"].items():
        assert agg[f"accuracy_{fmt}"] == pytest.approx(cell["accuracy"])
    split = {"in": "accuracy_in_distribution", "out": "accuracy_ood"}
    for key, cell in metrics["distribution"].items():
        assert agg[split[key]] == pytest.approx(cell["accuracy"]), json.dumps(metrics["distribution"])
