"""The learned reranker's pure parts: text analysis, features, the linear model and its fitting, the shipped
weights. Milliseconds; the real-store ranking is in test_rag_retrieval.py."""
from __future__ import annotations

import json
import random

import pytest

from agent import rerank
from agent.rerank import FEATURES, Analyzer, Candidate, LinearRanker, features

A = Analyzer()


def col(name: str) -> int:
    return FEATURES.index(name)


def cand(cid: str, text: str, cos=0.5, bm25=1.0, dr=1, br=1) -> Candidate:
    return Candidate(cid, cos, bm25, dr, br, A.sentences(text))


def test_analyzer_stems_and_drops_stop_words_and_splits_sentences():
    terms = A.terms("The rivers were flooding in the Rhine")  # bm25s's short English stop list, as BM25 uses
    assert {"river", "flood", "rhine"} <= set(terms) and not {"the", "in", "rivers"} & set(terms)
    assert A.sentences("Etna erupted. Ash closed the airport!\nFlights resumed.") == [
        ["etna", "erupt"], ["ash", "close", "airport"], ["flight", "resum"]]
    assert A.sentences("") == [[]]


def test_a_chunk_holding_the_question_in_one_sentence_beats_one_that_scatters_it():
    q = A.terms("Which airport did the Etna ash close?")
    idf = {t: 2.0 if t in ("airport", "etna", "ash", "close") else 0.0 for t in q}
    together = cand("a", "Tourists like Sicily. Etna ash can close Catania airport.")
    scattered = cand("b", "Etna is a volcano. Ash is fine dust. They close the airport in Catania.")
    rows = features(q, idf, [together, scattered], depth=50)
    assert all(len(r) == len(FEATURES) for r in rows)
    assert rows[0][col("cover")] == rows[1][col("cover")] == pytest.approx(1.0)
    assert rows[0][col("sent_cover")] == pytest.approx(1.0)
    assert rows[1][col("sent_cover")] == pytest.approx(0.5)  # "close the airport"
    assert rows[0][col("bigrams")] > rows[1][col("bigrams")]  # "etna ash" ... side by side in the first only


def test_missing_words_ranks_and_scores_are_features():
    q = A.terms("Zorblax permit deadline")
    idf = {"zorblax": 5.0, "permit": 1.0, "deadlin": 1.0}
    full = cand("a", "The Zorblax permit deadline is in March.", cos=0.6, bm25=8.0, dr=1, br=None)
    part = cand("b", "Every permit has a deadline.", cos=0.3, bm25=2.0, dr=None, br=1)
    r_full, r_part = features(q, idf, [full, part], depth=50)
    assert r_full[col("missing_idf")] == 0 and r_part[col("missing_idf")] == pytest.approx(5.0)
    assert r_full[col("bm25")] == pytest.approx(1.0) and r_part[col("bm25")] == pytest.approx(0.25)
    assert r_full[col("bm25_rank")] == pytest.approx(rerank.math.log(51))  # absent: depth + 1
    assert r_part[col("dense_rank")] == pytest.approx(rerank.math.log(51))
    assert r_full[col("cos")] == 0.6


def test_idf_is_positive_and_falls_with_document_frequency():
    df = rerank.document_frequencies([[["a", "b"]], [["a"], ["a"]], [["c"]]])
    assert df == {"a": 2, "b": 1, "c": 1}
    assert 0 < rerank.idf(df, 3, "a") < rerank.idf(df, 3, "b") < rerank.idf(df, 3, "unseen")


def test_fit_learns_which_feature_marks_the_relevant_candidate():
    rnd = random.Random(0)
    signal = col("sent_cover")

    def group():
        rows = [[rnd.random() for _ in FEATURES] for _ in range(8)]
        gold = rnd.randrange(8)
        rows[gold][signal] += 1.0
        return rows, [int(i == gold) for i in range(8)]

    train = [group() for _ in range(200)]
    train.append(([[0.0] * len(FEATURES)] * 3, [0, 0, 0]))  # no relevant candidate: skipped, not an error
    model = rerank.fit(train)
    assert model.weights[signal] == max(model.weights) > 0
    assert model.meta["queries"] == 200
    held = [group() for _ in range(100)]
    top1 = sum(y[max(range(8), key=lambda i: model.scores(rows)[i])] for rows, y in held)
    assert top1 >= 90
    with pytest.raises(ValueError, match="no query"):
        rerank.fit([([[0.0] * len(FEATURES)] * 2, [0, 0])])


def test_ranker_round_trips_through_json_and_refuses_damaged_files():
    n = len(FEATURES)
    model = LinearRanker(tuple(float(i) for i in range(n)), (0.5,) * n, (2.0,) * n, {"note": "x"})
    back = LinearRanker.from_json(model.to_json())
    assert back == model and back.meta == {"note": "x"}
    row = [1.0] * n
    assert back.scores([row]) == [pytest.approx(sum(i * 0.25 for i in range(n)))]
    d = json.loads(model.to_json())
    with pytest.raises(ValueError, match="features"):
        LinearRanker.from_json(json.dumps(d | {"features": ["cos"]}))
    with pytest.raises(ValueError, match="malformed"):
        LinearRanker.from_json(json.dumps(d | {"scales": [0.0] * n}))


def test_the_shipped_weights_load_and_say_where_they_come_from():
    model = LinearRanker.load()
    assert len(model.weights) == len(FEATURES)
    assert "test-v2.0.json" in model.meta["trained_on"] and "no dev article" in model.meta["trained_on"]
    assert model.meta["queries"] > 5000
    # what the fit found on SQuAD: closeness and one-sentence coverage help, missing query words hurt
    assert model.weights[col("cos")] > 0 and model.weights[col("sent_cover")] > 0
    assert model.weights[col("missing_idf")] < 0


def test_damaged_shipped_weights_give_a_clear_error(tmp_path, monkeypatch):
    bad = tmp_path / "w.json"
    bad.write_text("{not json")
    monkeypatch.setattr(rerank, "WEIGHTS_FILE", bad)
    rerank.default_ranker.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="train_reranker.py"):
            rerank.default_ranker()
    finally:
        rerank.default_ranker.cache_clear()


def test_softmax_turns_scores_into_probabilities_in_the_same_order():
    probs = rerank.softmax([2.0, 0.0, 5.0, -5.0])
    assert rerank.softmax([1000.0, 0.0])[0] == pytest.approx(1.0)  # no overflow
    assert sum(probs) == pytest.approx(1.0) and max(probs) == probs[2]
    assert probs[0] > probs[1] > probs[3] > 0
    assert rerank.softmax([]) == []
