"""bench/answer_quality.py's loop detection (pure) and its variant names."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import answer_quality as aq  # noqa: E402

from agent.engine_http import llama_body  # noqa: E402
from agent.decoding import DRY  # noqa: E402
from agent.settings import Settings  # noqa: E402


def test_a_sentence_said_again_is_a_loop():
    text = "I'm sorry for any confusion. " * 3 + "Let me know."
    r = aq.loop_report(text)
    assert r["repeated_sentence"] and r["loop"]
    assert aq.loop_report("Paris is the capital. paris is   the CAPITAL!")["repeated_sentence"]


def test_list_items_that_repeat_are_a_loop():
    text = "Things to do:\n" + "\n".join(f"{i}. Visit the Tokyo Tower" for i in range(1, 10))
    assert aq.loop_report(text)["loop"]


def test_an_ngram_loop_inside_one_sentence_is_a_loop():
    text = "and then we went to the shop and then we went to the shop and then we went to the shop"
    r = aq.loop_report(text)
    assert r["ngram_loop"] and not r["repeated_sentence"] and r["loop"]


def test_ordinary_answers_do_not_loop():
    assert not aq.loop_report("The capital of France is Paris. It is on the Seine. Yes.")["loop"]
    assert not aq.loop_report("Yes. Yes. OK.")["loop"]  # short replies repeated are not sentences of 4+ words
    text = ("Python is a programming language. It is easy to read. Many people use it for data science, "
            "for the web, and for scripts.")
    assert not aq.loop_report(text)["loop"]
    assert aq.loop_rate(["a b c d. a b c d.", "fine answer here."]) == 0.5 and aq.loop_rate([]) == 0.0


def test_variant_names():
    s = Settings()
    assert aq.parse_variant("old", s).repetition_penalty == 1.0 and aq.parse_variant("old", s).temperature == 0
    d = aq.parse_variant("rp1.2+ng4", s)
    assert (d.repetition_penalty, d.no_repeat_ngram_size, d.temperature) == (1.2, 4, 0.0)
    assert aq.parse_variant("new", s).repetition_penalty == s.repetition_penalty
    assert aq.parse_variant("ng4+dry", s).dry() == DRY(allowed_length=3)  # what llama-server gets
    tuned = aq.parse_variant("ng4+dry:m4:l128:k", s).dry()
    assert (tuned.multiplier, tuned.allowed_length, tuned.last_n) == (4.0, 3, 128)
    assert tuned.breakers == ("\n", ":", '"', "*")  # llama-server's own, measured against ours
    assert llama_body([1], max_new_tokens=8, lora=[], decoding=aq.parse_variant("ng4+dry:m4", s))[
        "dry_multiplier"] == 4.0
    with pytest.raises(ValueError):
        aq.parse_variant("bogus", s)


def test_reserved_prompts_are_refused():
    with pytest.raises(SystemExit):
        aq.main(["--prompts", "101"])
