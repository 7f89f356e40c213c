"""The task-conditional monitor on synthetic answers built to show something and to show nothing:
blindness hazardous in one task and benign in another (the targeted veto helps the first and leaves the
second alone, the global veto hurts the second), a null effect whose intervals cover 0, errors driven by
length alone (the length-free V sees no vision effect, the raw mass would), the entropy comparison by
AUROC, transfer, too few answers, bad input, and the report's and the comparison's rendering."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mpcc.errors import ConfigError, ValidationError
from mpcc.evaluation.grounding.monitor import ENTROPY_ROW, uncertainty_report
from mpcc.evaluation.grounding.runner import monitor_tasks
from mpcc.evaluation.grounding.uncertainty import aurc, auroc, selective_risk, split_halves, veto_risk
from mpcc.reports.monitor import compare_uncertainty, uncertainty_markdown


def _p_wrong(task: str, h: np.ndarray, v: np.ndarray) -> np.ndarray:
    if task == "hazard":  # confident but not looking: mostly wrong
        return np.where((h < 0.5) & (v < 0.3), 0.85, 0.05 + 0.3 * h)
    if task == "benign":  # entropy tells errors; where the model looks does not matter
        return 0.02 + 0.7 * h**2
    return np.full(h.shape, 0.3)  # "null": nothing tells errors


def make_records(n_items: int, tasks=("hazard", "benign"), per_item: int = 4, seed: int = 0) -> list[dict]:
    """`per_item` answers per item (as an item's formats), tasks taking turns across the answers."""
    rng = np.random.default_rng(seed)
    records = []
    for k in range(n_items * per_item):
        task = tasks[k % len(tasks)]
        h, v = rng.random(), rng.random() * (0.5 if task == "benign" else 1)  # benign: looks less anyway
        records.append({
            "item_id": f"item-{k // per_item}", "task": task,
            "correct": bool(rng.random() >= _p_wrong(task, np.array(h), np.array(v))),
            "entropy_full": h, "entropy_answer": 0.5 * h + 0.3 * rng.random(), "evidence_share": v,
        })  # fmt: skip
    return records


@pytest.fixture(scope="module")
def two_tasks() -> dict:
    return uncertainty_report(make_records(300))  # the claims below hold for seeds 0-5 (checked)


def assert_plain(value):
    """JSON types only: np.float64 passes json.dumps (it subclasses float), so check types directly."""
    if isinstance(value, dict):
        for v in value.values():
            assert_plain(v)
    elif isinstance(value, list):
        for v in value:
            assert_plain(v)
    else:
        assert value is None or type(value) in (bool, int, float, str), (value, type(value))


def test_targeted_veto_helps_where_blindness_is_hazardous_and_leaves_the_benign_task_alone(two_tasks):
    m = two_tasks["monitor"]
    assert m["targeted"] == ["hazard"]
    assert m["tasks"]["hazard"]["coefficients"]["interaction"]["high"] < 0  # beta_EV below 0
    assert m["tasks"]["benign"]["coefficients"]["interaction"]["low"] <= 0  # benign: no hazard claimed
    hazard, benign = m["veto"]["per_task"]["hazard"], m["veto"]["per_task"]["benign"]
    assert hazard["targeted_vetoed"] > 0 and hazard["targeted_minus_without"]["high"] < 0
    assert benign["targeted_vetoed"] == 0 and benign["targeted_minus_without"]["value"] == 0
    assert benign["targeted"]["value"] == benign["without"]["value"]
    # The global rule vetoes confident answers of the benign task too, which were mostly right.
    assert benign["global_vetoed"] > 0 and benign["global_minus_without"]["low"] > 0
    assert m["veto"]["all"]["targeted"]["value"] < m["veto"]["all"]["global"]["value"]


def test_scores_are_those_of_the_rules_on_the_evaluation_half(two_tasks):
    """The bootstrap ranks by counting copies; on the answers themselves that is uncertainty's ranking."""
    m, records = two_tasks["monitor"], make_records(300)
    in_eval = ~split_halves(r["item_id"] for r in records)
    for task in ("hazard", "benign"):
        evaluated = [r for r, e in zip(records, in_eval) if e and r["task"] == task]
        h, v = (np.array([r[k] for r in evaluated]) for k in ("entropy_full", "evidence_share"))
        ok = np.array([r["correct"] for r in evaluated])
        scores = m["veto"]["per_task"][task]
        assert scores["n"] == len(evaluated)
        assert scores["without"]["value"] == pytest.approx(selective_risk(-h, ok))
        for kind, rule in (("global", m["rules"]["global"]), ("targeted", m["rules"]["targeted"].get(task))):
            vetoed = (h < rule["entropy_threshold"]) & (v < rule["vision_threshold"]) if rule else h < -1
            assert scores[f"{kind}_vetoed"] == vetoed.sum()
            assert scores[kind]["value"] == pytest.approx(veto_risk(h, vetoed, ok))
            change = scores[f"{kind}_minus_without"]
            assert change["low"] <= change["value"] <= change["high"]


def test_a_null_effect_gets_intervals_that_cover_zero_in_most_seeds():
    """Nothing tells errors: beta_EV and the global veto's change should cover 0 in about 95% of runs
    (19 and 20 of 20 seeds when checked; 10 here for time), with the veto really vetoing."""
    covered_beta = covered_veto = vetoing = 0
    for seed in range(10):
        m = uncertainty_report(make_records(60, tasks=("null",), seed=seed))["monitor"]
        beta, change = m["pooled"]["coefficients"]["interaction"], m["veto"]["all"]["global_minus_without"]
        covered_beta += beta["low"] <= 0 <= beta["high"]
        covered_veto += change["low"] <= 0 <= change["high"]
        vetoing += m["veto"]["all"]["global_vetoed"] > 0
    assert covered_beta >= 8 and covered_veto >= 8 and vetoing >= 8


def test_errors_driven_by_length_show_no_vision_effect_in_the_length_free_share():
    """The raw evidence mass falls with the reasoning's length; when only length makes answers wrong,
    a model on raw mass finds a 'vision' effect and one on the evidence share (length-free) does not."""
    rng = np.random.default_rng(11)
    records = []
    for k in range(1200):
        length = rng.integers(50, 1000)
        records.append({
            "item_id": k // 4, "task": "only", "correct": bool(rng.random() >= length / 1200),
            "entropy_full": float(rng.random()), "entropy_answer": None,
            "evidence_share": float(rng.random()), "evidence_mass": float(40 / (400 + length)),
        })  # fmt: skip
    share = uncertainty_report(records)["monitor"]["pooled"]["coefficients"]["vision"]
    raw = uncertainty_report([{**r, "evidence_share": r["evidence_mass"]} for r in records])
    raw_vision = raw["monitor"]["pooled"]["coefficients"]["vision"]
    assert share["low"] <= 0 <= share["high"]
    assert raw_vision["low"] > 0  # more raw mass looks "safer": it only means a shorter reasoning


def test_full_response_entropy_beats_an_uninformative_answer_span_by_auroc():
    records = make_records(150, tasks=("benign",))
    for r, noise in zip(records, np.random.default_rng(3).random(len(records))):
        r["entropy_answer"] = float(noise)
    report = uncertainty_report(records)
    wrong = np.array([not r["correct"] for r in records])
    full = np.array([r["entropy_full"] for r in records])
    assert report["auroc"]["entropy_full"]["value"] == pytest.approx(auroc(full, wrong))
    assert report["auroc"]["full_minus_answer"]["low"] > 0
    assert report["auroc_per_task"]["benign"]["full_minus_answer"]["n"] == len(records)
    assert report["aurc"]["entropy_full"]["value"] == pytest.approx(aurc(-full, ~wrong))


def test_transfer_fits_on_one_task_and_scores_on_each(two_tasks):
    transfer = two_tasks["monitor"]["transfer"]
    assert list(transfer) == [ENTROPY_ROW, "pooled", "benign", "hazard"]
    assert all(set(row) == {"all", "benign", "hazard"} for row in transfer.values())
    on_hazard = {name: row["hazard"]["aurc"]["value"] for name, row in transfer.items()}
    # Only a monitor that saw the hazardous task's structure ranks its blind errors last.
    assert on_hazard["hazard"] < min(on_hazard[ENTROPY_ROW], on_hazard["benign"])
    assert transfer[ENTROPY_ROW]["hazard"]["risk"]["value"] == pytest.approx(
        two_tasks["monitor"]["veto"]["per_task"]["hazard"]["without"]["value"]
    )


def test_report_is_json_with_estimates_everywhere(two_tasks):
    json.dumps(two_tasks)
    assert_plain(two_tasks)
    assert two_tasks["n"] == 1200 and two_tasks["resamples"] == {"default": 1000, "fits": 200}
    estimate = two_tasks["aurc"]["entropy_full"]
    assert set(estimate) == {"value", "low", "high", "n", "items"} and estimate["items"] == 300
    assert two_tasks["monitor"]["n_fit"] + two_tasks["monitor"]["n_eval"] == 1200
    assert len(two_tasks["curves"]["entropy_full"]["coverage"]) == 101


def test_too_few_answers_give_no_interval_and_the_report_says_so():
    report = uncertainty_report(make_records(3))
    m = report["monitor"]
    assert m["rules"]["global"] is None and m["targeted"] == []
    assert m["pooled"]["coefficients"]["interaction"]["value"] is None
    assert (
        report["aurc"]["entropy_full"]["low"] is None and report["aurc"]["entropy_full"]["value"] is not None
    )
    text = "\n".join(uncertainty_markdown(report))
    assert "too few answers (n=12)" in text and "no global rule (too few answers" in text
    assert "[" not in text.split("| ranking |")[1].split("\n\n")[0]  # no interval printed for 12 answers


def test_answers_without_vision_or_answer_span_are_left_out_where_needed():
    records = make_records(60)
    for r in records[:40]:
        r["evidence_share"] = None
    for r in records[40:50]:
        r["entropy_answer"] = None
    report = uncertainty_report(records)
    assert report["n"] == 240 and report["monitor"]["n_fit"] + report["monitor"]["n_eval"] == 200
    assert report["auroc"]["entropy_full"]["n"] == 230
    assert uncertainty_report([{**r, "evidence_share": None} for r in records])["monitor"]["n_fit"] == 0


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"entropy_full": None}, "record 0 has no finite entropy_full"),
        ({"correct": None}, "`correct` must be true or false"),
        ({"evidence_share": "x"}, "evidence_share must be numbers"),
    ],
)
def test_bad_records_are_named(change, match):
    records = make_records(5)
    records[0] = {**records[0], **change}
    with pytest.raises(ValidationError, match=match):
        uncertainty_report(records)


def test_missing_fields_and_no_records_are_named():
    with pytest.raises(ValidationError, match="no records"):
        uncertainty_report([])
    records = make_records(2)
    del records[1]["task"]
    with pytest.raises(ValidationError, match="record 1 has no 'task'"):
        uncertainty_report(records)


def test_monitor_tasks_come_from_a_column_and_a_wrong_name_is_refused():
    rows = {
        "0:normal": {"format": "mc4", "difficulty": "easy"},
        "1:normal": {"format": "open", "difficulty": 2},
    }
    assert monitor_tasks(rows, "difficulty") == {"0:normal": "easy", "1:normal": "2"}
    with pytest.raises(ConfigError, match="--monitor-task 'dataset': eval row 0:normal has no such column"):
        monitor_tasks(rows, "dataset")
    with pytest.raises(ConfigError, match="has task 'all', the pooled answers' name"):
        monitor_tasks({"0:normal": {"split": "all"}}, "split")
    with pytest.raises(ValidationError, match="may not be called 'all'"):
        uncertainty_report([{**r, "task": "all"} for r in make_records(2)])


def test_report_and_comparison_print_intervals_with_n(two_tasks):
    text = "\n".join(uncertainty_markdown({**two_tasks, "task_key": "format"}))
    auroc_full = two_tasks["auroc"]["entropy_full"]
    assert f"{auroc_full['value']:.3f} [{auroc_full['low']:.3f}, {auroc_full['high']:.3f}] (n=1200)" in text
    assert "| format | fit answers | beta_EV [entropy x vision] |" in text
    assert "| hazard |" in text and "Targeted: hazard;" in text
    assert "| fitted on | scored on all | scored on benign | scored on hazard |" in text
    lines = compare_uncertainty({"start": two_tasks, "grpo": two_tasks})
    assert any(line.startswith("| grpo | ") and line.endswith("| hazard |") for line in lines)
    change = two_tasks["monitor"]["veto"]["all"]["targeted_minus_without"]
    assert sum(f"{change['value']:.3f} [" in line for line in lines) == 2


def test_a_wrong_monitor_task_stops_mpcc_eval_before_anything_is_generated(tiny_builds, tmp_path, capsys):
    from mpcc.cli import main

    out = tmp_path / "run"
    command = ["eval", "--model", "tiny:qwen2_5_vl", "--data", str(tiny_builds["eval"]), "--out", str(out)]
    assert main([*command, "--diagnostics", "evidence", "--monitor-task", "dataset", "--limit", "2"]) != 0
    assert not out.exists()
    assert "--monitor-task 'dataset': eval row 0 has no such column" in capsys.readouterr().err


def test_a_run_made_before_the_monitor_compares_with_missing_cells(two_tasks):
    old = {"n": 10, "aurc": {"entropy_full": 0.2}, "risk_at_coverage": {"with_veto": 0.1}}
    lines = compare_uncertainty({"old": old, "new": two_tasks})
    assert "| old | – | – | – | – | – |" in lines and any(line.startswith("| new | 0.") for line in lines)
