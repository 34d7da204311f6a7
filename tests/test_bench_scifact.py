"""bench/rag_scifact.py's reading of SciFact: the abstract column is a numpy-style list of quoted sentences with no
commas between them (ast.literal_eval would glue them into one string)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import rag_scifact  # noqa: E402


def test_abstract_sentences_are_read_one_by_one():
    field = "['Alterations of the white matter.'\n 'A \"line scan\" sequence, with it\\'s analysis.']"
    assert rag_scifact.sentences(field) == ["Alterations of the white matter.",
                                            "A \"line scan\" sequence, with it's analysis."]
    assert rag_scifact.sentences("[]") == []


def test_the_real_scifact_loads_with_evidence_inside_the_corpus():
    path = rag_scifact.DATA / "scifact" / "scifact.zip"
    if not path.exists():
        pytest.skip(f"{path} not found (../shared/data is not beside the checkout)")
    corpus, claims = rag_scifact.load(path)
    assert len(corpus) == 5183 and len(claims) == 188
    assert all(c["relevant"] and c["relevant"] <= corpus.keys() for c in claims)
    text = corpus[next(iter(claims[0]["relevant"]))]
    assert "\n" in text and "' '" not in text and not text.startswith("[")
