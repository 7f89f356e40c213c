"""`mpcc eval` end to end on a tiny model and a tinycoco eval build: outputs, metrics, diagnostics, resume."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from PIL import Image

from mpcc.cli import main
from mpcc.data.difficulty import LEVELS
from mpcc.evaluation import run_identity
from mpcc.evaluation.config import EvalConfig
from mpcc.evaluation.grounding.conditions import CANVAS, Diagnostics
from mpcc.evaluation.harness import eval_rows
from mpcc.evaluation.run_identity import weights_fingerprint
from mpcc.models import resolve_model_path
from mpcc.reports.tables import estimate

ARGS = ["--limit", "6", "--max-new-tokens", "8", "--formats", "mc4,yesno,open", "--batch-size", "8"]


def _eval(data, out, *options) -> int:
    return main(["eval", "--model", "tiny:qwen2_5_vl", "--data", str(data), "--out", str(out), *options])


@pytest.fixture(scope="module")
def evaluated(tiny_builds, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run"
    assert _eval(tiny_builds["eval"], out, "--diagnostics", "blind,context,shape", *ARGS) == 0
    return out


def test_outputs_and_keys(evaluated):
    metrics = json.loads((evaluated / "metrics.json").read_text())
    assert metrics["items"] == 6 and metrics["n"] == 6 * (1 + 5 + 1)  # mc4 + 5 yes/no + open per item
    assert set(metrics["per_format"]) == {"mc4", "yesno", "open"}
    assert set(metrics["per_level"]) <= set(LEVELS)
    assert sum(cell["n"] for cell in metrics["per_level"].values()) == metrics["n"]  # each in one level
    assert {"yes_on_answer", "no_on_confusable", "no_on_irrelevant"} == set(metrics["yesno_rates"])
    assert "levenshtein" in metrics["open"]
    for condition in ("blind", "context", "shape"):
        d = metrics["diagnostics"][condition]
        assert 0 <= d["accuracy"] <= 1 and d["gap"] == pytest.approx(d["accuracy"] - metrics["accuracy"])
        assert set(d["gap_per_level"]) == set(d["per_level"])
    predictions = [json.loads(line) for line in (evaluated / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 4 * metrics["n"]
    assert {"prompt_id", "completion", "parsed", "correct", "format_ok"} <= set(predictions[0])
    with Image.open(evaluated / "accuracy.png") as chart:
        assert chart.format == "PNG" and chart.width > 300
    report = (evaluated / "report.md").read_text()
    assert "Visual-reliance diagnostics" in report and "accuracy.png" in report


def test_rerun_resumes_without_regenerating(evaluated, tiny_builds):
    lines = (evaluated / "predictions.jsonl").read_text().splitlines()
    (evaluated / "predictions.jsonl").write_text(
        "\n".join(lines[:-3]) + "\n" + lines[-3][:10]
    )  # cut by a kill
    assert _eval(tiny_builds["eval"], evaluated, "--diagnostics", "blind,context,shape", *ARGS) == 0
    again = [
        json.loads(line)
        for line in (evaluated / "predictions.jsonl").read_text().splitlines()
        if line.startswith("{") and line.endswith("}")
    ]
    keys = [(r["prompt_id"], r["sample"]) for r in again]
    assert len(keys) == len(set(keys)) == len(lines)


def test_compare_runs(evaluated, tmp_path):
    other = tmp_path / "other" / evaluated.name  # same directory name, another run
    shutil.copytree(evaluated, other)
    assert main(["eval", "compare", str(evaluated), str(other), "--out", str(tmp_path / "cmp")]) == 0
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert f"| {evaluated} |" in table and f"| {other} |" in table
    m = json.loads((evaluated / "metrics.json").read_text())
    formats = list(m["per_format"])
    assert f"| run | {' | '.join(formats)} | all | format compliance | n |" in table
    by_format = " | ".join(f"{m['per_format'][f]['accuracy']:.3f}" for f in formats)
    assert (
        f"| {evaluated} | {by_format} | {m['accuracy']:.3f} | {m['format_compliance']:.3f} | {m['n']} |"
        in table
    )
    for level, cells in m["per_level_format"].items():
        row = " | ".join(f"{cells[f]['accuracy']:.3f}" if f in cells else "–" for f in formats)
        assert f"| {level} | {other} | {row} | {m['per_level'][level]['accuracy']:.3f} |" in table
    with Image.open(tmp_path / "cmp" / "accuracy.png") as chart:
        assert chart.format == "PNG"


def test_a_train_build_is_not_evaluated(tiny_builds):
    """Train builds have a `format` column too; what they lack is the eval's items."""
    with pytest.raises(ValueError, match="not an eval build"):
        eval_rows(tiny_builds["train"], EvalConfig())


def test_diagnostic_images(tiny_builds):
    rows = [row for _, row in eval_rows(tiny_builds["eval"], EvalConfig(formats=("mc4",), limit=3))]
    diag = Diagnostics(tiny_builds["eval"], k=2)
    row = next(r for r in rows if len(r["context_ann_ids"]) >= 2)
    blind = diag.apply(row, "blind")["image"]
    assert set(blind.getdata()) == {CANVAS}
    shape = diag.apply(row, "shape")["image"]
    assert len(set(shape.getdata())) == 2  # canvas + the fill, nothing of the photo
    hidden = diag.predictive_context(row)
    assert len(hidden) == 2 and set(hidden) <= set(row["context_ann_ids"])
    context = diag.apply(row, "context")["image"]
    assert context.size == row["image"].size and list(context.getdata()) != list(row["image"].getdata())
    with pytest.raises(ValueError, match="unknown diagnostic"):
        diag.apply(row, "upside-down")


def test_samples_report_mean_and_bootstrap_interval(tiny_builds, tmp_path):
    out = tmp_path / "sampled"
    assert (
        _eval(
            tiny_builds["eval"],
            out,
            "--limit",
            "3",
            "--formats",
            "mc4",
            "--samples",
            "3",
            "--seed",
            "1",
            "--max-new-tokens",
            "8",
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    sampling = metrics["sampling"]
    assert sampling["samples"] == 3 and len(sampling["per_sample"]) == 3
    low, high = sampling["ci95"]
    assert low <= sampling["mean"] <= high
    completions = [
        json.loads(line)["completion"] for line in (out / "predictions.jsonl").read_text().splitlines()
    ]
    assert len(completions) == 9 and len(set(completions)) > 1  # sampled, not greedy


@pytest.mark.parametrize("source", ["trained", "tiny:qwen3_vl"])
def test_step_diagnostics_end_to_end(source, tiny_builds, tmp_path, monkeypatch):
    """`mpcc eval --diagnostics crm,evidence` on an `mpcc train` output (SFT, 2 steps) and on a tiny
    Qwen3-VL: the grounding sections, charts and report; a rerun resumes without measuring again; the
    runs compare."""
    from mpcc.evaluation.grounding import crm, evidence
    from mpcc.train import main as train_main

    checkpoint = tmp_path / "sft" if source == "trained" else source
    if source == "trained":
        command = ["tiny/sft", "--output_dir", str(checkpoint), "--max_steps", "2", "--save_strategy", "no"]
        assert train_main(command) == 0
    out = tmp_path / "run"
    options = [
        "--diagnostics",
        "crm,evidence",
        "--crm-regions",
        "2",
        "--limit",
        "3",
        "--max-new-tokens",
        "24",
    ]
    options += ["--formats", "mc4,open", "--monitor-task", "difficulty", "--batch-size", "4"]
    command = ["eval", "--model", str(checkpoint), "--data", str(tiny_builds["eval"]), "--out", str(out)]
    command += options
    forwards = []
    measure = evidence.measure

    def counted(model, inputs, *args, **kwargs):
        forwards.append(inputs["input_ids"].shape[0])
        return measure(model, inputs, *args, **kwargs)

    monkeypatch.setattr(evidence, "measure", counted)
    assert main(command) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    answered = [p for p in predictions if p["completion"]]
    records = [json.loads(line) for line in (out / "grounding.jsonl").read_text().splitlines()]
    assert sorted(r["prompt_id"] for r in records if r["kind"] == "evidence") == sorted(
        p["prompt_id"] for p in answered
    )
    assert forwards == [min(4, len(answered) - start) for start in range(0, len(answered), 4)]  # batched
    attributions = [r for r in records if r["kind"] == "crm"]
    assert len(attributions) == len({p["item_id"] for p in answered})
    assert all(
        r["format"] == "open" and 1 <= len(r["sets"]) <= 3 for r in attributions
    )  # 2 singles + top-k  # 2 singles + the top-k set when it is new
    section = metrics["grounding"]
    assert section["evidence"]["all"]["n"] == len(answered)
    measured = section["evidence"]["all"]
    assert 0 < measured["evidence_mass_raw"] < measured["image_mass_raw"] <= 1
    assert 0 < measured["evidence_share"]["value"] < 1 and measured["collapse_ratio"]["n"] <= len(answered)
    profile = section["evidence"]["profile"]  # thirds x measured layers x heads
    assert len(profile["lift"]) == 3 and len(profile["lift"][0]) == len(profile["layers"]) > 0
    assert section["uncertainty"]["n"] == len(answered)
    assert section["uncertainty"]["task_key"] == "difficulty"
    assert set(section["uncertainty"]["auroc_per_task"]) <= set(LEVELS)
    assert section["crm"]["all"]["pairs"] == sum(len(r["sets"]) for r in attributions)
    for chart in ("grounding.png", "grounding_profile.png", "risk_coverage.png"):
        with Image.open(out / chart) as image:
            assert image.format == "PNG"
    report = (out / "report.md").read_text()
    assert "## Step-level grounding" in report and "grounding.png" in report and "hallucinated" in report
    assert "collapse ratio (raw mass)" in report and "grounding_profile.png" in report

    def fail(*args, **kwargs):
        raise AssertionError("measured again on resume")

    monkeypatch.setattr(evidence, "measure", fail)
    monkeypatch.setattr(crm, "step_deltas", fail)
    assert main(command) == 0
    assert json.loads((out / "metrics.json").read_text())["grounding"] == section

    other = tmp_path / "other"
    shutil.copytree(out, other)
    assert main(["eval", "compare", str(out), str(other), "--out", str(tmp_path / "cmp")]) == 0
    compared = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| run | evidence share | collapse ratio | collapse ratio (raw mass) |" in compared
    assert "CRM hallucinated evidence" in compared
    cells = (measured["evidence_share"], measured["collapse_ratio"], measured["collapse_ratio_raw"])
    assert all(f"| {name} | {' | '.join(map(estimate, cells))} |" in compared for name in ("run", "other"))
    with Image.open(tmp_path / "cmp" / "grounding.png") as chart:
        assert chart.format == "PNG"


def test_resume_continues_only_the_same_run(tiny_builds, tmp_path):
    """Another model, limit, decoding or diagnostics into a finished --out is refused (nothing reported
    under the wrong name); --overwrite starts over; predictions without a run record are refused."""
    out = tmp_path / "run"
    quick = ["--limit", "2", "--max-new-tokens", "4", "--formats", "mc4"]
    assert _eval(tiny_builds["eval"], out, *quick) == 0
    predictions = (out / "predictions.jsonl").read_bytes()
    for changed in (["--limit", "3"], ["--max-new-tokens", "5"], ["--diagnostics", "blind"], ["--seed", "1"]):
        assert _eval(tiny_builds["eval"], out, *quick, *changed) == 2, changed
    other = ["eval", "--model", "tiny:qwen3_vl", "--data", str(tiny_builds["eval"]), "--out", str(out)]
    assert main([*other, *quick]) == 2
    assert (out / "predictions.jsonl").read_bytes() == predictions  # untouched by the refused runs
    assert _eval(tiny_builds["eval"], out, *quick) == 0  # the same run: resumes (nothing to do)
    assert (out / "predictions.jsonl").read_bytes() == predictions
    assert main([*other, *quick, "--overwrite"]) == 0
    assert (out / "predictions.jsonl").read_bytes() != predictions
    assert "qwen3_vl" in json.loads((out / "eval_run.json").read_text())["model"]
    (out / "eval_run.json").unlink()  # e.g. a run of an older mpcc
    assert main([*other, *quick]) == 2


def _files(folder) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_eval_and_compare_write_only_into_what_they_own(evaluated, tiny_builds, tmp_path):
    """A folder of the user's is refused (with --overwrite too), a run is never a comparison's output,
    and --overwrite replaces only an output of the same kind."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my report")
    (mine / "metrics.json").write_text("{}")
    quick = ["--limit", "1", "--max-new-tokens", "2", "--formats", "mc4"]
    for overwrite in ([], ["--overwrite"]):
        assert _eval(tiny_builds["eval"], mine, *quick, *overwrite) == 2, overwrite
        assert main(["eval", "compare", str(evaluated), "--out", str(mine), *overwrite]) == 2, overwrite
    assert _files(mine) == {"report.md": b"my report", "metrics.json": b"{}"}

    run = _files(evaluated)
    for overwrite in ([], ["--overwrite"]):
        assert (
            main(["eval", "compare", str(evaluated), str(tmp_path), "--out", str(evaluated), *overwrite]) == 2
        )
    assert _files(evaluated) == run

    cmp = tmp_path / "cmp"
    assert main(["eval", "compare", str(evaluated), "--out", str(cmp)]) == 0
    assert main(["eval", "compare", str(evaluated), "--out", str(cmp)]) == 2  # occupied
    assert main(["eval", "compare", str(evaluated), "--out", str(cmp), "--overwrite"]) == 0
    assert _eval(tiny_builds["eval"], cmp, *quick, "--overwrite") == 2  # a comparison, not an eval run
    assert (cmp / "compare.md").is_file() and not (cmp / "predictions.jsonl").exists()


def test_a_failed_start_leaves_nothing_new(tiny_builds, tmp_path):
    """Weights that do not load: no run record, no folder; an --overwrite of a previous run keeps it."""
    model = tmp_path / "model"
    shutil.copytree(resolve_model_path("tiny:qwen2_5_vl"), model)
    quick = ["--limit", "1", "--max-new-tokens", "2", "--formats", "mc4"]
    previous = tmp_path / "previous"
    assert _eval(tiny_builds["eval"], previous, *quick) == 0
    before = _files(previous)
    weights = model / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size - 1000)
    command = ["eval", "--model", str(model), "--data", str(tiny_builds["eval"]), *quick, "--out"]
    assert main([*command, str(tmp_path / "new")]) == 2
    (tmp_path / "empty").mkdir()
    assert main([*command, str(tmp_path / "empty")]) == 2
    assert main([*command, str(previous), "--overwrite"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "model", "previous"]
    assert list((tmp_path / "empty").iterdir()) == [] and _files(previous) == before


def test_weights_fingerprint_reads_every_byte_once(tmp_path, monkeypatch):
    """A change in the middle of a weights file (a merged LoRA) changes it; a rerun reuses the digest
    cached beside the weights for the same size and mtime; a read-only folder is only hashed."""
    model = tmp_path / "model"
    model.mkdir()
    weights = model / "model.safetensors"
    weights.write_bytes(bytes(3 << 20))  # the middle MiB is neither the first nor the last
    first = weights_fingerprint(model)
    stat = weights.stat()
    with open(weights, "r+b") as f:
        f.seek(3 << 19)
        f.write(b"\x01")
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert weights_fingerprint(model) == first  # same size and mtime: the cached digest, not a read
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    changed = weights_fingerprint(model)
    assert changed != first

    def read_only(*args):
        raise PermissionError("read-only")

    monkeypatch.setattr(run_identity, "write_text_atomic", read_only)
    weights.write_bytes(bytes(3 << 20))  # the first bytes again, a new mtime: hashed, not cached
    assert weights_fingerprint(model) == first
