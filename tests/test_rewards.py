"""Rewards: expected values on real-looking completions, MC / yes-no grading, the paper's definitions,
presets, and fuzzing that every reward returns finite in-range floats for any input."""

from __future__ import annotations

import math
import re
import time

import Levenshtein
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpcc.rewards import (
    PRESETS,
    REWARDS,
    exact_match_reward,
    format_reward,
    levenshtein_reward,
    paper_answer_reward,
    paper_format_reward,
    resolve_rewards,
    target_answer,
    trace_completion,
)
from mpcc.text.answers import extract_answer
from mpcc.text.names import normalize, variants

# The authors' code (train_script/reward_zoo.py), verbatim in its logic: the references ours must equal.
PAPER_FORMAT = re.compile(r"^<think>.*?</think>.*?<answer>.*?</answer>$", re.DOTALL)


def authors_format(completion: str) -> float:
    return 0.6 if PAPER_FORMAT.match(completion) else 0.0


def authors_answer(completion: str, solution: str) -> float:
    if "</think>" not in completion:
        return 0.0
    t = completion.split("</think>")[-1].replace("<answer>", "").replace("</answer>", "").strip()
    return Levenshtein.ratio(t, solution)


RANGES = {
    "format": {0.0, 1.0},
    "exact_match": {0.0, 1.0},
    "levenshtein": (0.0, 1.0),
    "paper_format": {0.0, 0.6},
    "paper_answer": (0.0, 1.0),
}
THINK = "<think>A saucer and a spoon sit by the mask on the breakfast table.</think>"


def answered(answer: str) -> str:
    return f"{THINK}<answer>{answer}</answer>"


def ratio(a: str, b: str, lcs: int) -> float:
    """Levenshtein.ratio by hand: 1 - (insertions + deletions) / total length, from the LCS length."""
    return 1 - (len(a) + len(b) - 2 * lcs) / (len(a) + len(b))


# ------------------------------------------------------------------------------ completion table

# id: (completion, solution, format, exact_match, levenshtein, paper_format, paper_answer)
# fmt: off
CASES = {
    "well_formed": (answered("cup"), "cup", 1, 1, 1, 0.6, 1),
    # Ours strips the completion; the paper's match fails on the leading newline, its answer strips.
    "whitespace_around": (f"\n{THINK}\n<answer> cup </answer>\n", "cup", 1, 1, 1, 0, 1),
    # The paper's `$` accepts one final newline, not two.
    "final_newline": (answered("cup") + "\n", "cup", 1, 1, 1, 0.6, 1),
    "two_final_newlines": (answered("cup") + "\n\n", "cup", 1, 1, 1, 0, 1),
    "missing_think": ("<answer>cup</answer>", "cup", 0, 1, 1, 0, 0),
    "answer_before_think": ("<answer>cup</answer><think>It is a cup.</think>", "cup", 0, 1, 1, 0, 0),
    # Paper: the text after </think> is "cup" once the lone tag is removed.
    "unclosed_answer": (f"{THINK}<answer>cup", "cup", 0, 0, 0, 0, 1),
    "unclosed_think": ("<think>Breakfast, so <answer>cup</answer>", "cup", 0, 1, 1, 0, 0),
    "two_answers": (answered("bowl</answer><answer>cup"), "cup", 0, 1, 1, 0.6, ratio("bowlcup", "cup", 3)),
    "nested_answer": (answered("<answer>cup"), "cup", 0, 1, 1, 0.6, 1),
    "extra_text_after": (answered("cup") + " Done.", "cup", 0, 1, 1, 0, ratio("cup Done.", "cup", 3)),
    "text_between": (f"{THINK} So: <answer>cup</answer>", "cup", 0, 1, 1, 0.6, ratio("So: cup", "cup", 3)),
    "uppercase": (answered("CUP"), "cup", 1, 1, 1, 0.6, 0),
    "capitalised": (answered("Cup"), "cup", 1, 1, 1, 0.6, ratio("Cup", "cup", 2)),
    "plural": (answered("cups"), "cup", 1, 1, 1, 0.6, ratio("cups", "cup", 3)),
    "irregular_plural": (answered("knives"), "knife", 1, 1, 1, 0.6, ratio("knives", "knife", 4)),
    "synonym": (answered("sofa"), "couch", 1, 1, 1, 0.6, ratio("sofa", "couch", 1)),
    "article": (answered("a cup"), "cup", 1, 1, 1, 0.6, ratio("a cup", "cup", 3)),
    "punctuation": (answered("Cup."), "cup", 1, 1, 1, 0.6, ratio("Cup.", "cup", 2)),
    "hyphenated": (answered("hot-dog"), "hot dog", 1, 1, 1, 0.6, ratio("hot-dog", "hot dog", 6)),
    "joined": (answered("cellphone"), "cell phone", 1, 1, 1, 0.6, ratio("cellphone", "cell phone", 9)),
    "near_miss": (answered("cap"), "cup", 1, 0, ratio("cap", "cup", 2), 0.6, ratio("cap", "cup", 2)),
    "wrong": (answered("dog"), "cup", 1, 0, 0, 0.6, 0),
    # Ours compares normalised "it is probably a cup" (best against "cup"); the paper the raw text.
    "sentence": (answered("It is probably a cup."), "cup", 1, 0, ratio("it is probably a cup", "cup", 3),
                 0.6, ratio("It is probably a cup.", "cup", 3)),
    "empty_answer": (answered("  "), "cup", 0, 0, 0, 0.6, 0),
    "no_tags": ("cup", "cup", 0, 0, 0, 0, 0),
    "empty": ("", "cup", 0, 0, 0, 0, 0),
    "think_only": (THINK, "cup", 0, 0, 0, 0, 0),
    "non_string_solution": (answered("7"), 7, 1, 1, 1, 0.6, 1),
}
# fmt: on


def _call(name: str, completions: list, solutions: list, **kwargs) -> list[float]:
    return REWARDS[name](completions=completions, solution=solutions, **kwargs)


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_completion_table(case):
    completion, solution, *expected = CASES[case]
    for name, want in zip(REWARDS, expected):
        assert _call(name, [completion], [solution]) == [pytest.approx(want)], (case, name)


def test_whole_table_in_one_batch_matches_rows():
    completions = [c[0] for c in CASES.values()]
    solutions = [c[1] for c in CASES.values()]
    for name in REWARDS:
        batch = _call(name, completions, solutions)
        rows = [_call(name, [c], [s])[0] for c, s in zip(completions, solutions)]
        assert batch == rows


def _conversational(text: str) -> list[list]:
    half = len(text) // 2
    return [
        [{"role": "assistant", "content": text}],
        [{"role": "assistant", "content": [{"type": "text", "text": text}]}],
        [
            {
                "role": "assistant",
                "content": [{"type": "text", "text": text[:half]}, {"type": "text", "text": text[half:]}],
            }
        ],
        # Non-text parts and non-assistant messages carry no completion text.
        [
            {"role": "tool", "content": "<answer>dog</answer>"},
            {"role": "assistant", "content": [{"type": "image"}, {"type": "text", "text": text}]},
        ],
    ]


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_conversational_equals_plain(case):
    completion, solution, *_ = CASES[case]
    for name in REWARDS:
        plain = _call(name, [completion], [solution])
        for form in _conversational(completion):
            assert _call(name, [form], [solution]) == plain, (case, name, form)


def test_none_content_is_empty():
    for name in REWARDS:
        assert _call(name, [[{"role": "assistant", "content": None}], None], ["cup", "cup"]) == [0.0, 0.0]


# --------------------------------------------------------------------------- answer and names


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>x</think><answer> cup </answer>", "cup"),
        ("<think>maybe <answer>bowl</answer></think><answer>cup</answer>", "cup"),
        # An answer block inside thinking counts only when none follows </think>.
        ("<think>maybe <answer>bowl</answer></think> no idea", "bowl"),
        ("<think>a</think><answer>bowl</answer><answer>cup</answer>", "cup"),
        ("<think>a</think><answer>cup</answer><answer>unclosed", "cup"),
        ("<think>a</think><answer><answer>cup</answer>", "cup"),
        ("<answer>cup</answer>", "cup"),
        ("<think>a</think><answer></answer>", ""),
        ("<think>a</think><answer>cup", None),
        ("</answer>cup<answer>", None),
        ("cup", None),
        ("", None),
        (None, None),
        ([{"role": "assistant", "content": "<answer>cup</answer>"}], "cup"),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  The  Cup! ", "cup"),
        ("An apple", "apple"),
        ("a", "a"),
        ("the", "the"),
        ("T.V.", "tv"),
        ("hot-dog", "hot dog"),
        ("ＣＵＰ", "cup"),
        ("ﬁre hydrant", "fire hydrant"),
        ("snow_board\n\tkit", "snow board kit"),
        ("«teddy bear»", "teddy bear"),
        ("", ""),
    ],
)
def test_normalize(text, expected):
    assert normalize(text) == expected


@pytest.mark.parametrize(
    ("name", "accepted", "rejected"),
    [
        ("cup", {"cup", "cups"}, {"cupses", "mug", "bowl"}),
        ("wine glass", {"wine glass", "wine glasses", "wineglass"}, {"glass"}),
        ("bus", {"bus", "buses"}, {"bu"}),
        ("knife", {"knife", "knives"}, {"knifes"}),
        ("person", {"person", "people"}, {"persons"}),
        ("mouse", {"mouse", "mice"}, set()),
        ("sheep", {"sheep"}, {"sheeps"}),
        ("skis", {"skis", "ski"}, {"skises"}),
        ("hot dog", {"hot dog", "hotdog", "hot dogs", "hotdogs"}, {"dog"}),
        ("teddy bear", {"teddy bear", "teddybear", "teddy bears"}, {"bear"}),
        ("tv", {"tv", "tvs", "television", "tv monitor"}, {"laptop"}),
        ("cell phone", {"cell phone", "cellphone", "mobile phone", "phone", "phones"}, set()),
        ("airplane", {"aeroplane", "plane", "airplanes"}, set()),
        ("dining table", {"table", "dining table"}, set()),
        ("hair drier", {"hair dryer", "hairdryer"}, set()),
        ("sports ball", {"ball", "sports ball"}, set()),
        ("donut", {"doughnut", "donuts"}, set()),
        ("motorcycle", {"motorbike"}, {"bicycle"}),
        ("Potted Plant", {"plant", "potted plant"}, set()),
        # Lookups work from any member of a synonym group.
        ("sofa", {"couch"}, set()),
    ],
)
def test_variants(name, accepted, rejected):
    forms = variants(name)
    assert accepted <= forms
    assert not rejected & forms
    assert all(form == normalize(form) for form in forms)


def test_variants_of_missing_names_are_empty():
    assert variants(None) == set()
    assert variants(" !! ") == set()


# ---------------------------------------------------------------------------- multiple choice

MC4 = {"solution": "cup", "format": "mc4", "options": ["bowl", "cup", "dog", "laptop"], "answer": "B"}
MC7 = {
    "solution": "tv",
    "format": "mc7",
    "options": ["bowl", "cup", "dog", "laptop", "car", "bench", "tv"],
    "answer": "G",
}


def _graded(answer: str, row: dict) -> float:
    completion = answered(answer)
    columns = {key: [value] for key, value in row.items()}
    return exact_match_reward([completion], **columns)[0]


@pytest.mark.parametrize(
    "answer",
    ["B", "(B)", "B.", "B)", "B:", "b", "B) cup", "B. cup", "(B) cup", "B. Cups", "cup", "Cup.", "the cups"],
)
def test_mc_accepts(answer):
    assert _graded(answer, MC4) == 1.0


@pytest.mark.parametrize(
    "answer",
    [
        "A",
        "C",
        "(C)",
        "E",  # outside the four options
        "B) bowl",  # right letter, wrong text
        "B. dog",
        "A) cup",  # right text, wrong letter
        "C. cup",
        "bowl",
        "B cup",
        "B or C",
        "BC",
        "cup or bowl",
        "The answer is B",
        "",
    ],
)
def test_mc_rejects(answer):
    assert _graded(answer, MC4) == 0.0


@pytest.mark.parametrize(
    ("answer", "expected"), [("G", 1), ("(G)", 1), ("G. tv", 1), ("television", 1), ("D", 0), ("H", 0)]
)
def test_mc7(answer, expected):
    assert _graded(answer, MC7) == expected


def test_mc_exact_option_text_wins_over_a_synonym():
    row = {
        "solution": "table",
        "format": "mc4",
        "options": ["dining table", "table", "dog", "cup"],
        "answer": "B",
    }
    assert _graded("table", row) == 1.0
    assert _graded("dining table", row) == 0.0
    # Text that is only a variant of two options is ambiguous.
    row = {
        "solution": "phone",
        "format": "mc4",
        "options": ["cell phone", "smartphone", "dog", "cup"],
        "answer": "A",
    }
    assert _graded("mobile phone", row) == 0.0


@pytest.mark.parametrize(
    ("answer", "truth", "expected"),
    [
        ("yes", "yes", 1),
        ("Yes.", "yes", 1),
        ("YES", "yes", 1),
        ("no", "yes", 0),
        ("No", "no", 1),
        ("yes", "no", 0),
        ("yes, it is", "yes", 0),
        ("y", "yes", 0),
        ("cup", "yes", 0),
        ("", "no", 0),
    ],
)
def test_yesno(answer, truth, expected):
    row = {"solution": "cup", "format": "yesno", "options": ["yes", "no"], "answer": truth}
    assert _graded(answer, row) == expected


def test_mixed_batch_with_trl_kwargs():
    """Rows of different kinds in one call, with the extras TRL passes beside the columns."""
    completions = [answered(a) for a in ("cups", "B", "no", "(C)", "cup")]
    scores = exact_match_reward(
        prompts=[[{"role": "user", "content": "?"}]] * 5,
        completions=completions,
        completion_ids=[[1, 2]] * 5,
        solution=["cup", "cup", "dog", "cup", "cup"],
        format=[None, "mc4", "yesno", "mc4", ""],
        options=[None, MC4["options"], ["yes", "no"], MC4["options"], []],
        answer=[None, "B", "no", "B", ""],
        image=[None] * 5,
        trainer_state=object(),
        log_extra=lambda *a: None,
        log_metric=lambda *a: None,
    )
    assert scores == [1.0, 1.0, 1.0, 0.0, 1.0]


def test_missing_or_broken_choice_columns_fall_back_to_the_open_answer():
    completion = [answered("cup")]
    assert exact_match_reward(completion, ["cup"], format=["mc4"], options=[None], answer=["B"]) == [1.0]
    assert exact_match_reward(completion, ["cup"], format=["mc4"], options=[["cup"]], answer=[None]) == [1.0]
    assert exact_match_reward(completion, ["cup"], format=["mc4"]) == [1.0]
    # A short column pads with None; a solution missing altogether scores 0.
    assert exact_match_reward(completion * 2, ["cup"]) == [1.0, 0.0]
    assert levenshtein_reward(completion, None) == [0.0]
    assert paper_answer_reward(completion, None) == [0.0]


# ------------------------------------------------------------------------------- mixed train rows

YESNO = {"solution": "cup", "format": "yesno", "options": ["yes", "no"], "answer": "no", "candidate": "dog"}
OPEN = {"solution": "cup", "format": "open", "options": [], "answer": "cup", "candidate": ""}


def _scores(func, completion: str, row: dict) -> float:
    return func([completion], **{key: [value] for key, value in row.items()})[0]


def test_target_answer_is_the_letter_yes_no_or_the_solution():
    assert [target_answer(r) for r in (MC4, MC7, YESNO, OPEN)] == ["B", "G", "no", "cup"]
    assert target_answer({"solution": "cup"}) == "cup"  # a build from before the format column
    assert target_answer({**MC4, "options": None}) == "cup"  # graded as open, so trained as open


@pytest.mark.parametrize("row", [MC4, MC7, YESNO])
def test_levenshtein_gives_no_partial_credit_on_choice_rows(row):
    """A letter or yes/no scores its exact match: "C" is one edit from "B" but simply wrong."""
    wrong = {"B": "C", "G": "F", "no": "yes"}[row["answer"]]
    assert _scores(levenshtein_reward, answered(row["answer"]), row) == 1.0
    assert _scores(levenshtein_reward, answered(wrong), row) == 0.0


def test_levenshtein_of_open_rows_is_unchanged():
    """Partial credit as before for open rows, with or without the format columns."""
    for row in (OPEN, {"solution": "cup"}, {**MC4, "format": None}):
        assert _scores(levenshtein_reward, answered("cupp"), row) == Levenshtein.ratio("cupp", "cup")


@pytest.mark.parametrize("row", [MC4, MC7, YESNO])
def test_paper_answer_compares_choice_rows_with_their_letter(row):
    assert _scores(paper_answer_reward, answered(row["answer"]), row) == 1.0
    assert _scores(paper_answer_reward, answered(row["solution"]), row) == Levenshtein.ratio(
        row["solution"], row["answer"]
    )


# ------------------------------------------------------------------------------- paper rewards


@pytest.mark.parametrize(
    ("completion", "answer_ratio"),
    [
        ("<think>breakfast</think><answer>cups</answer>", ratio("cups", "cup", 3)),
        ("<think>breakfast</think><answer>Cup</answer>", ratio("Cup", "cup", 2)),
        ("<think>breakfast</think>\n<answer>cup</answer>", 1.0),
        # Text after the LAST </think>, both answer tags removed wherever they are.
        ("<think>a</think>b</think><answer>cup</answer>", 1.0),
        ("<think>a</think>b</think>c<answer>cup</answer>", ratio("ccup", "cup", 3)),
        ("<think>breakfast</think><answer>cup</answer>\n", 1.0),
    ],
)
def test_paper_preset_total_is_format_plus_ratio(completion, answer_ratio):
    funcs, weights = resolve_rewards("paper")
    total = sum(w * f([completion], solution=["cup"])[0] for f, w in zip(funcs, weights))
    assert total == pytest.approx(0.6 + answer_ratio)


@pytest.mark.parametrize(
    "completion",
    [
        "<answer>cup</answer>",  # no </think>: answer reward 0
        "<think>x</think><answer>cup</answer>\n\n",  # `$` accepts one final newline, not two
        "<think>x</think><answer>cup</answer> \n",
        " <think>x</think><answer>cup</answer>",
        "<think>x<answer>cup</answer>",
        "<think>x</think>cup",
    ],
)
def test_paper_format_rejects(completion):
    assert paper_format_reward([completion]) == [0.0]


TAGS = ["<think>", "</think>", "<answer>", "</answer>"]
tagged_text = st.lists(
    st.one_of(st.sampled_from(TAGS), st.text(alphabet="ab \n<>/", max_size=4)), max_size=10
).map("".join)


@given(tagged_text, st.sampled_from(["", "\n", "\n\n", " "]), st.sampled_from(["cup", "Cup", "a", ""]))
@settings(max_examples=600, deadline=None)
def test_paper_rewards_equal_the_authors_code(text, ending, solution):
    text += ending
    assert paper_format_reward([text]) == [authors_format(text)]
    assert paper_answer_reward([text], [solution]) == [authors_answer(text, solution)]


@given(tagged_text, st.sampled_from(["cup", "Cup", "a", ""]), st.sampled_from([None, "open", ""]))
@settings(max_examples=200, deadline=None)
def test_paper_answer_of_open_rows_of_train_builds_is_the_authors(text, solution, fmt):
    """Train rows carry format/options/answer columns; on open rows the reward stays the authors'."""
    row = {"solution": solution, "format": fmt, "options": [], "answer": solution, "candidate": ""}
    assert _scores(paper_answer_reward, text, row) == authors_answer(text, solution)


def test_the_authors_rewards_differ_from_a_fullmatch_and_the_first_think():
    """The cases where the earlier reading of their code (fullmatch, first `</think>`) went wrong."""
    newline = "<think>x</think><answer>cup</answer>\n"
    assert PAPER_FORMAT.fullmatch(newline) is None and paper_format_reward([newline]) == [0.6]
    rethought = "<think>x</think>no</think><answer>cup</answer>"
    assert paper_answer_reward([rethought], ["cup"]) == [1.0]


def _reference_format(text: str) -> float:
    """The specification of our format reward, written with the (slow on adversarial text) regex."""
    stripped = text.strip()
    match = re.fullmatch(r"<think>.*?</think>\s*<answer>(.*?)</answer>", stripped, re.DOTALL)
    single = all(stripped.count(tag) == 1 for tag in TAGS)
    return float(bool(match) and single and bool(match.group(1).strip()))


@given(tagged_text)
@settings(max_examples=400, deadline=None)
def test_format_equals_its_regex_definition(text):
    assert format_reward([text]) == [_reference_format(text)]


plain_text = st.text(alphabet=st.characters(blacklist_characters="<>"), max_size=30)


@given(plain_text, plain_text)
@settings(max_examples=200, deadline=None)
def test_well_formed_completion_round_trips(thought, answer):
    completion = f"<think>{thought}</think><answer>{answer}</answer>"
    assert extract_answer(completion) == answer.strip()
    assert format_reward([completion]) == [float(bool(answer.strip()))]
    assert paper_format_reward([completion]) == [0.6]


# ------------------------------------------------------------------------------------- fuzzing

huge = st.builds(lambda piece, n: piece * n, tagged_text, st.integers(1, 3000))
any_text = st.one_of(
    st.text(), tagged_text, huge, st.text(alphabet=st.characters(), min_size=1).map(lambda s: s * 50)
)
completion_forms = st.one_of(
    any_text,
    any_text.map(lambda t: [{"role": "assistant", "content": t}]),
    any_text.map(lambda t: [{"role": "assistant", "content": [{"type": "text", "text": t}]}]),
    st.just([{"role": "assistant", "content": None}]),
    st.none(),
)
solutions = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["cup", "hot dog", "skis", "tv"]),
    st.none(),
    st.integers(),
    st.floats(),
)
options = st.one_of(st.none(), st.lists(st.one_of(st.text(max_size=12), st.none()), max_size=8))


@given(
    completions=st.lists(completion_forms, max_size=4),
    data=st.data(),
)
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
def test_rewards_never_raise_and_stay_in_range(completions, data):
    n = len(completions)
    columns = {
        "solution": data.draw(st.lists(solutions, min_size=n, max_size=n)),
        "format": data.draw(
            st.lists(st.sampled_from(["mc4", "mc7", "yesno", None, "", "other"]), min_size=n, max_size=n)
        ),
        "options": data.draw(st.lists(options, min_size=n, max_size=n)),
        "answer": data.draw(
            st.lists(st.one_of(st.none(), st.text(max_size=3), st.integers()), min_size=n, max_size=n)
        ),
    }
    for name, func in REWARDS.items():
        scores = func(completions=completions, prompts=[None] * n, completion_ids=[[]] * n, **columns)
        assert isinstance(scores, list) and len(scores) == n
        for score in scores:
            assert isinstance(score, float) and math.isfinite(score)
            allowed = RANGES[name]
            assert score in allowed if isinstance(allowed, set) else allowed[0] <= score <= allowed[1]


def test_adversarial_megabyte_inputs_finish():
    """`re.fullmatch` of the paper's pattern takes ~20 s on the first of these at 16 KB; ours is linear.
    Timed only as a sanity bound."""
    mb = 1 << 20
    inputs = [
        "<think>" + "</think><answer>" * (mb // 16) + "x",
        "<think>a</think>" + "<answer>" * (mb // 16) + "x" + "</answer>" * (mb // 18),
        "<think>a</think><answer>" + "a hot-dog, " * (mb // 11) + "</answer>",
        "<think>" + "ß\u0301ﬁ " * (mb // 4),
        "<think>a</think><answer>B) " + "cup " * (mb // 4) + "</answer>",
        "\n" * mb,
    ]
    columns = {"format": ["mc4"] * 6, "options": [MC4["options"]] * 6, "answer": ["B"] * 6}
    start = time.perf_counter()
    for name, func in REWARDS.items():
        scores = func(inputs, solution=["cup"] * 6, **columns)
        assert len(scores) == 6 and all(math.isfinite(s) for s in scores), name
    assert time.perf_counter() - start < 10


# ------------------------------------------------------------------------------------- presets


def test_resolve_presets():
    funcs, weights = resolve_rewards("default")
    assert funcs == [format_reward, exact_match_reward, levenshtein_reward]
    assert weights == [0.5, 1.0, 0.5]
    funcs, weights = resolve_rewards("paper")
    assert funcs == [paper_format_reward, paper_answer_reward]
    assert weights == [1.0, 1.0]
    assert set(PRESETS) == {"paper", "default"}


def test_default_preset_orders_outcomes():
    funcs, weights = resolve_rewards("default")

    def total(answer: str) -> float:
        completion = [answered(answer)]
        return sum(w * f(completion, solution=["cup"])[0] for f, w in zip(funcs, weights))

    assert total("cup") == pytest.approx(2.0)
    assert total("dog") == pytest.approx(0.5)
    assert 0.5 < total("cap") < 1.0 < total("cups") == total("cup")
    assert total("") == 0.0


def test_resolve_dict_keeps_order_and_coerces_weights():
    funcs, weights = resolve_rewards({"exact_match": 2, "paper_format": 0.25})
    assert funcs == [exact_match_reward, paper_format_reward]
    assert weights == [2.0, 0.25] and all(isinstance(w, float) for w in weights)


def test_resolve_string_form_of_weights():
    """The recipe's `rewards: name:weight,...` string."""
    funcs, weights = resolve_rewards(" exact_match : 2, levenshtein:.5,paper_format:1e-1")
    assert funcs == [exact_match_reward, levenshtein_reward, paper_format_reward]
    assert weights == [2.0, 0.5, 0.1]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope", "known presets: paper, default"),
        (
            {"exact_match": 1.0, "bleu": 1.0},
            "known rewards: format, exact_match, levenshtein, paper_format, paper_answer",
        ),
        ({}, "non-empty"),
        ({"format": float("nan")}, "finite number"),
        ({"format": "1"}, "finite number"),
        ("format", "known presets: paper, default (or name:weight,... over format, exact_match,"),
        ("format:1,bleu:2", "known rewards: format, exact_match"),
        ("format:x", "name:number"),
        ("format:1,", "name:number"),
        ("format:nan", "name:number"),
    ],
)
def test_resolve_rejects(spec, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        resolve_rewards(spec)


def test_reward_names_for_trl_logs():
    """TRL logs each reward as rewards/<__name__>/mean: names must be distinct and say what they are."""
    assert {name: func.__name__ for name, func in REWARDS.items()} == {
        "format": "format_reward",
        "exact_match": "exact_match_reward",
        "levenshtein": "levenshtein_reward",
        "paper_format": "paper_format_reward",
        "paper_answer": "paper_answer_reward",
    }


def test_trace_completion_passes_the_rewards():
    text = trace_completion("  The table holds plates and forks. ", "cup")
    assert text == "<think> The table holds plates and forks.</think><answer>cup</answer>"
    assert format_reward([text]) == [1.0] and exact_match_reward([text], solution=["cup"]) == [1.0]
