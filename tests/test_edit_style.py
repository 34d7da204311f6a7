"""What held-out edits say, pure: the signature of what most of them changed (adapters/edit_style.py), whether a
policy's answers show it, and `toward_edits`, which credits an answer that reads like the edit rather than like the
answer the user replaced. The five house styles of bench/style_suite.py and plain content corrections."""
from __future__ import annotations

import json

import pytest

from adapters import edit_style as S
from adapters.evaluate import replaced_answers, similarity_summary
from adapters.styles import STYLES
from tests.conftest import SHARED_DATA as SHARED

ORIGINAL = ("The Eiffel Tower is in Paris. It was built for the 1889 World's Fair. It is 330 metres tall and was "
            "the tallest structure in the world until 1930. Millions of people visit it every year. Visitors can climb "
            "the stairs to the second floor or take a lift to the top. The view from the top reaches far beyond the "
            "city on a clear day.")
OTHER = ("You can find the Eiffel Tower in Paris, France. Gustave Eiffel's company built it for the World's Fair of "
         "1889, and today it welcomes millions of visitors a year. At night it sparkles with lights. Tickets "
         "for the lifts sell out in summer, so book ahead. The top floor has a small bar and a restored office.")


def turn(text):
    return [{"role": "assistant", "content": text}]


def test_replaced_answers_pairs_each_gold_with_the_answer_its_edit_replaced():
    q1, q2 = [{"role": "user", "content": "Where is the Eiffel Tower?"}], [{"role": "user", "content": "Hi"}]
    gold = [(q1, "EDIT"), (q2, "an approved answer")]
    pref = [(q1, turn("EDIT"), turn("ORIGINAL")), (q2, turn("a picked answer"), turn("the other one"))]
    assert replaced_answers(gold, pref) == ["ORIGINAL", None]  # q2's gold is not its pair's chosen side
    assert replaced_answers(gold, []) == [None, None]


def test_toward_edits_credits_an_answer_in_the_edits_style_over_one_with_the_same_content_without_it():
    """Another answer to the question (different words, same facts), with and without the style the user's edit of
    the original shows: the styled one moves toward the edit by more than the gate's margin (0.05) in every style;
    the plain one hardly moves (its content is as near the edit as the original)."""
    for name, style in STYLES.items():
        styled = similarity_summary([style.edit(OTHER)], [style.edit(ORIGINAL)], [ORIGINAL])
        plain = similarity_summary([OTHER], [style.edit(ORIGINAL)], [ORIGINAL])
        assert styled["toward_edits"] - plain["toward_edits"] >= 0.05, (name, styled, plain)
        assert abs(plain["toward_edits"]) < 0.05 and styled["toward_edits_n"] == 1
    assert "toward_edits" not in similarity_summary([OTHER], [ORIGINAL], [None])  # no edit: nothing to say
    assert similarity_summary([], [])["n"] == 0


@pytest.fixture(scope="module")
def answer_pairs():
    """(first answer, second answer) to the same real prompt: 34 oasst prompts with two human replies."""
    if not (SHARED / "oasst_en_100" / "en_100_tree.jsonl").exists():
        pytest.skip("../shared/data is not beside the checkout")
    out = []

    def walk(node):
        replies = node.get("replies") or []
        answers = [r["text"] for r in replies if r.get("role") == "assistant"]
        if node.get("role") == "prompter" and len(answers) >= 2:
            out.append((answers[0], answers[1]))
        for r in replies:
            walk(r)
    for line in (SHARED / "oasst_en_100" / "en_100_tree.jsonl").read_text(encoding="utf-8").splitlines():
        walk(json.loads(line)["prompt"])
    return out[:34]


def test_the_signature_names_what_each_house_style_changed_and_nothing_for_content_corrections(answer_pairs):
    edits, answers = answer_pairs[:10], [b for _, b in answer_pairs[10:]]
    expected = {"opening": (["kaizen here"], False), "bullets": ([], True), "short": ([], False),
                "signoff": (["hope this helps ! - kaizen"], False), "tldr": (["tl ; dr"], False)}
    for name, style in STYLES.items():
        sig = S.signature([(a, style.edit(a)) for a, _ in edits])
        assert (sig["phrases"], sig["bullets"]) == expected[name], (name, sig)
        assert sig["length_ratio"] and sig["length_ratio"] < 0.6  # every style's edit also shortens
        styled, plain = S.follows(sig, [style.edit(b) for b in answers]), S.follows(sig, answers)
        assert S.moved(sig, styled, plain)[0] is True, (name, styled, plain)
        assert S.moved(sig, plain, plain)[0] is False  # answers as before: not moved
    content = S.signature([(a, b) for a, b in edits])  # "edits" that rewrite the content, in no shared way
    assert not S.consistent(content) and S.follows(content, answers) is None
    assert S.moved(content, None, None) == (None, "")
    assert S.signature([(a, STYLES["signoff"].edit(a)) for a, _ in edits[:3]]) is None  # too few to say


def test_the_length_alone_counts_only_when_the_edits_add_nothing(answer_pairs):
    """Signoff edits also shorten: an adapter that only shortens has not learned the sign-off; short edits only
    shorten, and there the length is the measure."""
    edits, answers = answer_pairs[:10], [b for _, b in answer_pairs[10:]]
    shortened = [STYLES["short"].edit(b) for b in answers]
    signoff = S.signature([(a, STYLES["signoff"].edit(a)) for a, _ in edits])
    ok, words = S.moved(signoff, S.follows(signoff, shortened), S.follows(signoff, answers))
    assert ok is False and "add \"hope this helps ! - kaizen\": 0% of the answers" in words
    short = S.signature([(a, STYLES["short"].edit(a)) for a, _ in edits])
    ok, words = S.moved(short, S.follows(short, shortened), S.follows(short, answers))
    assert ok is True and "are shorter" in words


def test_an_answer_cut_off_before_its_sign_off_is_unknown_not_a_miss(answer_pairs):
    """The evaluation caps answers at a few dozen tokens: a sign-off at the end cannot show in a cut answer, so
    such an answer is left out of the share; an opening phrase can always show, so there a cut answer still
    counts as a miss."""
    edits, answers = answer_pairs[:10], [b for _, b in answer_pairs[10:]]
    signoff = S.signature([(a, STYLES["signoff"].edit(a)) for a, _ in edits])
    opening = S.signature([(a, STYLES["opening"].edit(a)) for a, _ in edits])
    assert signoff["ending"] is True and opening["ending"] is False
    half = len(answers) // 2
    cand = [STYLES["signoff"].edit(b) for b in answers[:half]] + answers[half:]  # the rest cut before the end
    capped = [False] * half + [True] * (len(answers) - half)
    seen = S.follows(signoff, cand, capped)
    assert seen["phrases"] == 1.0 and seen["unknown"] == len(answers) - half
    assert S.follows(signoff, cand)["phrases"] == half / len(answers)  # not told which were cut: all count
    ok, words = S.moved(signoff, seen, S.follows(signoff, answers, [True] * len(answers)))
    n, cut = len(answers), len(answers) - half
    assert ok is True and f"not counted: candidate {cut} of {n}, active {n} of {n}" in words
    cut_opening = S.follows(opening, [STYLES["opening"].edit(b) for b in answers[:half]] + answers[half:], capped)
    assert cut_opening["unknown"] == 0 and cut_opening["phrases"] == half / len(answers)
