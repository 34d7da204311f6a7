"""A learned reranker for the hybrid retriever: a linear score over ten cheap features of each (query, chunk)
candidate — the dense cosine, the BM25 score, their ranks, and lexical evidence that plain BM25 does not see: how much
of the query's (IDF-weighted) vocabulary one sentence or two adjacent sentences of the chunk hold, and how many of
the query's word pairs appear side by side in the chunk.

No model to download and nothing slow: the weights are a few numbers in `rerank_weights.json`, fitted by
`bench/train_reranker.py` on the questions of the SQuAD 2.0 *test* file (20 Wikipedia articles), never on the dev
articles the retrieval benchmark scores. Pure functions: the store (agent/retrieval.py) supplies the candidates.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

WEIGHTS_FILE = Path(__file__).with_name("rerank_weights.json")
FEATURES = ("cos", "bm25", "dense_rank", "bm25_rank", "cover", "sent_cover", "pair_cover", "bigrams",
            "missing_idf", "sent_cover_x_cos")

_WORD = re.compile(r"\w+", re.UNICODE)
_SENT = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])|\n+")


# ---------------------------------------------------------------------------------------------- text analysis
class Analyzer:
    """Lower-cased, stemmed words with English stop words removed (the same analysis as the BM25 index)."""

    def __init__(self):
        import Stemmer
        from bm25s.stopwords import STOPWORDS_EN

        self._stem = Stemmer.Stemmer("english").stemWords
        self._stop = frozenset(STOPWORDS_EN)

    def terms(self, text: str) -> list[str]:
        words = [w for w in _WORD.findall(text.lower()) if w not in self._stop]
        return self._stem(words) if words else []

    def sentences(self, text: str) -> list[list[str]]:
        return [t for t in (self.terms(s) for s in _SENT.split(text)) if t] or [[]]


def document_frequencies(docs: list[list[list[str]]]) -> dict[str, int]:
    """Term -> number of chunks holding it, from chunks given as sentences of terms."""
    df: dict[str, int] = {}
    for sentences in docs:
        for t in {t for s in sentences for t in s}:
            df[t] = df.get(t, 0) + 1
    return df


def idf(df: dict[str, int], n_docs: int, term: str) -> float:
    """BM25's (always positive) inverse document frequency."""
    d = df.get(term, 0)
    return math.log(1 + (n_docs - d + 0.5) / (d + 0.5))


# ---------------------------------------------------------------------------------------------- features
@dataclass
class Candidate:
    """One chunk proposed for a query, with the first-stage evidence. Ranks are 1-based; None = not in that list."""

    id: str
    cos: float
    bm25: float
    dense_rank: int | None
    bm25_rank: int | None
    sentences: list[list[str]] = field(default_factory=list)


def _weighted_cover(q: dict[str, float], terms: set[str], total: float) -> float:
    return sum(w for t, w in q.items() if t in terms) / total if total else 0.0


def features(query_terms: list[str], weights: dict[str, float], cands: list[Candidate], depth: int) -> list[list[float]]:
    """The feature rows (in FEATURES order) of every candidate of one query. `weights` maps each query term to
    its IDF; `depth` is the first-stage list length (an absent rank counts as depth + 1)."""
    q = {t: weights.get(t, 0.0) for t in dict.fromkeys(query_terms)}
    total = sum(q.values())
    pairs = {(a, b) for a, b in zip(query_terms, query_terms[1:]) if a != b}
    bm_max = max((c.bm25 for c in cands), default=0.0) or 1.0
    rows = []
    for c in cands:
        sents = c.sentences or [[]]
        sets = [set(s) for s in sents]
        every = set().union(*sets)
        cover = _weighted_cover(q, every, total)
        sent = max(_weighted_cover(q, s, total) for s in sets)
        pair = max([_weighted_cover(q, a | b, total) for a, b in zip(sets, sets[1:])] or [sent])
        flat = [t for s in sents for t in s]
        adjacent = set(zip(flat, flat[1:]))
        bigrams = sum(1 for p in pairs if p in adjacent) / len(pairs) if pairs else 0.0
        missing = sum(w for t, w in q.items() if t not in every)
        rows.append([
            c.cos, c.bm25 / bm_max,
            math.log(c.dense_rank or depth + 1), math.log(c.bm25_rank or depth + 1),
            cover, sent, pair, bigrams, missing, sent * c.cos,
        ])
    return rows


# ---------------------------------------------------------------------------------------------- the model
@dataclass(frozen=True)
class LinearRanker:
    """score = sum(w_i * (f_i - mean_i) / scale_i); the standardisation is part of the fitted model."""

    weights: tuple[float, ...]
    means: tuple[float, ...]
    scales: tuple[float, ...]
    meta: dict = field(default_factory=dict, hash=False, compare=False)

    def scores(self, rows: list[list[float]]) -> list[float]:
        return [sum(w * (f - m) / s for w, f, m, s in zip(self.weights, r, self.means, self.scales)) for r in rows]

    def to_json(self) -> str:
        return json.dumps({"features": list(FEATURES), "weights": list(self.weights), "means": list(self.means),
                           "scales": list(self.scales), "meta": self.meta}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "LinearRanker":
        d = json.loads(text)
        if list(d.get("features", [])) != list(FEATURES):
            raise ValueError(f"reranker weights are for features {d.get('features')}, this code computes {FEATURES}")
        n = len(FEATURES)
        w, m, s = (tuple(float(x) for x in d[k]) for k in ("weights", "means", "scales"))
        if not (len(w) == len(m) == len(s) == n) or any(x <= 0 for x in s):
            raise ValueError("reranker weights file is malformed")
        return cls(w, m, s, d.get("meta", {}))

    @classmethod
    def load(cls, path: Path = WEIGHTS_FILE) -> "LinearRanker":
        return cls.from_json(Path(path).read_text())


def softmax(scores: list[float]) -> list[float]:
    """Scores -> probabilities over the same candidates (the fit's listwise model: P(this one is relevant))."""
    if not scores:
        return []
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    total = sum(exps)
    return [e / total for e in exps]


@lru_cache(maxsize=1)
def default_ranker() -> LinearRanker:
    """The shipped weights (read once per process)."""
    try:
        return LinearRanker.load(WEIGHTS_FILE)
    except (OSError, ValueError, KeyError) as e:
        raise RuntimeError(f"the reranker's weights {WEIGHTS_FILE} are missing or damaged ({e}); "
                           "rebuild them with bench/train_reranker.py or search with HybridConfig(method='convex')"
                           ) from e


def fit(groups: list[tuple[list[list[float]], list[int]]], epochs: int = 300, l2: float = 1e-3,
        seed: int = 0) -> LinearRanker:
    """Listwise fit (softmax over each query's candidates, the relevant ones as the target) with full-batch L-BFGS.
    `groups`: per query, (feature rows, 0/1 relevance); queries with no relevant candidate are skipped."""
    import torch

    torch.manual_seed(seed)
    groups = [(r, y) for r, y in groups if any(y) and len(r) > 1]
    if not groups:
        raise ValueError("no query has a relevant candidate to learn from")
    flat = torch.tensor([row for r, _ in groups for row in r], dtype=torch.float64)
    mean, scale = flat.mean(0), flat.std(0).clamp_min(1e-6)
    xs = [(torch.tensor(r, dtype=torch.float64) - mean) / scale for r, _ in groups]
    ys = [torch.tensor(y, dtype=torch.float64) for _, y in groups]
    w = torch.zeros(len(FEATURES), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=epochs, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = sum(-(torch.logsumexp(x @ w + torch.log(y.clamp_min(1e-30)), 0) - torch.logsumexp(x @ w, 0))
                   for x, y in zip(xs, ys)) / len(xs) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return LinearRanker(tuple(w.detach().tolist()), tuple(mean.tolist()), tuple(scale.tolist()),
                        {"queries": len(groups), "l2": l2})
