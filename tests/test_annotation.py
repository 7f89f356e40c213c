"""Reasoning traces: verification, prompts, progress log, the local teacher, import, scene traces."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image

from mpcc.annotation.annotate import annotate
from mpcc.annotation.config import AnnotateConfig
from mpcc.annotation.importing import UNMATCHED_FILE, import_traces, read_traces
from mpcc.annotation.prompts import GUIDED_SYSTEM, GUIDED_TASK, PROMPT_VERSION, teacher_messages
from mpcc.annotation.store import PROGRESS_FILE, ProgressLog, check_run
from mpcc.annotation.teachers import LocalTeacher, TeacherError
from mpcc.annotation.verify import verify
from mpcc.cli import main
from mpcc.data.build import BuildConfig, build
from mpcc.data.prompts import conversation, open_question
from mpcc.data.render import load_dataset
from mpcc.data.synthetic import SCENE_WORDS, SCENES, TRACES_FILE, generate_scenes
from mpcc.generation.decoding import Decoding
from mpcc.generation.endpoint import api_base, message_text, openai_messages
from mpcc.rewards import exact_match_reward, format_reward, trace_completion
from mpcc.text.names import mentions
from mpcc.training.data import load_train_dataset

GOOD = "Plates and forks are on the table. Next to the plates stands a drink, so it is a cup."

# (answer, solution, expected rejection or None when kept)
VERDICTS = [
    (f"<think> {GOOD}</think><answer>cup</answer>", "cup", None),
    (f"<think>{GOOD}</think>\n<answer> Cups </answer>", "cup", None),  # plural, spacing
    (f"{GOOD} <answer>cup</answer>", "cup", "format"),  # no think block
    (f"<think> {GOOD}</think><answer>cup</answer> extra", "cup", "format"),
    (f"<think> {GOOD}</think><answer>bowl</answer>", "cup", "wrong_answer"),
    ("<think> </think><answer>cup</answer>", "cup", "empty_reasoning"),
    (
        "<think> A cup is hidden. Plates are around, so it is a cup.</think><answer>cup</answer>",
        "cup",
        "answer_first",
    ),
    (
        "<think> Three CUPS stand here. So: a cup.</think><answer>cup</answer>",
        "cup",
        "answer_first",
    ),  # plural
    ("<think> A sofa is hidden. So it is a couch.</think><answer>couch</answer>", "couch", "answer_first"),
    ("<think> The hot-dog stand. So a hot dog.</think><answer>hot dog</answer>", "hot dog", "answer_first"),
    ("<think> So it is a cup.</think><answer>cup</answer>", "cup", "answer_first"),  # one sentence
    (
        "<think> Plates are around. Something to drink from.</think><answer>cup</answer>",
        "cup",
        "no_conclusion",
    ),
    ("<think> In the cupboard. Then a cup.</think><answer>cup</answer>", "cup", None),  # cupboard != cup
    ("<think> People walk by. One more person.</think><answer>person</answer>", "person", "answer_first"),
    (  # "etc." ends no sentence (the reasoning steps' rule): the first sentence names the cup
        "<think> Plates, forks, etc. suggest a cup. So it is a cup.</think><answer>cup</answer>",
        "cup",
        "answer_first",
    ),
]


@pytest.mark.parametrize(("text", "solution", "reason"), VERDICTS)
def test_verification_table(text, solution, reason):
    verdict = verify(text, solution)
    assert verdict.reason == reason and verdict.ok is (reason is None)
    if verdict.ok:  # what is stored trains as SFT's target and passes the same rewards
        target = trace_completion(verdict.reasoning, solution)
        assert format_reward([target]) == [1.0] and exact_match_reward([target], solution=[solution]) == [1.0]
        assert "<think>" not in verdict.reasoning and verdict.reasoning == verdict.reasoning.strip()
    else:
        assert verdict.reasoning is None


def test_length_bounds_and_names():
    text, n = f"<think> {GOOD}</think><answer>cup</answer>", len(GOOD.split())
    assert verify(text, "cup", min_words=n + 1).reason == "too_short"
    assert verify(text, "cup", max_words=n - 1).reason == "too_long"
    assert verify(text, "cup", min_words=n, max_words=n).ok
    assert mentions("a TV-set", "tv") and mentions("the television", "tv")
    assert not mentions("a category", "cat") and not mentions("cupboards", "cup")
    assert mentions("two hotdogs", "hot dog") and not mentions("", "cup")


def test_prompts_by_mode():
    row = {
        "solution": "truck",
        "context": ["bus", "car"],
        "prompt": [
            {"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "Q?"}]}
        ],
    }
    guided = teacher_messages(row, "guided", "black")
    text = " ".join(p["text"] for m in guided for p in m["content"] if p["type"] == "text")
    assert "The hidden object is: truck" in text and "bus, car" in text and "black mask" in text
    assert [p["type"] for p in guided[1]["content"]] == ["image", "text"]
    assert teacher_messages(row, "blind", "black") == row["prompt"]  # the student's own prompt
    # a multiple-choice or yes/no row's trace must still name the object: blind asks the open question
    mc = {**row, "format": "mc4", "options": ["bus", "truck", "cup", "dog"], "answer": "B"}
    assert teacher_messages(mc, "blind", "gray") == conversation(open_question("gray"))
    assert teacher_messages({**row, "format": "open"}, "blind", "black") == row["prompt"]
    with pytest.raises(ValueError, match="mode"):
        teacher_messages(row, "oracle", "black")


def test_teacher_wording_is_pinned_to_its_version():
    """A change to the teacher's wording must bump PROMPT_VERSION (and then this pin)."""
    wording = hashlib.sha256((GUIDED_SYSTEM + GUIDED_TASK).encode()).hexdigest()[:12]
    assert (PROMPT_VERSION, wording) == ("mpcc-annotate-1", "4304c572e53e")


def test_chat_completion_helpers():
    messages = teacher_messages({"solution": "cup", "context": []}, "guided", "gray")
    converted = openai_messages(messages, Image.new("RGB", (8, 6)))
    assert isinstance(converted[0]["content"], str) and converted[0]["role"] == "system"
    image, text = converted[1]["content"]
    assert image["image_url"]["url"].startswith("data:image/png;base64,") and "cup" in text["text"]
    assert (
        message_text({"content": "<think> a</think><answer>b</answer>"})
        == "<think> a</think><answer>b</answer>"
    )
    assert message_text({"reasoning_content": "x y", "content": "<answer>b</answer>"}) == (
        "<think>x y</think><answer>b</answer>"
    )
    assert message_text({"content": [{"type": "text", "text": "hi"}]}) == "hi"
    assert api_base("http://h:8000") == "http://h:8000/v1" and api_base("http://h/v1/") == "http://h/v1"


def test_progress_log_drops_a_partial_line_and_duplicates(tmp_path):
    path = tmp_path / PROGRESS_FILE
    good = [{"ann_id": 1, "attempt": 1, "ok": False}, {"ann_id": 1, "attempt": 1, "ok": True}]
    path.write_text("".join(json.dumps(r) + "\n" for r in good) + '{"ann_id": 2, "att')
    with ProgressLog(path) as log:
        assert log.attempts(1) == [good[0]] and log.attempts(2) == []  # the first of a repeated key is kept
        log.append({"ann_id": 2, "attempt": 1, "ok": True})
        log.append({"ann_id": 2, "attempt": 1, "ok": False})  # a repeated key is not written again
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 3 and lines[-1] == {"ann_id": 2, "attempt": 1, "ok": True}
    path.write_text("not json\n")
    with pytest.raises(ValueError, match="line 1"):
        ProgressLog(path)
    check_run(tmp_path / "w", {"mode": "guided"})
    check_run(tmp_path / "w", {"mode": "guided"})
    with pytest.raises(ValueError, match="another annotation run"):
        check_run(tmp_path / "w", {"mode": "blind"})


def _decisions_are_right(out: Path) -> list[dict]:
    """Every stored decision is what `verify` says about the stored teacher output."""
    rows = load_dataset(out).select_columns(
        ["solution", "reasoning", "reasoning_verified", "reasoning_rejection", "teacher_output"]
    )
    rows = [dict(zip(rows.column_names, values)) for values in zip(*rows[:].values())]
    for row in rows:
        verdict = verify(row["teacher_output"], row["solution"])
        assert (row["reasoning_verified"], row["reasoning_rejection"]) == (verdict.ok, verdict.reason)
        assert row["reasoning"] == verdict.reasoning
    return rows


def test_local_teacher_annotates_resumes_and_samples_more(tiny_builds, tmp_path):
    """A tiny random model as teacher: its answers fail verification, reported by reason, with provenance."""
    decoding = Decoding(max_new_tokens=12, do_sample=True)
    teacher = LocalTeacher("tiny:qwen2_5_vl", decoding, batch_size=2)
    out = tmp_path / "annotated"
    config = AnnotateConfig(limit=3)
    result = annotate(tiny_builds["train"], out, teacher, config)
    assert result.counts["rows"] == 3 and result.new_answers == 3 and teacher.stats["requests"] == 3
    assert result.counts["kept"] + sum(result.counts["rejected"].values()) == 3
    data = load_dataset(out)
    assert len(data) == 3 and data["ann_id"] == load_dataset(tiny_builds["train"])["ann_id"][:3]
    assert set(data["reasoning_teacher"]) == {"tiny:qwen2_5_vl"} and set(data["reasoning_mode"]) == {"guided"}
    assert set(data["reasoning_prompt_version"]) == {PROMPT_VERSION} and data["reasoning_attempts"] == [
        1,
        1,
        1,
    ]
    assert all(data["reasoning_date"]) and all(data["teacher_output"])
    _decisions_are_right(out)
    record = json.loads((out / "mpcc_build.json").read_text())
    assert record["annotation"]["rows"] == 3 and record["annotation"]["teacher"] == "tiny:qwen2_5_vl"
    assert (out / "mpcc_stats.json").is_file()  # still usable as --stats

    again = annotate(tiny_builds["train"], out, teacher, config, overwrite=True)  # resumes: nothing to ask
    assert again.new_answers == 0 and again.counts == result.counts and teacher.stats["requests"] == 3
    with pytest.raises(ValueError, match="exists"):
        annotate(tiny_builds["train"], out, teacher, config)
    with pytest.raises(ValueError, match="another annotation run"):  # blind answers never mix in
        annotate(tiny_builds["train"], out, teacher, AnnotateConfig(mode="blind", limit=3), overwrite=True)

    blind = tmp_path / "blind"
    result = annotate(tiny_builds["train"], blind, teacher, AnnotateConfig(mode="blind", tries=2, limit=2))
    _decisions_are_right(blind)
    data = load_dataset(blind)
    assert set(data["reasoning_mode"]) == {"blind"} and len(data) == 2
    # a second try only for a row whose first answer failed; every answer saved once
    assert all(n == (1 if ok else 2) for n, ok in zip(data["reasoning_attempts"], data["reasoning_verified"]))
    lines = [json.loads(line) for line in (result.work_dir / PROGRESS_FILE).read_text().splitlines()]
    assert sorted((r["ann_id"], r["attempt"]) for r in lines) == sorted(
        (a, k) for a, n in zip(data["ann_id"], data["reasoning_attempts"]) for k in range(1, n + 1)
    )
    assert result.new_answers == sum(data["reasoning_attempts"])
    with pytest.raises(ValueError, match="sampling"):
        greedy = LocalTeacher("tiny:qwen2_5_vl", Decoding(max_new_tokens=4), batch_size=2)
        annotate(tiny_builds["train"], tmp_path / "g", greedy, AnnotateConfig(mode="blind", tries=2))

    # answers over max_answer_chars are teacher errors, never saved; none at all is an error, no output
    with pytest.raises(TeacherError, match=r"all 2 requests .*\(2 of 2\): answer longer than 1 characters"):
        annotate(
            tiny_builds["train"], tmp_path / "long", teacher, AnnotateConfig(limit=2, max_answer_chars=1)
        )
    assert teacher.stats["too_long"] == 2 and not (tmp_path / "long").exists()
    assert (tmp_path / "long.annotate" / PROGRESS_FILE).read_text() == ""


def _good(solution: str) -> str:
    return (
        f"Several things are visible around the mask. Such scenes hold a {solution}, so it is a {solution}."
    )


def test_import_joins_by_id_image_and_box_and_reports_unmatched(tiny_builds, tmp_path, capsys):
    rows = load_dataset(tiny_builds["train"]).select_columns(
        ["ann_id", "image_id", "file_name", "bbox", "solution"]
    )
    rows = [dict(zip(rows.column_names, values)) for values in zip(*rows[:].values())]
    per_image: dict[int, list[dict]] = {}
    for r in rows:
        per_image.setdefault(r["image_id"], []).append(r)
    unique = next(
        r for r in rows if [o["solution"] for o in per_image[r["image_id"]]].count(r["solution"]) == 1
    )
    a, b, c, d, e = [r for r in rows if r is not unique][:5]
    twice = next(
        r for r in rows if [o["solution"] for o in per_image[r["image_id"]]].count(r["solution"]) > 1
    )
    x, y, w, h = b["bbox"]
    traces = [
        {
            "ann_id": a["ann_id"],
            "reasoning": _good(a["solution"]),
            "teacher": "big-vlm",
            "prompt_version": "v7",
        },
        {  # the authors' layout: image file + box + category, the trace under cot_data
            "file_name": f"train2017/{b['file_name']}",
            "bbox": [x + 0.5, y, w, h],
            "category_name": b["solution"],
            "cot_data": f"<think> {_good(b['solution'])}</think><answer>{b['solution']}</answer>",
        },
        {
            "image_id": unique["image_id"],
            "category": unique["solution"],
            "cot_data": {"think": _good(unique["solution"])},
        },
        {
            "ann_id": c["ann_id"],
            "cot_data": f"<think> {_good(c['solution'])}</think><answer>nothing</answer>",
        },
        {"annotation_id": d["ann_id"], "trace": f"The {d['solution']} is hidden. So a {d['solution']}."},
        {"ann_id": e["ann_id"], "reasoning": "Things are around. Nothing more to say."},  # tried first, fails
        {"ann_id": e["ann_id"], "reasoning": _good(e["solution"])},  # kept: two tries
        {"ann_id": 10**12, "reasoning": "x"},
        {"file_name": "elsewhere.jpg", "bbox": [0, 0, 5, 5], "reasoning": "x"},
        {"image_id": b["image_id"], "bbox": [0, 0, 1, 1], "category_name": b["solution"], "reasoning": "x"},
        {"ann_id": a["ann_id"], "image_id": b["image_id"] + 10**9, "reasoning": "x"},
        {"reasoning": "no key"},
        {"image_id": twice["image_id"], "category": twice["solution"], "reasoning": "x"},  # which one?
    ]
    file = tmp_path / "traces.jsonl"
    file.write_text("".join(json.dumps(t) + "\n" for t in traces))
    out = tmp_path / "imported"
    assert (
        main(["annotate", "import", str(file), "--data", str(tiny_builds["train"]), "--out", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    assert "kept 4 of" in printed and "rows without a trace" in printed

    data = load_dataset(out)
    by_ann = {r: i for i, r in enumerate(data["ann_id"])}
    assert len(data) == len(rows)
    for row, teacher in ((a, "big-vlm"), (b, "import:traces.jsonl"), (unique, "import:traces.jsonl")):
        i = by_ann[row["ann_id"]]
        assert data["reasoning_verified"][i] and data["reasoning"][i] == _good(row["solution"])
        assert data["reasoning_teacher"][i] == teacher and data["reasoning_mode"][i] == "import"
    assert data["reasoning_prompt_version"][by_ann[a["ann_id"]]] == "v7"
    assert data["reasoning_rejection"][by_ann[c["ann_id"]]] == "wrong_answer"
    assert data["reasoning_rejection"][by_ann[d["ann_id"]]] == "answer_first"
    assert (
        data["reasoning_verified"][by_ann[e["ann_id"]]]
        and data["reasoning_attempts"][by_ann[e["ann_id"]]] == 2
    )
    record = json.loads((out / "mpcc_build.json").read_text())["annotation"]
    assert record["kept"] == 4 and record["rejected"]["no_trace"] == len(rows) - 6
    assert record["file_sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()  # content, not only path
    assert record["unmatched_traces"] == {
        "ambiguous": 1,
        "image_mismatch": 1,
        "no_box_match": 1,
        "no_image": 1,
        "no_key": 1,
        "no_row": 1,
    }
    unmatched = json.loads((out / UNMATCHED_FILE).read_text())
    assert sorted(u["line"] for u in unmatched["traces"]) == [8, 9, 10, 11, 12, 13]
    assert (
        len(unmatched["rows_without_trace"]) == len(rows) - 6
        and a["ann_id"] not in unmatched["rows_without_trace"]
    )
    assert len(load_train_dataset(str(out), "sft")) == 4  # SFT trains on the verified traces only

    listed = tmp_path / "traces.json"  # the same traces as a JSON list
    listed.write_text(json.dumps(traces))
    assert import_traces(listed, tiny_builds["train"], tmp_path / "again").counts == {
        "rows": len(rows),
        "kept": 4,
        "rejected": record["rejected"],
    }


def test_import_errors_name_the_file_and_line(tiny_builds, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"ann_id": 1, "reasoning": "ok"}\n{"ann_id": 2, "reasoning": \n')
    with pytest.raises(ValueError, match=r"bad.jsonl: line 2 is not JSON"):
        read_traces(bad)
    bad.write_text('{"ann_id": 1, "reasoning": "ok"}\n\n{"ann_id": 2, "cot_data": ["a"]}\n')
    with pytest.raises(ValueError, match=r"line 3: no trace"):
        read_traces(bad)
    bad.write_text('[{"ann_id": "x1", "reasoning": "ok"}]')
    with pytest.raises(ValueError, match=r"item 1: ann_id must be an integer"):
        read_traces(bad)
    out = tmp_path / "out"
    assert main(["annotate", "import", str(bad), "--data", str(tiny_builds["train"]), "--out", str(out)]) == 2
    assert "item 1" in capsys.readouterr().err and not out.exists()
    assert main(["annotate", "import", str(bad), "--out", str(out)]) == 2  # no --data
    assert (
        main(["annotate", str(tiny_builds["eval"]), "--teacher", "tiny:qwen2_5_vl", "--out", str(out)]) == 2
    )
    assert "not a train build" in capsys.readouterr().err and not out.exists()


def test_scene_traces_are_true_verified_and_import_into_a_build(tmp_path):
    plain = generate_scenes(tmp_path / "plain", num_images=16, seed=3)
    scenes = generate_scenes(tmp_path / "scenes", num_images=16, seed=3, traces=True)
    assert scenes.read_bytes() == plain.read_bytes()  # same scenes with or without traces
    assert (tmp_path / "scenes/images/000000000007.jpg").read_bytes() == (
        tmp_path / "plain/images/000000000007.jpg"
    ).read_bytes()
    coco = json.loads(scenes.read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    anns = {a["id"]: a for a in coco["annotations"]}
    traces = [json.loads(line) for line in (tmp_path / "scenes" / TRACES_FILE).read_text().splitlines()]
    assert sorted(t["ann_id"] for t in traces) == sorted(i for i, a in anns.items() if not a["iscrowd"])
    scene_of = {words: name for name, words in SCENE_WORDS.items()}
    links = set()
    for t in traces:
        ann = anns[t["ann_id"]]
        target = t["category_name"]
        assert target == names[ann["category_id"]] and t["image_id"] == ann["image_id"]
        verdict = verify(t["cot_data"], target)
        assert verdict.ok, t
        first, link = verdict.reasoning.split(". ", 1)
        others = [names[o["category_id"]] for o in coco["annotations"] if o["image_id"] == ann["image_id"]]
        others.remove(target)
        place, _, listed = first.removeprefix("This is ").partition(", with ")
        scene = SCENES[scene_of[place]]
        if listed:  # the context it names is really in the image
            assert set(listed.removesuffix(" around the mask").replace(" and ", ", ").split(", ")) <= set(
                others
            )
        if link.startswith("In "):  # the scene's rules expect the object
            assert target in scene.categories and target not in others
        elif link.startswith("Nothing usual"):
            assert target not in scene.categories and target not in others
        else:
            assert "another" in link and target in others
        links.add(link.split(" ")[0])
    assert links == {"In", "Nothing", "The"}  # all three kinds of reasoning occur
    # a build in every question format: the traces reason about the object whatever the row asks
    config = BuildConfig("train", formats=("open", "mc4", "mc7", "yesno"))
    build(scenes, tmp_path / "scenes" / "images", tmp_path / "train", config, num_proc=1)
    result = import_traces(tmp_path / "scenes" / TRACES_FILE, tmp_path / "train", tmp_path / "annotated")
    assert result.counts["kept"] == result.counts["rows"] > 10 and result.rows_without_trace == 0
    assert result.unmatched_traces == {"no_row": len(traces) - result.counts["rows"]}  # not chosen as targets
    question = ["format", "options", "answer", "candidate", "prompt"]
    source = load_dataset(tmp_path / "train").select_columns(question).to_list()
    assert load_dataset(tmp_path / "annotated").select_columns(question).to_list() == source
    assert len({row["format"] for row in source}) > 1
