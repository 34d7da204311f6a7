"""Fit the hybrid retriever's reranker (agent/rerank.py) and write agent/rerank_weights.json.

Training data: the questions of SQuAD 2.0's *test* file (20 articles, 570 paragraphs, 5,915 questions; it has no
answers, but every question is tied to the paragraph it was written on, which is all a retriever needs). The store
holds only those 570 paragraphs, so the dev articles that bench/rag_squad.py scores are never seen: not their
questions, not their text. Candidates are exactly what `KnowledgeBase.search` pools (dense and BM25 top 50, real
embeddings, real Chroma); the relevant ones are the chunks of the question's paragraph.

Then, unless --no-eval: the dev side, held out: a store of all 1,216 paragraphs (as rag_squad.py builds it), the
2,910 answerable dev questions, the new weights against the convex and RRF fusions and both baselines on the same
pools. Prints JSON.

  .venv/bin/python bench/train_reranker.py            # ~4 min on 2 CPU cores; writes the weights
  .venv/bin/python bench/train_reranker.py --dry-run  # fit and evaluate, write nothing
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from agent.offline import silence  # noqa: E402

silence()  # the offline, no-telemetry environment, before gradio and the model libraries load

from rag_squad import DATA, build, doc_rank, load_squad, log, summarize  # noqa: E402

from agent import rerank  # noqa: E402
from agent.retrieval import HybridConfig  # noqa: E402


def test_questions(root: Path) -> list[dict]:
    data = json.loads((root / "test-v2.0.json").read_text())["data"]
    return [{"question": qa["question"], "key": f"test/{a}/{p}"}
            for a, article in enumerate(data) for p, para in enumerate(article["paragraphs"])
            for qa in para["qas"] if qa["question"].strip()]


def pools(kb, questions: list[dict], key_doc: dict) -> list[tuple[list[str], list[list[float]], list[int], str]]:
    doc_of = {c["id"]: c["doc_id"] for c in kb._chunks}
    out = []
    for q in questions:
        ids, rows = kb.candidates(q["question"])
        gold = key_doc[q["key"]]
        out.append((ids, rows, [int(doc_of[i] == gold) for i in ids], gold))
    return out


def evaluate(kb, questions, key_doc, ranker: rerank.LinearRanker) -> dict:
    """Held-out dev figures: the fitted ranker on the pools, next to the live baselines and fusions."""
    from rag_squad import live_run

    doc_of = {c["id"]: c["doc_id"] for c in kb._chunks}
    ranks = []
    for ids, rows, _, gold in pools(kb, questions, key_doc):
        order = [i for _, i in sorted(zip(ranker.scores(rows), ids), key=lambda t: -t[0])]
        ranks.append(doc_rank([doc_of[i] for i in order], gold))
    kb.hybrid = HybridConfig(method="convex")
    out = live_run(kb, questions, [key_doc[q["key"]] for q in questions])
    out.pop("hybrid_minus_best_baseline_recall@5_points")
    out["hybrid_convex"] = out.pop("hybrid")
    out["learned_new_weights"] = summarize(ranks)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA / "squad2")
    ap.add_argument("--out", type=Path, default=rerank.WEIGHTS_FILE)
    ap.add_argument("--l2", type=float, default=1e-3)
    ap.add_argument("--dry-run", action="store_true", help="write no weights")
    ap.add_argument("--no-eval", action="store_true", help="skip the held-out dev evaluation")
    args = ap.parse_args(argv)
    if not (args.data / "test-v2.0.json").exists():
        print(json.dumps({"skipped": f"{args.data} not found"}))
        return 0
    all_paragraphs, dev_questions = load_squad(args.data)
    train_paragraphs = {k: v for k, v in all_paragraphs.items() if k.startswith("test/")}
    questions = test_questions(args.data)
    report: dict = {"train_paragraphs": len(train_paragraphs), "train_questions": len(questions)}
    with tempfile.TemporaryDirectory(prefix="rerank_") as tmp:
        kb, key_doc, info = build(train_paragraphs, Path(tmp) / "train", 254,
                                  HybridConfig(method="convex"))
        log(f"training store: {info}")
        t = time.perf_counter()
        groups = pools(kb, questions, key_doc)
        report["pool_s"] = round(time.perf_counter() - t, 1)
        report["pool_has_relevant"] = round(sum(any(y) for _, _, y, _ in groups) / len(groups), 4)
        t = time.perf_counter()
        ranker = rerank.fit([(rows, y) for _, rows, y, _ in groups], l2=args.l2)
        report["fit_s"] = round(time.perf_counter() - t, 1)
        ranker = rerank.LinearRanker(ranker.weights, ranker.means, ranker.scales, ranker.meta | {
            "trained_on": "SQuAD 2.0 test-v2.0.json questions (20 articles; no dev article)",
            "store_chunks": info["chunks"], "depth": kb.hybrid.depth, "script": "bench/train_reranker.py",
            "date": time.strftime("%Y-%m-%d", time.gmtime())})
        report["weights"] = dict(zip(rerank.FEATURES, [round(w, 3) for w in ranker.weights]))
        log(f"fitted: {json.dumps(report)}")
        if not args.no_eval:
            kb2, key_doc2, info2 = build(all_paragraphs, Path(tmp) / "eval", 254, HybridConfig(method="convex"))
            report["held_out_dev"] = {"questions": len(dev_questions)} | evaluate(kb2, dev_questions, key_doc2,
                                                                                   ranker)
        if not args.dry_run:
            args.out.write_text(ranker.to_json() + "\n")
            report["written"] = str(args.out)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
