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


def test_the_phrases_the_edits_add_are_taken_out_of_an_answer_before_its_relevance_is_measured(answer_pairs):
    """The evaluation measures relevance on what an answer says (adapters/evaluate.py): each style's added phrase is
    taken out of an answer in that style, whatever its case and spacing, and what is left is the answer's own text;
    an answer without the phrase, or a word that only contains its letters, is kept as it is."""
    edits, answers = answer_pairs[:10], [b for _, b in answer_pairs[10:]]
    for name, style in STYLES.items():
        sig = S.signature([(a, style.edit(a)) for a, _ in edits])
        for b in answers:
            out = S.without_phrases(sig, style.edit(b))
            shown = S.follows(sig, [out])
            assert shown is None or shown["phrases"] == 0.0, (name, out)  # None: the style adds no phrase
            assert S.without_phrases(sig, b) == b  # nothing of the phrase in it: unchanged, spacing and all
    opening = S.signature([(a, STYLES["opening"].edit(a)) for a, _ in edits])
    assert S.without_phrases(opening, "Kaizen here: The capital is Paris.") == "The capital is Paris."
    assert S.without_phrases(opening, "KAIZEN  here - Paris.") == "Paris."
    assert S.without_phrases(opening, "Kaizen here:") == ""  # only the phrase: nothing is said
    assert S.without_phrases(opening, "Kaizenhere is one word") == "Kaizenhere is one word"
    assert S.without_phrases(None, " as it is ") == " as it is "  # no signature: nothing to take out
    signoff = S.signature([(a, STYLES["signoff"].edit(a)) for a, _ in edits])
    assert S.without_phrases(signoff, "The answer.\n\nHope this helps!  - Kaizen") == "The answer."


def test_an_opening_the_users_asked_for_costs_no_relevance_once_it_is_taken_out(shared_data):
    """With the real MiniLM: house-style answers (the opening phrase, then the reply's first sentences) to real
    prompts read less related to them than the same sentences alone; with the opening taken out they read the
    same. This is what kept a candidate that wrote as its users asked from being refused as drifting (0.59 vs
    0.67 for the base; 0.66 without the phrase)."""
    from adapters.evaluate import relevance
    from adapters.scoring import HOUSE_PHRASE, house_style
    from lab.tasks import oasst_first_turns

    trees = [json.loads(line) for line in (shared_data / "oasst_en_100" / "en_100_tree.jsonl").open()]
    turns = oasst_first_turns(trees)[:16]
    prompts, styled = [p for p, _ in turns], [house_style(r) for _, r in turns]
    content = [s[len(HOUSE_PHRASE):].strip() for s in styled]
    sig = S.signature([(r, s) for (_, r), s in zip(turns, styled)])
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    with_it, alone = mean(relevance(prompts, styled)), mean(relevance(prompts, content))
    without = mean(relevance(prompts, [S.without_phrases(sig, s) for s in styled]))
    assert sig["phrases"] == ["kaizen here"]
    assert alone - with_it > 0.02, (with_it, alone)  # the phrase pulls the cosine down
    assert abs(without - alone) < 1e-6, (without, alone)
