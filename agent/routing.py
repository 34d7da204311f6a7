"""Routing — the agent's decision whether to ground an answer in the user's documents. Pure functions.

The signal is the raw cosine similarity (all-MiniLM-L6-v2) of the best retrieved chunk, `Hit.similarity`: unlike RRF
or BM25 scores it is comparable across queries. The default threshold is calibrated by
`bench/rag_squad.py --routing` (SQuAD questions against their corpus vs. real open-ended chat prompts).
"""
from __future__ import annotations

MODES = ("auto", "on", "off")
DEFAULT_MIN_SIMILARITY = 0.35


def best_similarity(hits) -> float | None:
    sims = [h.similarity for h in hits if getattr(h, "similarity", None) is not None]
    return max(sims) if sims else None


def decide(query: str, hits: list, mode: str = "auto", min_score: float = DEFAULT_MIN_SIMILARITY) -> bool:
    """True: answer from the documents (the `grounded` template). "on"/"off" force it; "auto" uses documents only
    when some hit's cosine similarity reaches `min_score`. No hits (no documents, empty query) -> False in auto."""
    if mode not in MODES:
        raise ValueError(f"rag mode must be one of {MODES}, not {mode!r}")
    if mode != "auto":
        return mode == "on"
    if not hits or not (query or "").strip():
        return False
    best = best_similarity(hits)
    if best is None:  # hits without a dense similarity (e.g. a BM25-only search): any lexical match counts
        return any(h.score > 0 for h in hits)
    return best >= min_score


def relevant(hits: list, min_score: float = DEFAULT_MIN_SIMILARITY) -> list:
    """The hits worth showing the model in auto mode: those at or above the threshold (order kept); hits with no
    similarity are kept."""
    return [h for h in hits if getattr(h, "similarity", None) is None or h.similarity >= min_score]
