"""bench/answer_quality.py's variant names (its loop measure is the gate's: tests/test_collapse.py)."""
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
