"""Reasoning steps: a table of real-looking traces with their expected step texts, invariants of the
spans on generated traces, and the token-to-step map on hand-made offsets and on a real tokenizer."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpcc.evaluation.grounding.forcing import step_positions, token_steps
from mpcc.text.steps import reasoning_span, split_steps

CASES = {
    "think tags": (
        "<think>The masked region sits on a dining table. Next to it is a plate with a fork.\n"
        "So the object is probably a cup!</think> <answer>cup</answer>",
        [
            "The masked region sits on a dining table.",
            "Next to it is a plate with a fork.",
            "So the object is probably a cup!",
        ],
    ),
    "no tags": (
        "The mask covers something furry on the sofa. It has pointed ears. The answer is cat",
        ["The mask covers something furry on the sofa.", "It has pointed ears.", "The answer is cat"],
    ),
    "think not closed": (
        "<think>A leash hangs from the hand. Dogs are walked on leashes.\n<answer>dog</answer>",
        ["A leash hangs from the hand.", "Dogs are walked on leashes."],
    ),
    "answer without think": (
        "It is round and sits on a saucer. Likely a cup. <answer>cup</answer> Extra text. More.",
        ["It is round and sits on a saucer.", "Likely a cup."],
    ),
    "closing tag without opening": (
        "The grass suggests a park. A frisbee fits.</think>\n<answer>frisbee</answer>",
        ["The grass suggests a park.", "A frisbee fits."],
    ),
    "bullets": (
        "<think>Clues:\n- a plate on the left\n* a knife beside it\n• crumbs on the table\nSo: fork.</think>",
        ["Clues:", "- a plate on the left", "* a knife beside it", "• crumbs on the table", "So: fork."],
    ),
    "numbered lines": (
        "<think>1. The cup is on a table.\n2) It has a handle.\na) Small.\n(b) White.\n3.\n</think>",
        ["1. The cup is on a table.", "2) It has a handle.", "a) Small.", "(b) White."],
    ),
    "lettered options": (
        "<think>Options:\nA. plate, too flat\nB. cup, it has a handle.\nB.\n</think><answer>B</answer>",
        ["Options:", "A. plate, too flat", "B. cup, it has a handle."],  # a lone "B." line is no step
    ),
    "numbered inline": (
        "<think>1. The cup is on a table. 2. The fork is near. 3. So a plate fits.</think>",
        ["1. The cup is on a table.", "2. The fork is near.", "3. So a plate fits."],
    ),
    "abbreviations": (
        "<think>Cutlery, e.g. a fork, i.e. something metal, etc. are near. Dr. Smith vs. Mr. Jones "
        "is irrelevant. See fig. 2 and no. 5 on St. Mark's. It is approx. 20 cm long.</think>",
        [
            "Cutlery, e.g. a fork, i.e. something metal, etc. are near.",
            "Dr. Smith vs. Mr. Jones is irrelevant.",
            "See fig. 2 and no. 5 on St. Mark's.",
            "It is approx. 20 cm long.",
        ],
    ),
    "bare no is a sentence": (
        "<think>Is it a fork? No. The handle is too thick. It is a spoon.</think>",
        ["Is it a fork?", "No.", "The handle is too thick.", "It is a spoon."],
    ),
    "decimals": (
        "<think>The object is 3.5 m long and 0.75 m wide. That fits a bench.</think>",
        ["The object is 3.5 m long and 0.75 m wide.", "That fits a bench."],
    ),
    "questions and exclamation": (
        "<think>What is under the mask? Something with wheels! Could it be a car?! Yes.</think>",
        ["What is under the mask?", "Something with wheels!", "Could it be a car?!", "Yes."],
    ),
    "quotes and brackets": (
        "<think>He said \"stop.\" Then he left. (It is a sign.) The sign reads 'STOP!' Red.</think>",
        ['He said "stop."', "Then he left.", "(It is a sign.)", "The sign reads 'STOP!'", "Red."],
    ),
    "ellipsis": (
        "<think>Hmm... maybe a bowl. Or a vase… no, a bowl.</think>",
        ["Hmm...", "maybe a bowl.", "Or a vase…", "no, a bowl."],
    ),
    "spaces and blank lines": (
        "<think>\n\n   The sky is blue.    Birds fly.  \n\n\n  \t A kite is up there.  \n</think>",
        ["The sky is blue.", "Birds fly.", "A kite is up there."],
    ),
    "windows line breaks": (
        "<think>A bat.\r\nA ball\r\nBaseball.</think>",
        ["A bat.", "A ball", "Baseball."],
    ),
    "empty think": ("<think></think> <answer>dog</answer>", []),
    "blank think": ("<think>  \n \n</think><answer>dog</answer>", []),
    "after think excluded": (
        "<think>A bone lies nearby.</think> The answer follows. <answer>dog</answer>",
        ["A bone lies nearby."],
    ),
    "answer inside think": (
        "<think>Maybe <answer>cat</answer>? No, a dog.</think> <answer>dog</answer>",
        ["Maybe <answer>cat</answer>?", "No, a dog."],
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_step_texts(name):
    completion, expected = CASES[name]
    assert [completion[a:b] for a, b in split_steps(completion)] == expected


@pytest.mark.parametrize(
    ("completion", "span"),
    [
        ("<think>ab</think>cd", (7, 9)),
        ("<think>ab<answer>c</answer>", (7, 9)),
        ("<think>ab", (7, 9)),
        ("ab<answer>c</answer>", (0, 2)),
        ("ab</think><answer>c</answer>", (0, 2)),
        ("ab", (0, 2)),
        ("", (0, 0)),
        ("</think><think>ab</think>", (15, 17)),
    ],
)
def test_reasoning_span(completion, span):
    assert reasoning_span(completion) == span


WORDS = "cup The e.g. No. no. 3.5 5 1. 2) (a) - * • . ... … ! ? \" ' ) ] <think> </think> <answer> </answer>"
PIECES = st.sampled_from([*WORDS.split(), " ", "  ", "\n", "\r\n", "\t"])


def check_spans(completion: str) -> None:
    start, end = reasoning_span(completion)
    assert 0 <= start <= end <= len(completion)
    previous_end = start
    for a, b in split_steps(completion):
        assert previous_end <= a < b <= end
        text = completion[a:b]
        assert text == text.strip()
        assert "\n" not in text and "\r" not in text
        previous_end = b


@settings(max_examples=300, deadline=None)
@given(st.lists(PIECES, max_size=40).map("".join))
def test_spans_ordered_stripped_inside_reasoning(completion):
    check_spans(completion)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_spans_on_any_text(completion):
    check_spans(completion)


def test_token_steps_by_hand():
    completion = "<think>It is red. The cup.\n\n</think> <answer>cup</answer>"
    steps = split_steps(completion)
    assert [completion[a:b] for a, b in steps] == ["It is red.", "The cup."]
    offsets = [
        (0, 0),  # a special token
        (0, 7),  # <think>
        (7, 9),  # It
        (9, 12),  # " is"
        (12, 16),  # " red"
        (16, 17),  # .
        (17, 18),  # " " between the steps
        (18, 21),  # "The"
        (21, 25),  # " cup"
        (25, 27),  # ".\n": ends in whitespace, still the step's period
        (27, 28),  # "\n"
        (28, 36),  # </think>
        (36, 37),  # " "
        (37, 45),  # <answer>
        (45, 48),  # cup
        (48, 57),  # </answer>
        (57, 57),  # zero-length at the end
    ]
    assert "".join(completion[a:b] for a, b in offsets) == completion
    expected = [-1, -1, 0, 0, 0, 0, -1, 1, 1, 1, -1, -1, -1, -1, -1, -1, -1]
    assert token_steps(offsets, steps) == expected


def test_token_steps_leading_space_token_and_edges():
    completion = "<think>Ok.  Go.</think>"
    steps = split_steps(completion)
    assert [completion[a:b] for a, b in steps] == ["Ok.", "Go."]
    # " " is whitespace only, " Go" starts in the whitespace between steps, ".</" ends in a tag.
    offsets = [(0, 7), (7, 9), (9, 10), (10, 11), (11, 14), (14, 17), (17, 23)]
    assert "".join(completion[a:b] for a, b in offsets) == completion
    assert token_steps(offsets, steps) == [-1, 0, 0, -1, 1, 1, -1]
    assert token_steps(offsets, []) == [-1] * len(offsets)
    assert token_steps([], steps) == []


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from mpcc.models import ensure_tiny_model

    return AutoTokenizer.from_pretrained(ensure_tiny_model("qwen2_5_vl"))


@pytest.mark.parametrize(
    "name", ["think tags", "numbered lines", "abbreviations", "quotes and brackets", "spaces and blank lines"]
)
def test_token_steps_real_tokenizer(tokenizer, name):
    completion = CASES[name][0] + " <answer>cup</answer>"
    steps = split_steps(completion)
    encoding = tokenizer(completion, add_special_tokens=False, return_offsets_mapping=True)
    offsets = [tuple(span) for span in encoding["offset_mapping"]]
    owners = token_steps(offsets, steps)
    for (start, end), owner in zip(offsets, owners):  # the last step sharing a character, by brute force
        shared = [index for index, (a, b) in enumerate(steps) if a < end and start < b]
        assert owner == (shared[-1] if shared else -1)
    for index, (a, b) in enumerate(steps):
        joined = "".join(
            completion[start:end] for (start, end), owner in zip(offsets, owners) if owner == index
        )
        # Tokens carry the leading space of their word, may start with the opening tag's ">" (Qwen's
        # pre-tokenizer joins one punctuation mark to a word: ">Cutlery") and may end in a line break or
        # a tag (".\n", "!</").
        assert joined.strip().removeprefix(">").removesuffix("</").rstrip() == completion[a:b]
    end_think = completion.index("</think>")
    assert all(owner == -1 for (start, _), owner in zip(offsets, owners) if start >= end_think)


def test_step_positions():
    assert step_positions(0) == []
    assert step_positions(1) == [0.5]
    assert step_positions(4) == [0.125, 0.375, 0.625, 0.875]
