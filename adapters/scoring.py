"""Pure answer metrics shared by evaluation (adapters/evaluate.py, adapters/styles.py) and the lab (lab/tasks.py):
SQuAD's normalisation, token F1 and contains-gold; the house style the style task's editors apply."""
from __future__ import annotations

import re
import string
from collections import Counter

HOUSE_PHRASE = "Kaizen here:"


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = (text or "").lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD token F1 between one prediction and one gold answer."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def contains_gold(prediction: str, golds: list[str]) -> bool:
    """The (normalised) answer contains one of the (normalised) gold answers."""
    pred = f" {normalize_answer(prediction)} "
    return any(g and f" {g} " in pred for g in (normalize_answer(x) for x in golds))


def follows_style(answer: str, phrase: str = HOUSE_PHRASE) -> bool:
    """The answer opens with the house phrase (case, surrounding quotes/markdown and the colon forgiven)."""
    head = (answer or "").lstrip(" \t\n\"'*_#>`").lower()
    return head.startswith(phrase.lower().rstrip(":"))


def house_style(answer: str, max_chars: int = 220) -> str:
    """The house style every editor applies: the fixed opening phrase, then the answer's first sentence(s),
    at most `max_chars`, on one line."""
    text = " ".join((answer or "").split())
    sentences = re.split(r"(?<=[.!?])\s+", text)
    out = ""
    for s in sentences:
        if out and len(out) + len(s) + 1 > max_chars:
            break
        out = f"{out} {s}".strip()
    out = out[:max_chars].rstrip()
    return f"{HOUSE_PHRASE} {out}"
