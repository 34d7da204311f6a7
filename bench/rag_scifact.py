"""Out-of-domain check of the retriever on SciFact: do the reranker's weights, fitted on Wikipedia questions
(SQuAD), still help on scientific claims against paper abstracts?

Corpus: the 5,183 SciFact abstracts (title + abstract, one document each, real chunking, real embeddings, real
Chroma in a temp dir). Queries: the validation claims that cite evidence (188). Relevant: the claim's evidence
abstracts (rank = the first one's). All modes on the same store, interleaved per query. Prints JSON.

  .venv/bin/python bench/rag_scifact.py [--limit N]

Results (2 CPU cores; 9,707 chunks, ingest 391 s; all 188 claims):
                  recall@1  recall@5  recall@10  MRR@10   p50 ms
    bm25           0.734     0.894     0.942     0.803     14
    dense          0.622     0.878     0.936     0.733     19
    hybrid         0.750     0.926     0.968     0.831     26   (learned reranker, the default)
    hybrid_convex  0.750     0.936     0.963     0.831     24
    hybrid_rrf     0.718     0.931     0.952     0.808     23
  Out of its domain the learned reranker is level with the convex mix (2 claims fewer in the top 5, 1 more in the
  top 10, the same MRR: within the noise of 188 claims); both beat BM25 by 3-4 points recall@5. Its SQuAD gain (+0.8
  recall@5, +6 recall@1 over convex) does not carry over to claims against abstracts.
"""
from __future__ import annotations

import argparse
import ast
import csv
import io
import json
import sys
import tempfile
import tokenize
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from agent.offline import silence  # noqa: E402

silence()  # the offline, no-telemetry environment, before gradio and the model libraries load

from rag_squad import DATA, build, live_run, log  # noqa: E402


def sentences(field: str) -> list[str]:
    """The abstract column is a numpy-style list of quoted sentences without commas: read each string token."""
    out = []
    for tok in tokenize.generate_tokens(io.StringIO(field).readline):
        if tok.type == tokenize.STRING:
            out.append(ast.literal_eval(tok.string))
    return out


def load(zip_path: Path):
    """({doc_id: text}, [{"question", "relevant": set(doc ids)}])."""
    with zipfile.ZipFile(zip_path) as z:
        names = {Path(n).name: n for n in z.namelist()}
        corpus = {}
        with z.open(names["corpus_train.csv"]) as f:
            for row in csv.DictReader(io.TextIOWrapper(f, encoding="utf-8")):
                corpus[row["doc_id"]] = row["title"].strip() + "\n" + " ".join(sentences(row["abstract"]))
        claims: dict[str, dict] = {}
        with z.open(names["claims_validation.csv"]) as f:
            for row in csv.DictReader(io.TextIOWrapper(f, encoding="utf-8")):
                if row["evidence_doc_id"] and row["evidence_doc_id"] in corpus:
                    c = claims.setdefault(row["id"], {"question": row["claim"], "relevant": set()})
                    c["relevant"].add(row["evidence_doc_id"])
    return corpus, list(claims.values())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA / "scifact" / "scifact.zip")
    ap.add_argument("--limit", type=int, default=0, help="first N claims (0 = all)")
    args = ap.parse_args(argv)
    if not args.data.exists():
        print(json.dumps({"skipped": f"{args.data} not found"}))
        return 0
    corpus, claims = load(args.data)
    claims = claims[: args.limit] if args.limit else claims
    report: dict = {"abstracts": len(corpus), "claims": len(claims)}
    with tempfile.TemporaryDirectory(prefix="rag_scifact_") as tmp:
        kb, key_doc, info = build(corpus, Path(tmp), 254)
        report["store"] = info
        log(f"store built: {info}")
        report |= live_run(kb, claims, [{key_doc[d] for d in c["relevant"]} for c in claims])
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
