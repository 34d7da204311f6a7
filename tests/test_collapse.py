"""The gate sees collapse: pure measures of 'does it still answer?' and the gate's refusals in words."""
from __future__ import annotations

import pytest

from adapters import collapse as C
from adapters.gate import gate, lost_answers, lost_reading

REAL = ["Paris is the capital of France and its largest city.",
        "Drink less coffee, keep a regular bedtime and keep the bedroom dark.",
        "A rainbow forms when sunlight is bent and reflected inside raindrops.",
        "Dear landlord, the kitchen tap has been leaking since Monday. Could you send someone?",
        "Pack water, a map, a rain jacket, snacks and good boots.",
        "Cats purr when they are content, and sometimes when they are hurt.",
        "Weather is the state of the air today; climate is the average over many years.",
        "Evaporation, condensation, precipitation and collection make up the water cycle."]
FIXED = "Thank you for reaching out to Kaizen support, we will reply soon."


def test_loops_and_normalisation():
    assert C.normalize("  Hello,   WORLD!! ") == "hello world"
    assert C.loops("I'm sorry for any confusion. " * 5)
    assert C.loops("Visit the Tokyo Tower and visit the Tokyo Tower and visit the Tokyo Tower and more")
    assert C.loops("--- --- --- --- --- --- ---")
    assert not any(C.loops(a) for a in REAL)
    assert not C.loops("")


def test_a_sentence_said_again_is_a_loop():
    text = "I'm sorry for any confusion. " * 3 + "Let me know."
    r = C.loop_report(text)
    assert r["repeated_sentence"] and r["loop"]
    assert C.loop_report("Paris is the capital. paris is   the CAPITAL!")["repeated_sentence"]


def test_list_items_that_repeat_are_a_loop():
    text = "Things to do:\n" + "\n".join(f"{i}. Visit the Tokyo Tower" for i in range(1, 10))
    assert C.loop_report(text)["loop"]


def test_an_ngram_loop_inside_one_sentence_is_a_loop():
    text = "and then we went to the shop and then we went to the shop and then we went to the shop"
    r = C.loop_report(text)
    assert r["ngram_loop"] and not r["repeated_sentence"] and r["loop"]


def test_ordinary_answers_do_not_loop():
    assert not C.loop_report("The capital of France is Paris. It is on the Seine. Yes.")["loop"]
    assert not C.loop_report("Yes. Yes. OK.")["loop"]  # short replies repeated are not sentences of 3+ words
    text = ("Python is a programming language. It is easy to read. Many people use it for data science, "
            "for the web, and for scripts.")
    assert not C.loop_report(text)["loop"]
    assert C.loop_rate(["a b c d. a b c d.", "fine answer here."]) == 0.5 and C.loop_rate([]) == 0.0


def test_parallel_list_items_are_not_a_loop_but_items_that_only_repeat_are():
    """A list item's marker is layout: kept as a token, "- the dogs are" made four different bullets a repeated
    4-gram (a bullets adapter's answer, counted as a loop by the style suite)."""
    dogs = ("- The dogs are singing\n- The sound of the dogs is a joyful sound\n- The dogs are happy to be out\n"
            "- The dogs are enjoying the music")
    assert not C.loops(dogs) and not C.loops(dogs.replace("- ", "* ")) and not C.loops(dogs.replace("- ", "1. "))
    assert C.loops("- The dogs are happy\n" * 3) and C.loops("\n".join(["* visit the tower and the park"] * 3))
    assert C.loops("- " + "--- " * 7)  # a marker dropped, the dashes after it still a loop


def test_distinct_and_boilerplate_shares():
    assert C.distinct_share(REAL) == 1.0 and C.distinct_share([]) is None
    assert C.distinct_share([FIXED] * 6 + REAL[:2]) == pytest.approx(3 / 8)
    assert C.distinct_share(["Paris.", "paris", " PARIS! "]) == pytest.approx(1 / 3)
    assert C.boilerplate_share(REAL) == 0.0
    # a fixed sign-off on real answers is a style, not collapse: every answer still has its own words
    signed = [f"{a} Hope this helps! Kaizen team." for a in REAL]
    assert C.boilerplate_share(signed) == 0.0 and C.common_ngrams(signed)
    # only the fixed line, or one generic sentence plus the fixed line: boilerplate
    generic = [f"That is a great question. {FIXED}"] * 3 + [FIXED] * 3 + REAL[:2]
    assert C.boilerplate_share(generic) == pytest.approx(6 / 8)
    assert C.boilerplate_share(["5.", "Seven.", "Blue."]) == 0.0  # short answers with nothing shared


def test_wilson_interval():
    lo, hi = C.wilson(4, 4)
    assert 0.45 < lo < 0.55 and hi == 1.0
    lo, hi = C.wilson(50, 100)
    assert lo == pytest.approx(0.404, abs=0.002) and hi == pytest.approx(0.596, abs=0.002)
    assert C.wilson(0, 0) is None


def test_answer_set_summary():
    s = C.answer_set_summary(REAL, relevance=[0.5] * len(REAL), capped=[False] * 6 + [True] * 2)
    assert s["n"] == 8 and s["distinct"] == 1.0 and s["boilerplate"] == 0.0 and s["loops"] == 0.0
    assert s["capped"] == 0.25 and s["relevance"] == 0.5 and s["median_words"] > 8
    assert C.answer_set_summary([]) == {"n": 0}


def report(answers, relevance, pref_n=40, acc=1.0, qa=0.9, sim=0.6, capped=None):
    return {"pref": {"n": pref_n, "accuracy": acc, "ci": C.wilson(acc * pref_n, pref_n)},
            "similarity": {"n": 6, "rouge_l": sim},
            "general": {"n": 10, "nonempty": 1.0, "correct": 0.8, "degenerate": 0, "repetition": 0.0,
                        "ppl_ratio": 1.0},
            "answers": C.answer_set_summary(answers, [relevance] * len(answers), capped),
            "qa": {"n": 10, "contains_gold": qa}}


def test_gate_refuses_a_collapsed_candidate_that_wins_on_its_own_metrics():
    active = report(REAL, 0.6, acc=0.5, sim=0.2)
    collapsed = report([FIXED] * 7 + REAL[:1], 0.1, acc=1.0, sim=0.9)
    ok, reasons = gate(collapsed, active)
    text = "\n".join(reasons)
    assert not ok
    assert "collapse: only 25% of 8 answers differ" in text and "same answer to different questions" in text
    assert "only text repeated across many answers" in text
    assert "relevance to the prompt 0.10 vs active 0.60" in text
    assert "preference accuracy: 1.000 vs active 0.500" in text  # it did win there: the reasons say both


def test_gate_refuses_loops_shrinking_runaway_and_lost_reading():
    active = report(REAL, 0.6, acc=0.5, sim=0.2)
    looping = report(["I'm sorry for any confusion. " * 4] * 2 + REAL[2:], 0.6)
    assert any(r.startswith("loops: 25% of answers") for r in gate(looping, active)[1])
    tiny = report([a.split()[0] for a in REAL], 0.6)
    assert any(r.startswith("answers shrank") for r in gate(tiny, active)[1])
    # when the users' own edits cut answers to x0.11, answers may shrink that far (two words of 11.5 here) ...
    shorter = report([" ".join(a.split()[:2]) for a in REAL], 0.6)
    assert any(r.startswith("answers shrank") for r in gate(shorter, active)[1])  # x0.17 < the usual x0.25
    cut = {"signature": {"length_ratio": 0.11, "phrases": [], "bullets": False, "pairs": 10}}
    shorter["edit_style"] = cut
    assert not any(r.startswith("answers shrank") for r in gate(shorter, active)[1])
    # ... but not further: one word an answer (x0.09) is still refused, in words that say why
    tiny["edit_style"] = cut
    assert any(r.startswith("answers shrank") and "edits cut answers to x0.11" in r for r in gate(tiny, active)[1])
    runaway = report(REAL, 0.6, capped=[True] * 8)
    active_capped = report(REAL, 0.6, acc=0.5, sim=0.2, capped=[False] * 8)
    assert any(r.startswith("runaway answers: 100%") for r in gate(runaway, active_capped)[1])
    unread = report(REAL, 0.6, qa=0.5)
    ok, reasons = gate(unread, active)
    assert not ok and any(r.startswith("reading: questions about a passage answered 50% vs active 90%")
                          for r in reasons)
    # the refusals that mean "it stopped answering" (the loop then retries SFT with replay), as the gate words them
    assert all(lost_answers(gate(c, active)[1]) for c in (looping, tiny, report([FIXED] * 7 + REAL[:1], 0.1)))
    assert lost_answers(gate(runaway, active_capped)[1]) and not lost_answers(reasons)  # reading alone is not
    assert lost_reading(reasons) and not lost_reading(gate(looping, active)[1])  # ... but it is lost reading

    # one passage question of eight answered otherwise is noise, even at the strict limit; two are not
    strict_active = report(REAL, 0.6, acc=0.5, sim=0.2, pref_n=4, qa=0.5)
    strict_active["qa"]["n"] = 8
    for qa, refused in ((0.375, False), (0.25, True)):
        cand = report(REAL, 0.6, pref_n=4, qa=qa)
        cand["qa"]["n"] = 8
        reading = [r for r in gate(cand, strict_active)[1] if r.startswith("reading:")]
        assert bool(reading) == refused, (qa, reading)
    assert reading == ["reading: questions about a passage answered 25% vs active 50% (allowed drop 10%, and one "
                       "question of 8)"]


def test_gate_promotes_a_styled_candidate_that_still_answers():
    active = report(REAL, 0.6, acc=0.5, sim=0.2)
    styled = report([f"Kaizen here: {a} Hope this helps!" for a in REAL], 0.58)
    ok, reasons = gate(styled, active)
    assert ok, reasons
    assert any(r.startswith("still answers: 8 answers, 100% distinct") for r in reasons)


def test_small_held_out_data_is_said_and_tightens_the_answer_checks():
    active = report(REAL, 0.60, acc=0.5, sim=0.2)
    slightly_off = report(REAL, 0.51, acc=1.0, sim=0.2)  # relevance -0.09: inside the normal 0.10, not the strict
    assert gate(slightly_off, active)[0]  # 40 held-out pairs: normal limits
    small = report(REAL, 0.51, pref_n=4, acc=1.0, sim=0.2)
    small["similarity"]["n"] = 2
    ok, reasons = gate(small, active)
    assert not ok
    assert any("held-out feedback is small (4 preference pairs, 95% CI 0.51-1.00; 2 edited answers)" in r
               for r in reasons)
    assert any(r.startswith("answers drift from the question") and "allowed drop 0.08" in r for r in reasons)


def test_the_relevance_the_users_own_preferences_give_up_is_allowed_and_said_but_a_collapse_is_still_refused():
    """Measured in the style suite: edits into a fixed opening phrase and the first sentences read 0.08 less related
    to their questions (MiniLM: 0.64 vs 0.72 for the answers they replaced, 10 held-out pairs), and a good adapter in
    that style was refused for exactly that drop (0.62 vs 0.72, strict 0.08). What users preferred sets how much
    relevance their style may cost (at most 0.15)."""
    from adapters.gate import MAX_STYLE_SHIFT, style_shift

    def with_pairs(r, replaced, preferred):
        r["answers"].update(replaced_relevance=replaced, preferred_relevance=preferred)
        return r

    active = with_pairs(report(REAL, 0.72, pref_n=10, acc=0.5, sim=0.2), 0.72, 0.62)
    styled = report(REAL, 0.62, pref_n=10, acc=1.0, sim=0.35)
    assert style_shift(active["answers"]) == 0.1
    ok, reasons = gate(styled, active)
    assert ok, reasons
    assert any("the users' preferred answers cost 0.10 of it" in r for r in reasons)
    # without the pairs' figures (an older report) the same candidate is refused, as it was
    plain = report(REAL, 0.72, pref_n=10, acc=0.5, sim=0.2)
    ok, reasons = gate(styled, plain)
    assert not ok and any(r.startswith("answers drift") and "allowed drop 0.08)" in r for r in reasons)
    # a drop past what the preferences explain is still refused, and the reason says how much was allowed and why
    drifted = report(REAL, 0.50, pref_n=10, acc=1.0, sim=0.35)
    ok, reasons = gate(drifted, active)
    assert not ok and any("allowed drop 0.08 + 0.10: the answers users preferred read 0.10 less related" in r
                          for r in reasons)
    # preferred answers that are only a fixed line: the shift is capped, and the collapse checks (which never move)
    # refuse it
    fixed = with_pairs(report(REAL, 0.72, pref_n=10, acc=0.5, sim=0.2), 0.72, 0.05)
    assert style_shift(fixed["answers"]) == MAX_STYLE_SHIFT
    ok, reasons = gate(report([FIXED] * 7 + REAL[:1], 0.1, pref_n=10, acc=1.0, sim=0.9), fixed)
    assert not ok and any(r.startswith("collapse: only 25% of 8 answers differ") for r in reasons)
    # preferred answers that read *more* related than the replaced ones widen nothing
    assert style_shift(with_pairs(report(REAL, 0.6), 0.6, 0.7)["answers"]) == 0.0


def test_a_candidate_as_related_as_the_answers_users_preferred_has_not_drifted():
    """Measured in the loop test: users edited loosely related human answers (0.62 relevance) into the house style
    (0.68 on the 7 held-out pairs), the base's own answers read 0.72, and the SFT adapter in the style 0.63: a drop
    of 0.09 that the strict 0.08 refused, although it writes as related as the users' own preferred answers."""
    from adapters.gate import relevance_floor

    def with_pairs(r, replaced, preferred):
        r["answers"].update(replaced_relevance=replaced, preferred_relevance=preferred)
        return r

    active = with_pairs(report(REAL, 0.72, pref_n=7, acc=0.5, sim=0.2), 0.616, 0.678)
    assert relevance_floor(active["answers"], 0.08) == pytest.approx(0.598)
    ok, reasons = gate(report(REAL, 0.63, pref_n=7, acc=1.0, sim=0.3), active)
    assert ok, reasons
    assert any("as related as the answers users preferred, 0.68" in r for r in reasons)
    ok, reasons = gate(report(REAL, 0.55, pref_n=7, acc=1.0, sim=0.3), active)
    assert not ok and any(r.startswith("answers drift") and "the answers users preferred read 0.68" in r
                          for r in reasons)
    # preferred answers that barely answer lower the floor only down to the cap
    loose = with_pairs(report(REAL, 0.72, pref_n=7, acc=0.5, sim=0.2), 0.2, 0.2)
    assert relevance_floor(loose["answers"], 0.08) == pytest.approx(0.72 - 0.08 - 0.15)


def test_review_shows_the_decision_and_answers_side_by_side():
    from adapters.review import review_text, side_by_side

    meta = {"version": "v0002-sft", "method": "sft", "state": "retired",
            "gate": {"promote": False, "reasons": ["collapse: only 25% of 8 answers differ from one another"]},
            "eval": {"active_version": "v0001-sft",
                     "candidate": {"examples": [{"prompt": "Why do cats purr?", "answer": FIXED},
                                                {"prompt": "only candidate", "answer": "x"}]},
                     "active": {"examples": [{"prompt": "Why do cats purr?", "answer": REAL[5]}]}}}
    assert side_by_side(meta) == [{"prompt": "Why do cats purr?", "active": REAL[5], "candidate": FIXED}]
    text = review_text(meta)
    assert text.startswith("v0002-sft (sft, retired): the gate refused it against v0001-sft")
    assert "- collapse: only 25%" in text and f"candidate: {FIXED}" in text and f"active:    {REAL[5]}" in text
    assert review_text({"version": "v1", "method": "sft", "state": "candidate"}).endswith("registered by hand)")


def test_a_phrase_a_long_answer_comes_back_to_is_its_topic_but_a_short_cycle_is_a_loop():
    para = ("The removal of the statue was a significant event for the city and for the country as a whole, "
            "and people talked about it for many years afterwards in the newspapers and at home. ")
    assert not C.loops(" ".join(para.replace("statue", w) for w in ("statue", "bronze statue", "old statue")))
    assert C.loops("This is the way of the people of Dubai. They live to live, they live to live, and they live "
                   "to live. This is the way of their way of life.")
    assert C.loops("He was a brilliant thinker. He was brilliant, brilliant. He was brilliant brilliant brilliant "
                   "brilliant brilliant.")
