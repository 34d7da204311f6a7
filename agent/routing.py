"""Routing — the agent's decision whether to ground an answer in the user's documents. Pure functions.

The signal is the raw cosine similarity (all-MiniLM-L6-v2) of the best retrieved chunk, `Hit.similarity`: unlike RRF
or BM25 scores it is comparable across queries. The default threshold is calibrated by
`bench/rag_squad.py --routing`: 2,910 SQuAD questions against their 1,216-paragraph corpus (should use documents)
vs. 250 real open-ended chat prompts from OpenAssistant (should not). Best-chunk cosine, share routed to documents:

    threshold   0.30   0.35   0.38   0.40   0.425  0.45
    on-topic    99.6%  97.7%  95.5%  93.8%  91.3%  87.7%
    off-topic   46.0%  24.4%  17.0%  12.8%   9.2%   6.8%

Balanced accuracy peaks near 0.42; we take 0.38, leaning towards using the documents (a missed document means an
ungrounded answer; a needless lookup means the grounded template's "the sources don't say", and the user can force
either way). Some "off-topic" prompts are general-knowledge questions a Wikipedia corpus does answer.
"""
from __future__ import annotations

import re
from collections.abc import Callable

MODES = ("auto", "on", "off")
DEFAULT_MIN_SIMILARITY = 0.38
# A chunk the learned reranker gives under 2% of being the one that answers is left out of the prompt (the best one
# always stays). 100 SQuAD dev questions, 1,216 paragraphs, the default model on llama.cpp, 48 tokens, one run
# (2026-12-06): all four chunks: gold answer in 19% of the answers, median prompt 864 tokens (~2.0 s to the first
# token here); >= 2%: 27%, 1.6 chunks, 329 tokens; >= 10%: 21%, 1.2 chunks; the chunks holding 90% of the
# probability: 22%, 1.4 chunks. The small model reads one right passage better than four with three distractors.
MIN_SOURCE_PROBABILITY = 0.02


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


def likely(hits: list, min_probability: float = MIN_SOURCE_PROBABILITY) -> list:
    """The hits worth putting in the prompt when their scores are the reranker's probabilities (the learned hybrid):
    the best one, and any other at or above `min_probability` (order kept)."""
    return [h for i, h in enumerate(hits) if i == 0 or h.score >= min_probability]


# Follow-ups. A question that leans on the one before it ("And when does it arrive?" after a question about the ferry)
# scores low alone: its subject is in the previous turn. Prepending the previous question lifts it, but lifts a
# change of subject too ("Tell me a joke about cats." after the ferry question scores 0.65), so the previous question
# is added only when the new one reads as a follow-up: short, and pointing back (a pronoun or demonstrative, or an
# opener such as "and" / "what about"), or a bare "Why?". Calibrated by `bench/follow_ups.py` (300 SQuAD follow-ups
# made by replacing the subject with a pronoun, 250 real chat prompts as changes of subject): their own passage
# reaches the prompt for 71.3% of follow-ups instead of 57.3%, and 14.8% of changes of subject use the documents
# instead of 14.4% (prepending always: 74.4%).
BACK_REFERENCES = frozenset(
    "it its itself they them their theirs themselves this that these those he him his she her hers there then "
    "such same former latter ones".split())
# ("then" is not an opener: it is a back-reference, anywhere in the question)
FOLLOW_UP_OPENERS = ("and", "also", "but", "so", "what about", "how about", "what else", "tell me more")
BARE_FOLLOW_UPS = frozenset({"why", "why not", "how", "how come", "when", "where", "who", "really", "more", "go on",
                             "continue", "explain", "example", "examples", "for example", "such as", "which one"})
MAX_FOLLOW_UP_WORDS = 10
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def is_follow_up(question: str, max_words: int = MAX_FOLLOW_UP_WORDS) -> bool:
    """True when `question` reads as leaning on the previous turn: at most `max_words` words, and a back-reference
    (it, they, that, there, ...) or a follow-up opener ("and ...", "what about ...", "why?"). Pure."""
    words = _WORD.findall((question or "").lower().replace("\u2019", "'"))
    if not words or len(words) > max_words:
        return False
    text = " ".join(words)
    if text in BARE_FOLLOW_UPS:
        return True
    if any(text == o or text.startswith(o + " ") for o in FOLLOW_UP_OPENERS):
        return True
    return any(w.split("'")[0] in BACK_REFERENCES for w in words)


def previous_question(history: list[dict] | None) -> str | None:
    """The last user message of `history` (role/content dicts), or None."""
    for m in reversed(history or []):
        if m.get("role") == "user" and isinstance(m.get("content"), str) and m["content"].strip():
            return m["content"].strip()
    return None


def follow_up_query(question: str, history: list[dict] | None, max_words: int = MAX_FOLLOW_UP_WORDS) -> str | None:
    """What to search with for a follow-up: the previous question, then this one; None when `question` stands alone
    or nothing came before it. Pure."""
    before = previous_question(history)
    if before is None or not is_follow_up(question, max_words):
        return None
    return joined_query(before, question)


def joined_query(before: str, question: str) -> str:
    """The search text for `question` read after `before`. Pure."""
    return f"{before}\n{question.strip()}"


def with_hits(hits: list, extra: list) -> list:
    """`hits`, then those of `extra` that are not among them (the same chunk of the same document). Pure."""
    seen = {(h.doc_id, h.chunk) for h in hits}
    return list(hits) + [h for h in extra if (h.doc_id, h.chunk) not in seen]


# The conversation the model is given. The 135M default model carries an earlier topic into the answer to a new one
# ("Write one sentence about the colour blue." after questions about a night train: "The night train ... is a
# beautiful sight.") and loops more with a history. `bench/history_bleed.py`: 100 OpenAssistant conversations, each
# followed by a real prompt on another subject: with the whole history 13% of the answers read closer to the earlier
# topic than to their own question (19% after three exchanges) and 11% loop; without it 0% and 0%. Real follow-ups
# (OpenAssistant's later turns) need their history: their best human reply is likelier after it (-2.06 vs -2.26 nats a
# token, 88% of them). So a question keeps the history when it reads as a follow-up, refers to the conversation, or
# is on the previous question's topic (MiniLM cosine >= MIN_TOPIC_SIMILARITY: 87% of real follow-ups are, 12% of
# changes of subject); otherwise it is answered as a new conversation. With this rule: 3% bleed, 1% loops; 92% of
# the real follow-ups keep their history (-2.07 nats a token).
MIN_TOPIC_SIMILARITY = 0.1
CONVERSATION_WORDS = frozenset(
    "again earlier previous previously above conversation chat summarise summarize summary translate rewrite "
    "rephrase reword shorter longer simpler shorten expand continue said told remember".split())


def refers_to_conversation(question: str) -> bool:
    """True when `question` names the conversation itself or asks to redo an earlier turn ("What did I say
    before?", "Translate your answer into French", "Make it shorter"). Pure."""
    return any(w in CONVERSATION_WORDS for w in _WORD.findall((question or "").lower()))


def keeps_history(question: str, similarity: Callable[[], float | None],
                  min_similarity: float = MIN_TOPIC_SIMILARITY) -> bool:
    """Whether `question` is answered with the conversation so far. `similarity()`: the cosine between it and the
    previous user message, asked for only when the words do not decide (None: it could not be measured, and the
    history is kept). Pure but for what `similarity` does."""
    if is_follow_up(question) or refers_to_conversation(question):
        return True
    measured = similarity()
    return measured is None or measured >= min_similarity
