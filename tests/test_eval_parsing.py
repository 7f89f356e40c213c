"""Eval answer parsing: a table of real-looking completions with their expected (parsed, format_ok,
correct), agreement with the training reward, and fuzzing that the parser never raises."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpcc.evaluation.parsing import free_text, is_correct, parse_answer, row_format
from mpcc.rewards import exact_match_reward

MC4 = {"format": "mc4", "options": ["plate", "cup", "dining table", "dog"], "answer": "B", "solution": "cup"}
MC7 = {
    "format": "mc7",
    "options": ["bowl", "spoon", "knife", "fork", "wine glass", "cup", "bottle"],
    "answer": "G",
    "solution": "bottle",
}
# Constructed: "remotes" is a plural of both options (SYNONYMS groups remote with remote control).
MC_SHARED = {
    "format": "mc4",
    "options": ["remote", "remote control", "cup", "dog"],
    "answer": "A",
    "solution": "remote",
}
YES = {"format": "yesno", "options": ["yes", "no"], "answer": "yes", "candidate": "cup", "solution": "cup"}
NO = {"format": "yesno", "options": ["yes", "no"], "answer": "no", "candidate": "bowl", "solution": "cup"}
OPEN = {"format": "open", "options": [], "answer": "cell phone", "solution": "cell phone"}
THINK = "<think>A saucer sits under the mask next to a teapot, so it holds a drink.</think>\n"


def tagged(answer: str) -> str:
    return f"{THINK}<answer>{answer}</answer>"


# id: (completion, row, parsed, format_ok, correct)
# fmt: off
CASES = {
    # multiple choice: accepted forms
    "letter": (tagged("B"), MC4, "B", True, True),
    "letter_in_parens": (tagged("(B)"), MC4, "B", True, True),
    "lowercase_letter_dot": (tagged("b."), MC4, "B", True, True),
    "letter_paren_text": (tagged("B) cup"), MC4, "B", True, True),
    "letter_dot_text": (tagged("B. cup"), MC4, "B", True, True),
    "letter_colon_text": (tagged("B: Cup"), MC4, "B", True, True),
    "letter_nbsp_text": (tagged("B)\u00a0cup"), MC4, "B", True, True),
    "option_text": (tagged("cup"), MC4, "B", True, True),
    "option_text_plural_article": (tagged("The cups"), MC4, "B", True, True),
    "option_text_fullwidth": (tagged("ｃｕｐ"), MC4, "B", True, True),
    "whitespace_in_block": (f"{THINK}<answer>\n  B \n</answer>\n", MC4, "B", True, True),
    "last_block_wins": (f"{THINK}<answer>A</answer> On reflection: <answer>B</answer>", MC4, "B", True, True),
    "block_inside_think_ignored": (
        "<think>Maybe <answer>A</answer>? No.</think><answer>B</answer>", MC4, "B", True, True
    ),
    "chat_messages": ([{"role": "assistant", "content": tagged("B")}], MC4, "B", True, True),
    "mc7_last_letter": (tagged("G"), MC7, "G", True, True),
    "mc7_letter_text": (tagged("G. bottle"), MC7, "G", True, True),
    # a synonym names one option unambiguously: parsed, but that option is wrong here
    "synonym_of_other_option": (tagged("table"), MC4, "C", True, False),
    "wrong_letter": (tagged("A"), MC4, "A", True, False),
    # multiple choice: rejected (the authors' substring test accepted most of these)
    "wrong_letter_right_text": (tagged("A) cup"), MC4, None, False, False),
    "right_letter_wrong_text": (tagged("B) plate"), MC4, None, False, False),
    "a_or_b": (tagged("A or B"), MC4, None, False, False),
    "two_letters": (tagged("B, C"), MC4, None, False, False),
    "letter_outside_options": (tagged("E"), MC4, None, False, False),
    "mc7_letter_on_mc4": (tagged("G"), MC4, None, False, False),
    "letter_without_punctuation": (tagged("B cup"), MC4, None, False, False),
    "sentence_with_letter": (tagged("The answer is B"), MC4, None, False, False),
    "sentence_with_option": (tagged("It is a cup on a saucer"), MC4, None, False, False),
    "text_fits_two_options": (tagged("remotes"), MC_SHARED, None, False, False),
    "fullwidth_letter": (tagged("Ｂ"), MC4, None, False, False),
    "other_script": (tagged("чашка"), MC4, None, False, False),
    "empty_block": (f"{THINK}<answer>  </answer>", MC4, None, False, False),
    "empty_completion": ("", MC4, None, False, False),
    # no complete answer block: graded from the last non-empty line, never format-compliant
    "no_tags_last_line_letter": ("The saucer suggests a cup.\nB\n\n", MC4, "B", False, True),
    "no_tags_prose": ("The hidden object is probably a cup.", MC4, None, False, False),
    "unclosed_block": (f"{THINK}<answer>B", MC4, None, False, False),
    # yes/no
    "yes": (tagged("yes"), YES, "yes", True, True),
    "yes_capital_dot": (tagged("Yes."), YES, "yes", True, True),
    "yes_shouted": (tagged("YES!"), YES, "yes", True, True),
    "yes_with_sentence": (tagged("Yes, it is a cup."), YES, "yes", True, True),
    "yes_fullwidth": (tagged("Ｙｅｓ"), YES, "yes", True, True),
    "no_on_yes_row": (tagged("No"), YES, "no", True, False),
    "no_with_sentence": (tagged("No, it is not a bowl."), NO, "no", True, True),
    "no_tags_last_line_no": ("It looks more like a cup.\nNo.", NO, "no", False, True),
    "yes_or_no": (tagged("yes or no"), YES, None, False, False),
    "no_then_yes": (tagged("No... actually yes"), YES, None, False, False),
    "yesterday": (tagged("Yesterday"), YES, None, False, False),
    "single_y": (tagged("Y"), YES, None, False, False),
    "hedge": (tagged("Not sure"), NO, None, False, False),
    "letter_on_yesno": (tagged("A"), YES, None, False, False),
    # open answers: normalised text, correct for any accepted form of the solution
    "open_exact": (tagged("cell phone"), OPEN, "cell phone", True, True),
    "open_synonym_capitalised": (tagged("Mobile phone"), OPEN, "mobile phone", True, True),
    "open_plural_compound": (tagged("cellphones"), OPEN, "cellphones", True, True),
    "open_wrong": (tagged("a remote"), OPEN, "remote", True, False),
    "open_no_tags": ("It is held to the ear.\nCell phone", OPEN, "cell phone", False, True),
    "open_empty": (tagged(""), OPEN, None, False, False),
}
# fmt: on


@pytest.mark.parametrize("case", list(CASES))
def test_parse_table(case):
    completion, row, parsed, format_ok, correct = CASES[case]
    assert parse_answer(completion, row) == (parsed, format_ok)
    assert is_correct(parsed, row) is correct


def test_rows_without_format_are_open():
    row = {"solution": "dog"}
    assert row_format(row) == "open"
    assert parse_answer(tagged("Dogs"), row) == ("dogs", True)
    assert is_correct("dogs", row)


def test_unknown_format_is_a_data_error():
    with pytest.raises(ValueError, match="mc5"):
        parse_answer(tagged("B"), {**MC4, "format": "mc5"})


def test_answer_letter_in_row_may_be_lowercase():
    assert is_correct("B", {**MC4, "answer": " b "})


# ------------------------------------------------------------------------------------------- fuzzing

ROWS = [MC4, MC7, MC_SHARED, YES, NO, OPEN]
PIECES = ["<think>", "</think>", "<answer>", "</answer>", "\n", "A", "B", "G", "(", ")", ".", ":", " ", "yes"]
PIECES += ["no", "cup", "cups", "table", "remote", "bottle", "cell phone", "ｃｕｐ", "or", ",", "the"]
text_like_answers = st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=5)), max_size=8).map("".join)


@given(st.one_of(st.text(), text_like_answers), st.sampled_from(ROWS))
@settings(max_examples=500, deadline=None)
def test_parser_never_raises(text, row):
    parsed, format_ok = parse_answer(text, row)
    allowed = {
        "mc4": {None, "A", "B", "C", "D"},
        "mc7": {None, *"ABCDEFG"},
        "yesno": {None, "yes", "no"},
    }
    if row["format"] in allowed:
        assert parsed in allowed[row["format"]]
    else:
        assert parsed is None or (parsed and parsed == parsed.strip())
    assert not (format_ok and parsed is None)
    assert isinstance(is_correct(parsed, row), bool)


def _reward(completion: str, row: dict) -> bool:
    scores = exact_match_reward(
        [completion],
        solution=[row["solution"]],
        format=[row["format"]],
        options=[row["options"]],
        answer=[row["answer"]],
    )
    return scores == [1.0]


@given(text_like_answers, st.sampled_from([MC4, MC7, MC_SHARED, OPEN]))
@settings(max_examples=500, deadline=None)
def test_mc_and_open_grading_equals_the_training_reward(answer, row):
    completion = tagged(answer)
    assert is_correct(parse_answer(completion, row)[0], row) == _reward(completion, row)


@given(text_like_answers, st.sampled_from([YES, NO]))
@settings(max_examples=300, deadline=None)
def test_yesno_accepts_everything_the_reward_accepts(answer, row):
    completion = tagged(answer)
    if _reward(completion, row):
        assert is_correct(parse_answer(completion, row)[0], row)


TEXT = {"format": "text", "options": [], "answer": "3.5", "solution": "3.5"}
WORD = {"format": "text", "options": [], "answer": "dark blue", "solution": "dark blue"}


@pytest.mark.parametrize(
    ("answer", "row", "correct"),
    [
        ("3.5", TEXT, True),
        ("3.50", TEXT, True),
        ("+3.5.", TEXT, True),
        ("35", TEXT, False),  # normalize alone would read 3.5 as 35
        ("3.5 cm", TEXT, False),
        ("three and a half", TEXT, False),
        ("Dark  Blue.", WORD, True),
        ("the dark-blue", WORD, True),
        ("blue", WORD, False),
        ("dark blues", WORD, False),  # no COCO plurals or synonyms for other datasets' answers
    ],
)
def test_free_text_rows_are_exact_after_normalising_and_numbers_by_value(answer, row, correct):
    parsed, format_ok = parse_answer(tagged(answer), row)
    assert format_ok and is_correct(parsed, row) == correct
    assert row_format(row) == "text"


def test_free_text_numbers_keep_their_value():
    assert [free_text(x) for x in ("2.0", "-0", "1e1", "007", "1_000")] == ["2", "0", "10", "7", "1000"]
    assert free_text("nan") == "nan" and free_text("") == ""
