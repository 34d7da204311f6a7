"""bench/train_reranker.py end to end on a small SQuAD-shaped corpus: real embeddings, a real Chroma store, the
real pools `KnowledgeBase.search` ranks; the weights it writes load and rank the held-out questions."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.rerank import FEATURES, LinearRanker

ROOT = Path(__file__).resolve().parents[1]

TOPICS = {
    "Volcano": ["Mount Etna erupts often; its ash clouds close Catania airport for days.",
                "Lava from Etna reached the town of Nicolosi in 1886 and stopped at its edge.",
                "The summit of Etna has four craters and its height changes with each eruption."],
    "Bakery": ["A sourdough starter is fed every 12 hours with flour and water.",
               "Bakers score the loaf with a razor so steam escapes where they choose.",
               "Rye flour ferments faster than wheat flour and makes a denser crumb."],
    "Chess": ["Castling moves the king two squares towards a rook, which jumps over it.",
              "A pawn reaching the last rank is promoted, usually to a queen.",
              "En passant lets a pawn capture another that just moved two squares past it."],
}
QUESTIONS = [
    ["Which airport do Etna's ash clouds close?", "What closes for days when Etna erupts?"],
    ["Which town did Etna's lava reach in 1886?", "When did lava stop at the edge of Nicolosi?"],
    ["How many craters are on Etna's summit?", "Why does the height of Etna change?"],
    ["How often is a sourdough starter fed?", "What is a starter fed with?"],
    ["Why do bakers score a loaf?", "What tool scores the loaf?"],
    ["Which flour ferments faster than wheat?", "What crumb does rye flour make?"],
    ["How far does the king move when castling?", "Which piece jumps over the king in castling?"],
    ["What happens to a pawn on the last rank?", "What is a pawn usually promoted to?"],
    ["What does en passant let a pawn capture?", "When can a pawn be taken en passant?"],
]


def squad_file(path: Path, titles: list[str], with_answers: bool) -> None:
    data, n = [], 0
    for title in titles:
        paragraphs = []
        for p, text in enumerate(TOPICS[title]):
            qs = QUESTIONS[list(TOPICS).index(title) * 3 + p]
            paragraphs.append({"context": text, "qas": [
                {"id": f"{title}{p}{i}", "question": q, "is_impossible": False,
                 "answers": [{"text": text.split()[0], "answer_start": 0}] if with_answers else []}
                for i, q in enumerate(qs)]})
            n += len(qs)
        data.append({"title": title, "paragraphs": paragraphs})
    path.write_text(json.dumps({"version": "v2.0", "data": data}))


@pytest.mark.slow
def test_train_reranker_fits_on_the_test_file_and_writes_weights_that_load(tmp_path):
    squad = tmp_path / "squad2"
    squad.mkdir()
    squad_file(squad / "dev-v2.0.json", ["Chess"], with_answers=True)
    squad_file(squad / "test-v2.0.json", ["Volcano", "Bakery"], with_answers=False)
    out = tmp_path / "weights.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "train_reranker.py"), "--data", str(squad),
                          "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout)
    assert report["train_paragraphs"] == 6 and report["train_questions"] == 12
    assert report["pool_has_relevant"] == 1.0 and report["written"] == str(out)
    held = report["held_out_dev"]
    assert held["questions"] == 6
    assert set(held) >= {"bm25", "dense", "hybrid_convex", "hybrid_rrf", "learned_new_weights"}
    assert held["learned_new_weights"]["recall@5"] == 1.0  # 9 paragraphs: every gold is in the top 5
    assert held["learned_new_weights"]["recall@1"] >= 0.5
    model = LinearRanker.load(out)
    assert len(model.weights) == len(FEATURES) and model.meta["queries"] == 12
    assert model.meta["script"] == "bench/train_reranker.py"

    dry = subprocess.run([sys.executable, str(ROOT / "bench" / "train_reranker.py"), "--data", str(squad),
                          "--out", str(tmp_path / "none.json"), "--dry-run", "--no-eval"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "held_out_dev" not in json.loads(dry.stdout) and not (tmp_path / "none.json").exists()
