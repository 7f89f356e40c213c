"""End-to-end builds on the real tinycoco subset: columns, hidden pixels, answers, levels, determinism;
train builds' question formats on synthetic scenes."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import psutil
import pytest
from datasets import load_from_disk
from PIL import Image
from pycocotools.coco import COCO

from mpcc.data import prompts
from mpcc.data.answer_options import LETTERS
from mpcc.data.build import SKIPS_FILE, STATS_FILE, BuildConfig, BuildError, build
from mpcc.data.difficulty import LEVELS
from mpcc.data.masking import MaskSpec
from mpcc.data.render import target_seed
from mpcc.data.schema import COMMON, EVAL, TRAIN
from mpcc.data.selection import DEFAULT_OOD
from mpcc.data.traces import template_trace
from mpcc.errors import ConfigError
from mpcc.records import BUILD_FILE
from mpcc.rewards import (
    exact_match_reward,
    levenshtein_reward,
    paper_answer_reward,
    resolve_rewards,
    target_answer,
    trace_completion,
)


@pytest.fixture(scope="module")
def coco(tinycoco):
    return COCO(str(tinycoco / "instances.json"))


def test_columns_match_the_schema(tiny_builds):
    train, evald = load_from_disk(str(tiny_builds["train"])), load_from_disk(str(tiny_builds["eval"]))
    assert set(train.column_names) == set(COMMON) | set(TRAIN)
    assert set(evald.column_names) == set(COMMON) | set(EVAL)
    for name in ("build", "stats", "skips"):
        file = {"build": BUILD_FILE, "stats": STATS_FILE, "skips": SKIPS_FILE}[name]
        assert (tiny_builds["train"] / file).is_file()


def test_every_target_pixel_is_hidden(tiny_builds, coco):
    """The pycocotools mask of every target is exactly the fill (black) in the stored image."""
    for split in ("train", "eval"):
        ds = load_from_disk(str(tiny_builds[split]))
        seen = set()
        for row in ds:
            if row["ann_id"] in seen:
                continue
            seen.add(row["ann_id"])
            target = coco.annToMask(coco.anns[row["ann_id"]]).astype(bool)
            pixels = np.asarray(row["image"].convert("RGB"))
            assert target.any()
            assert pixels.shape[:2] == target.shape
            assert (pixels[target] == 0).all(), f"{split} ann {row['ann_id']}: target pixels visible"
            # and the rest of the image is still there
            assert pixels[~target].mean() > 5


def test_train_rows(tiny_builds, coco):
    ds = load_from_disk(str(tiny_builds["train"]))
    assert len(ds) > 30
    for row in ds:
        ann = coco.anns[row["ann_id"]]
        assert row["image_id"] == ann["image_id"]
        assert row["solution"] == row["category"] == coco.cats[ann["category_id"]]["name"]
        assert row["category"] not in DEFAULT_OOD
        assert row["bbox"] == pytest.approx(ann["bbox"])
        assert row["reasoning"] is None
        assert row["difficulty"] in LEVELS
        system, user = row["prompt"]
        assert system["role"] == "system" and user["role"] == "user"
        assert [part["type"] for part in user["content"]] == ["image", "text"]
        assert "<answer>" in user["content"][1]["text"]
        others = {a["id"] for a in coco.imgToAnns[ann["image_id"]]} - {ann["id"]}
        assert set(row["context_ann_ids"]) == others


def test_eval_answers_and_options_are_consistent(tiny_builds):
    ds = load_from_disk(str(tiny_builds["eval"]))
    formats = Counter(ds["format"])
    assert set(formats) == {"mc4", "mc7", "yesno"}
    assert formats["yesno"] == 5 * formats["mc4"]
    for row in ds:
        opts, kinds = row["options"], row["option_kinds"]
        d = row["distractors"]
        negatives = d["choice"] + d["judgement"] + d["irrelevant"]
        assert row["solution"] not in negatives and len(set(negatives)) == 6
        if row["format"] == "yesno":
            assert opts == ["yes", "no"]
            assert (row["answer"] == "yes") == (row["candidate"] == row["solution"])
            assert row["candidate_kind"] in ("answer", "confusable", "irrelevant")
        else:
            assert len(opts) == {"mc4": 4, "mc7": 7}[row["format"]] == len(set(opts)) == len(kinds)
            assert opts[LETTERS.index(row["answer"])] == row["solution"]
            assert kinds.count("answer") == 1 and kinds[LETTERS.index(row["answer"])] == "answer"
            assert kinds.count("irrelevant") == {"mc4": 1, "mc7": 2}[row["format"]]
            question = row["prompt"][1]["content"][1]["text"]
            assert all(f"{LETTERS[i]}. {o}" in question for i, o in enumerate(opts))
        assert row["in_distribution"] == (row["category"] not in DEFAULT_OOD)


def test_eval_levels_are_balanced_and_use_train_thresholds(tiny_builds):
    ds = load_from_disk(str(tiny_builds["eval"]))
    items = {r["item_id"]: r["difficulty"] for r in ds.select_columns(["item_id", "difficulty"])}
    per_level = Counter(items.values())
    assert set(per_level) == set(LEVELS) and len(set(per_level.values())) == 1
    train_stats = json.loads((tiny_builds["train"] / STATS_FILE).read_text())
    record = json.loads((tiny_builds["eval"] / BUILD_FILE).read_text())
    assert record["thresholds"] == train_stats["thresholds"]
    low, high = record["thresholds"]
    for row in ds.select_columns(["difficulty", "difficulty_score"]):
        expected = (
            "easy"
            if row["difficulty_score"] < low
            else "middle"
            if row["difficulty_score"] < high
            else "hard"
        )
        assert row["difficulty"] == expected


def test_same_inputs_and_seed_give_identical_bytes(tinycoco, tmp_path, tiny_builds):
    ann, images = tinycoco / "instances.json", tinycoco / "images"
    config = BuildConfig("eval", stats=tiny_builds["train"])
    build(ann, images, tmp_path / "again", config, num_proc=1)
    files = sorted(p.name for p in (tiny_builds["eval"]).iterdir())
    assert files == sorted(p.name for p in (tmp_path / "again").iterdir())
    for name in files:
        assert (tmp_path / "again" / name).read_bytes() == (tiny_builds["eval"] / name).read_bytes(), name
    build(
        ann,
        images,
        tmp_path / "other_seed",
        BuildConfig("eval", stats=tiny_builds["train"], seed=1),
        num_proc=1,
    )
    a = (tiny_builds["eval"] / "data-00000-of-00001.arrow").read_bytes()
    assert (tmp_path / "other_seed" / "data-00000-of-00001.arrow").read_bytes() != a


@pytest.mark.parametrize("mode", ["segm", "hull", "bbox"])
def test_other_mask_modes_hide_the_target(tinycoco, tmp_path, coco, mode):
    config = BuildConfig("train", mask=MaskSpec(mode=mode, fill="gray", feather=2.0))
    build(tinycoco / "instances.json", tinycoco / "images", tmp_path / mode, config, num_proc=1)
    for row in load_from_disk(str(tmp_path / mode)).select(range(10)):
        target = coco.annToMask(coco.anns[row["ann_id"]]).astype(bool)
        assert (np.asarray(row["image"])[target] == 128).all()


def test_refuses_to_overwrite_and_leaves_nothing_on_failure(tinycoco, tmp_path, tiny_builds):
    ann, images = tinycoco / "instances.json", tinycoco / "images"
    with pytest.raises(BuildError, match="exists"):
        build(ann, images, tiny_builds["train"], BuildConfig("train"))
    impossible = BuildConfig("train", selection=BuildConfig("train").selection.__class__(min_context=1000))
    with pytest.raises(BuildError, match="no usable targets"):
        build(ann, images, tmp_path / "never", impossible)
    assert not (tmp_path / "never").exists()
    assert list(tmp_path.iterdir()) == []


def test_eval_without_stats_uses_its_own_thresholds(tinycoco, tmp_path, caplog):
    out = tmp_path / "eval"
    result = build(
        tinycoco / "instances.json",
        tinycoco / "images",
        out,
        BuildConfig("eval", formats=("mc4",), max_items=30),
        num_proc=1,
    )
    assert "no --stats" in caplog.text
    assert result.num_rows == 30 and result.rows_per_level == {lv: 10 for lv in LEVELS}


def test_mpcc_eval_file_roundtrip(tinycoco, tmp_path, tiny_builds):
    from mpcc.data.mpcc_eval import export_items

    exported = tmp_path / "mpcc_eval.json"
    counts = export_items(tiny_builds["eval"], exported)
    data = json.loads(exported.read_text())
    assert counts == {lv: len(data[lv]) for lv in LEVELS} and sum(counts.values()) > 0
    item = data["hard"][0]
    assert {
        "file_name",
        "bbox",
        "category_name",
        "choose_negtive_confusion",
        "judgement_negtive_confusion",
        "irrelevant_negtive",
    } <= set(item)
    # Their file as the item source: same items, levels and distractors, whatever our thresholds say.
    data["easy"], data["hard"] = data["hard"], data["easy"]
    swapped = tmp_path / "swapped.json"
    swapped.write_text(json.dumps(data))
    build(
        tinycoco / "instances.json",
        tinycoco / "images",
        tmp_path / "imported",
        BuildConfig("eval", mpcc_eval=swapped, formats=("mc7",)),
        num_proc=1,
    )
    rows = load_from_disk(str(tmp_path / "imported"))
    assert len(rows) == sum(counts.values())
    by_ann = {r["ann_id"]: r for r in rows}
    for lv in LEVELS:
        for it in data[lv]:
            row = by_ann[it["ann_id"]]
            assert row["difficulty"] == lv
            assert row["distractors"]["choice"] == it["choose_negtive_confusion"]
            assert sorted(row["options"]) == sorted(
                [it["category_name"]]
                + it["choose_negtive_confusion"]
                + it["judgement_negtive_confusion"]
                + it["irrelevant_negtive"]
            )


def test_supplied_distractors_override_computed(tinycoco, tmp_path, tiny_builds):
    ds = load_from_disk(str(tiny_builds["eval"]))
    row = ds[0]
    supplied = tmp_path / "guesses.jsonl"
    supplied.write_text(
        json.dumps(
            {"ann_id": row["ann_id"], "confusable": [row["solution"].upper(), "teapot", "teapot", "kettle"]}
        )
        + "\n"
    )
    build(
        tinycoco / "instances.json",
        tinycoco / "images",
        tmp_path / "out",
        BuildConfig("eval", stats=tiny_builds["train"], distractors=supplied, formats=("mc4",)),
        num_proc=1,
    )
    out = {r["ann_id"]: r for r in load_from_disk(str(tmp_path / "out"))}
    d = out[row["ann_id"]]["distractors"]
    assert d["choice"] == ["teapot", "kettle"]  # answer and duplicate dropped, order kept
    assert d["irrelevant"] == row["distractors"]["irrelevant"]  # not supplied: computed ones stay
    assert set(out[row["ann_id"]]["options"]) >= {"teapot", "kettle", row["solution"]}


def test_bad_distractor_file_is_named(tinycoco, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"ann_id": 1}\n{"ann_id": "x"}\n')
    with pytest.raises(BuildError, match=r"bad.jsonl: row 2"):
        build(
            tinycoco / "instances.json",
            tinycoco / "images",
            tmp_path / "out",
            BuildConfig("eval", distractors=bad),
        )
    assert not (tmp_path / "out").exists()


def test_difficulty_levels_separate_on_predictability(tiny_builds):
    """Easy targets are the ones their context predicts: the predictability part must differ by level."""
    from mpcc.data.build import load_stats

    stats, _ = load_stats(Path(tiny_builds["train"]))
    ds = load_from_disk(str(tiny_builds["train"])).select_columns(["difficulty", "difficulty_score"])
    means = {lv: np.mean([r["difficulty_score"] for r in ds if r["difficulty"] == lv]) for lv in LEVELS}
    assert means["easy"] < means["middle"] < means["hard"]


# ------------------------------------------------------------------ question formats of train builds

ALL_FORMATS = ("open", "mc4", "mc7", "yesno")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from mpcc.data.synthetic import generate_scenes

    root = tmp_path_factory.mktemp("format_scenes")
    generate_scenes(root, num_images=30, seed=0)
    return root


def _train(scenes: Path, out: Path, **config) -> list[dict]:
    """A lazy train build of the scenes with template traces; its rows as stored (no pixels)."""
    config = BuildConfig("train", template_traces=True, image_format="lazy", **config)
    build(scenes / "instances.json", scenes / "images", out, config, num_proc=1)
    return load_from_disk(str(out)).remove_columns("image").to_list()


@pytest.fixture(scope="module")
def mixed_rows(scenes, tmp_path_factory):
    return _train(scenes, tmp_path_factory.mktemp("mixed") / "train", formats=ALL_FORMATS)


def _question(row: dict) -> str:
    return row["prompt"][1]["content"][1]["text"]


def test_formats_default_per_split_and_eval_refuses_open():
    assert BuildConfig("train").formats == ("open",)
    assert BuildConfig("eval").formats == ("mc4", "mc7", "yesno")
    assert BuildConfig("train", formats=("yesno", "open")).formats == ("yesno", "open")
    with pytest.raises(ConfigError, match="`open`.*mc4 row"):
        BuildConfig("eval", formats=("open", "mc4"))
    with pytest.raises(ConfigError, match="subset of"):
        BuildConfig("train", formats=("open", "mc5"))
    with pytest.raises(ConfigError, match="without repeats"):
        BuildConfig("train", formats=("mc4", "mc4"))


def test_open_train_build_rows_ask_the_open_question(scenes, tmp_path):
    """The default train build: every row is the open question answered with its category, and its
    trace is the template trace of the category, as before train builds had formats."""
    rows = _train(scenes, tmp_path / "open")
    record = json.loads((tmp_path / "open" / BUILD_FILE).read_text())
    assert record["config"]["formats"] == ["open"] and len(rows) > 20
    question = prompts.open_question("black")
    for row in rows:
        assert row["prompt"] == prompts.conversation(question)
        assert (row["format"], row["options"], row["candidate"]) == ("open", [], "")
        assert row["answer"] == row["solution"] == row["category"]
        seed = target_seed(0, row["ann_id"])
        assert row["reasoning"] == template_trace(row["context"], row["solution"], seed=seed)


def test_template_trace_articles():
    """An before a vowel letter, "a" otherwise, in the listing and before the answer."""
    trace = template_trace(["apple"], "umbrella", seed=0)
    assert "an apple" in trace and trace.endswith("an umbrella, so the hidden object is an umbrella.")
    assert "a cup," in template_trace([], "cup", seed=0)


def test_mixed_train_build_asks_every_format(mixed_rows, scenes, tmp_path):
    assert set(Counter(r["format"] for r in mixed_rows)) == set(ALL_FORMATS)
    open_rows = _train(scenes, tmp_path / "open")
    assert [r["ann_id"] for r in mixed_rows] == [r["ann_id"] for r in open_rows]  # one row per target
    for row in mixed_rows:
        fmt, options, question = row["format"], row["options"], _question(row)
        if fmt == "open":
            assert question == prompts.open_question("black") and row["answer"] == row["solution"]
            assert options == [] and row["candidate"] == ""
        elif fmt == "yesno":
            assert options == ["yes", "no"]
            assert question == prompts.yesno_question("black", row["candidate"])
            assert (row["answer"] == "yes") == (row["candidate"] == row["category"])
        else:
            assert len(options) == len(set(options)) == {"mc4": 4, "mc7": 7}[fmt]
            assert options[LETTERS.index(row["answer"])] == row["category"]
            assert question == prompts.choice_question("black", options) and row["candidate"] == ""
    yes = sum(r["answer"] == "yes" for r in mixed_rows if r["format"] == "yesno")
    assert 0 < yes < sum(r["format"] == "yesno" for r in mixed_rows)  # the answer and negatives are asked


def test_mixed_train_build_is_deterministic_per_seed(mixed_rows, scenes, tmp_path):
    assert _train(scenes, tmp_path / "again", formats=ALL_FORMATS) == mixed_rows
    other = _train(scenes, tmp_path / "seed1", formats=ALL_FORMATS, seed=1)
    assert [r["format"] for r in other] != [r["format"] for r in mixed_rows]


def test_every_trace_completion_earns_the_full_rewards(mixed_rows):
    """The trained answer (letter, yes/no or name) after each row's trace passes every answer reward;
    a wrong letter or the opposite yes/no passes none."""
    columns = {key: [r[key] for r in mixed_rows] for key in ("solution", "format", "options", "answer")}
    traces = [trace_completion(r["reasoning"], target_answer(r)) for r in mixed_rows]
    assert exact_match_reward(traces, **columns) == [1.0] * len(traces)
    assert levenshtein_reward(traces, **columns) == [1.0] * len(traces)
    funcs, weights = resolve_rewards("paper")
    paper = sum(w * np.array(f(traces, **columns)) for f, w in zip(funcs, weights))
    assert paper.tolist() == pytest.approx([1.6] * len(traces))
    choice = [r for r in mixed_rows if r["format"] != "open"]
    wrong = [{"yes": "no", "no": "yes", "A": "B"}.get(r["answer"], "A") for r in choice]
    wrong_traces = [trace_completion(r["reasoning"], w) for r, w in zip(choice, wrong)]
    columns = {key: [r[key] for r in choice] for key in columns}
    for reward in (exact_match_reward, levenshtein_reward, paper_answer_reward):
        assert reward(wrong_traces, **columns) == [0.0] * len(choice), reward.__name__


def test_a_target_without_distractors_falls_back_or_is_rejected():
    from mpcc.data.answer_options import Distractors
    from mpcc.data.build import _train_rows

    row = {"ann_id": 7, "category": "cup", "solution": "cup", "context": ["bowl"]}
    none = {7: Distractors((), (), ())}
    rejected = Counter()
    assert _train_rows(row, none, BuildConfig("train", formats=("mc4", "yesno")), rejected) == []
    assert rejected == {"too_few_distractors_mc4_or_yesno": 1}
    (kept,) = _train_rows(row, none, BuildConfig("train", formats=("mc7", "open")), rejected)
    assert kept["format"] == "open" and rejected.total() == 1


def test_formats_from_the_command_line(scenes, tmp_path, capsys):
    from mpcc.cli import main

    args = ["--annotations", str(scenes / "instances.json"), "--images", str(scenes / "images")]
    code = main(["prepare", "eval", *args, "--out", str(tmp_path / "eval"), "--formats", "open"])
    assert code == 2 and "`open`" in capsys.readouterr().err and not (tmp_path / "eval").exists()
    out = tmp_path / "train"
    common = ["--out", str(out), "--image-format", "lazy", "--num-proc", "1"]
    assert main(["prepare", "train", *args, *common, "--formats", "open,mc4"]) == 0
    assert set(load_from_disk(str(out))["format"]) == {"open", "mc4"}
    assert json.loads((out / BUILD_FILE).read_text())["config"]["formats"] == ["open", "mc4"]
    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    assert "(default: open for train, mc4,mc7,yesno for eval)" in " ".join(capsys.readouterr().out.split())


# ------------------------------------------------------------------ render processes


def test_a_dead_render_process_ends_the_build_with_an_error_not_a_hang(scenes, tmp_path):
    """A script that builds without `if __name__ == "__main__":`: each spawned render process imports the
    script, starts a build of its own while bootstrapping and dies. multiprocessing.Pool replaced such
    workers and waited forever; the build must stop, say why, and leave nothing at --out."""
    out = tmp_path / "train"
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from mpcc.data.build import BuildConfig, build\n"
        f"build({str(scenes / 'instances.json')!r}, {str(scenes / 'images')!r}, {str(out)!r}, "
        "BuildConfig('train'), num_proc=2)\n"
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert proc.returncode != 0
    assert (
        "BuildError: a render process died" in proc.stderr and '`if __name__ == "__main__":`' in proc.stderr
    )
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["unguarded.py"]


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _render_processes(proc: subprocess.Popen, workers: int) -> list[psutil.Process]:
    """The build's child processes, once its `workers` render processes have started."""
    main = psutil.Process(proc.pid)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        children = main.children(recursive=True)
        with contextlib.suppress(psutil.Error):
            if sum("spawn_main" in " ".join(p.cmdline()) for p in children) >= workers:
                return children
        time.sleep(0.05)
    raise AssertionError(f"the build never ran {workers} render processes (exit code {proc.poll()})")


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_render_processes_die_with_the_build(scenes, tmp_path, how):
    """`mpcc prepare` killed mid-render (an OOM kill, scancel): no render process (nor multiprocessing's
    resource tracker) outlives it. The build is stopped (SIGSTOP) once its workers run, so it cannot
    finish first; a terminated build also leaves nothing beside --out."""
    out = tmp_path / "train"
    command = [
        sys.executable,
        "-m",
        "mpcc",
        "prepare",
        "train",
        "--annotations",
        str(scenes / "instances.json"),
    ]
    command += ["--images", str(scenes / "images"), "--out", str(out), "--num-proc", "3"]
    log = tmp_path / "stderr.txt"  # a file, not a pipe: orphans would hold a pipe open
    with open(log, "w") as stderr:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
    children = []
    try:
        children = _render_processes(proc, workers=3)
        proc.send_signal(signal.SIGSTOP)
        proc.send_signal(getattr(signal, how))
        proc.send_signal(signal.SIGCONT)
        assert proc.wait(timeout=60) != 0
        deadline = time.monotonic() + 30  # a loaded machine schedules them late
        while any(map(_alive, children)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p.cmdline() for p in children if _alive(p)]
        if how == "SIGTERM":
            assert [p.name for p in tmp_path.iterdir()] == [log.name], log.read_text()
    finally:  # whatever happened, leave no process behind
        proc.kill()
        for process in children:
            with contextlib.suppress(psutil.Error):
                process.kill()


def test_the_build_record_identifies_the_inputs_content(scenes, tmp_path):
    """Rebuilt from the same files, a build's record is the same; after the distractors file or one
    image is edited in place (same paths), it differs, so results keyed on it are not reused."""
    images = tmp_path / "images"
    shutil.copytree(scenes / "images", images)
    distractors = tmp_path / "distractors.jsonl"
    distractors.write_text(json.dumps({"ann_id": 1, "confusable": ["cat"], "irrelevant": ["kite"]}) + "\n")
    config = BuildConfig("train", formats=("mc4",), distractors=distractors)

    def record(name: str) -> str:
        build(scenes / "instances.json", images, tmp_path / name, config, num_proc=1)
        return (tmp_path / name / BUILD_FILE).read_text()

    first = record("first")
    assert record("again") == first
    distractors.write_text(json.dumps({"ann_id": 1, "confusable": ["dog"], "irrelevant": ["kite"]}) + "\n")
    new_distractors = record("new_distractors")
    file = images / load_from_disk(str(tmp_path / "first"))[0]["file_name"]
    with Image.open(file) as im:
        edited = im.convert("RGB")
    edited.putpixel((0, 0), tuple(255 - v for v in edited.getpixel((0, 0))))
    edited.save(file, format=im.format)
    assert len({first, new_distractors, record("new_image")}) == 3
