"""Pure measures of whether a policy still answers: loops, distinct answers, answers made only of boilerplate that
many answers share, length, relevance, and confidence intervals. No model here; `adapters.evaluate` feeds them.

    s = answer_set_summary(answers, relevance=[0.41, ...], capped=[False, True, ...])
    s == {"n": 22, "distinct": 0.95, "boilerplate": 0.05, "loops": 0.0, "median_words": 31.0, "capped": 0.3,
          "relevance": 0.43, ...}
"""
from __future__ import annotations

import math
import re
import statistics
from collections import Counter

from adapters.edit_style import LIST_MARKER

_PUNCT = re.compile(r"[^\w\s]+")


def normalize(text: str) -> str:
    """Lower case, punctuation dropped, white space folded: two answers equal after this are the same answer."""
    return " ".join(_PUNCT.sub(" ", (text or "").lower()).split())


_LIST_MARKER = re.compile(LIST_MARKER, re.MULTILINE)


def tokens(text: str) -> list[str]:
    """White-space tokens, lower-cased, with punctuation at their edges stripped; a token made only of punctuation
    (`---`, `***`) stays, so a loop of dashes is seen. A list item's marker (`- `, `* `, `2. ` at the start of a
    line) is layout, not a word: kept, it made parallel items ("- The dogs are singing", "- The dogs are happy",
    "- The dogs are enjoying the music") one repeated 4-gram, a loop."""
    out = []
    for t in _LIST_MARKER.sub("", text or "").lower().split():
        core = t.strip(".,;:!?\"'()[]{}")
        out.append(core or t)
    return out


def sentences(text: str) -> list[str]:
    return [s for s in (normalize(p) for p in re.split(r"(?<=[.!?])\s+|\n+", text or "")) if s]


def loop_report(text: str, n: int = 4, times: int = 3, span: int = 40, sentence_words: int = 3) -> dict:
    """Does the answer loop? `repeated_sentence`: a sentence or line of `sentence_words` words or more occurs twice;
    `ngram_loop`: a run of `n` tokens occurs `times` times within `span` tokens (a loop inside one sentence, list
    items that only repeat, "they live to live, they live to live"), or one token `n` times in a row ("brilliant
    brilliant brilliant brilliant": too short a cycle for the n-gram count); `loop`: either. A phrase a long answer comes
    back to once a paragraph ("the removal of the statue") is its topic, not a loop: `span` keeps it out (in the
    gate's answers of 40-48 tokens every repeat is within it). The one loop measure: the gate, the style suite
    and bench/answer_quality.py."""
    seen = Counter(s for s in sentences(text) if len(s.split()) >= sentence_words)
    repeated = bool(seen) and max(seen.values()) >= 2
    t = tokens(text)
    where: dict[tuple, list[int]] = {}
    for i in range(len(t) - n + 1):
        where.setdefault(tuple(t[i:i + n]), []).append(i)
    ngram = any(at[j + times - 1] - at[j] <= span for at in where.values() for j in range(len(at) - times + 1))
    ngram = ngram or any(len(set(t[i:i + n])) == 1 for i in range(len(t) - n + 1))
    return {"repeated_sentence": repeated, "ngram_loop": ngram, "loop": repeated or ngram}


def loops(text: str) -> bool:
    return loop_report(text)["loop"]


def loop_rate(texts: list[str]) -> float:
    return round(sum(map(loops, texts)) / len(texts), 4) if texts else 0.0


def distinct_share(answers: list[str]) -> float | None:
    """Share of answers that differ from every other after `normalize` (1.0 = all different)."""
    if not answers:
        return None
    return len({normalize(a) for a in answers}) / len(answers)


def common_ngrams(answers: list[str], n: int = 3, min_share: float = 0.25, min_count: int = 3) -> set[tuple]:
    """Word n-grams found in at least `min_share` of the answers (and in `min_count` of them): text a policy puts
    into many answers whatever was asked (a sign-off, a stock apology, the style's fixed line)."""
    df = Counter()
    for a in answers:
        t = tokens(a)
        df.update({tuple(t[i:i + n]) for i in range(len(t) - n + 1)})
    need = max(min_count, math.ceil(min_share * len(answers)))
    return {g for g, c in df.items() if c >= need}


def own_words(answer: str, common: set[tuple], n: int = 3) -> tuple[int, int]:
    """(words not covered by any common n-gram, words covered)."""
    t = tokens(answer)
    covered = [False] * len(t)
    for i in range(len(t) - n + 1):
        if tuple(t[i:i + n]) in common:
            covered[i:i + n] = [True] * n
    return covered.count(False), covered.count(True)


def boilerplate_share(answers: list[str], min_own: int = 3) -> float | None:
    """Share of answers that are only boilerplate: some of their words are text common to many answers and fewer
    than `min_own` are their own. A short answer with nothing in common ("5.") is not boilerplate."""
    if not answers:
        return None
    common = common_ngrams(answers)
    flagged = 0
    for a in answers:
        own, covered = own_words(a, common)
        flagged += covered > 0 and own < min_own
    return flagged / len(answers)


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """95% Wilson score interval of a share (ties counted as halves are fine)."""
    if n <= 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def answer_set_summary(answers: list[str], relevance: list[float] | None = None,
                       capped: list[bool] | None = None) -> dict:
    """The collapse part of a report, over every answer a policy gave to held-out and regression prompts:
    `relevance` (cosine of each prompt and its answer) and `capped` (the answer ran to the token cap) per answer."""
    if not answers:
        return {"n": 0}
    counts = [len((a or "").split()) for a in answers]
    out = {"n": len(answers), "distinct": distinct_share(answers), "boilerplate": boilerplate_share(answers),
           "loops": sum(map(loops, answers)) / len(answers), "median_words": float(statistics.median(counts)),
           "mean_words": sum(counts) / len(counts)}
    if capped:
        out["capped"] = sum(map(bool, capped)) / len(capped)
    if relevance:
        out["relevance"] = sum(relevance) / len(relevance)
    return out

