"""House styles for the style suite: how a scripted editor rewrites an answer, and whether an answer follows the
style *and still answers*. Pure; `bench/style_suite.py` and `tests/test_styles.py` drive them through the real
feedback store and scheduler.

    style = STYLES["bullets"]
    edited = style.edit(original_answer)          # what the scripted user saves as the correction
    style.follows(model_answer)                   # True only for a real answer in the style

Each style's fixed element sits somewhere else, so the loop cannot get by with "learn the opening words":
- opening:  a fixed opening phrase, then the answer's first sentences (the loop's original test);
- bullets:  the answer as 2-4 bullet points;
- short:    at most two sentences and 40 words;
- signoff:  the answer, then a fixed sign-off line at the end (the case that once collapsed into the sign-off);
- tldr:     the answer, then a "TL;DR:" line that restates its first sentence in at most 12 words.
A style answer must hold real content: the fixed text alone never counts.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from adapters.edit_style import bullet_lines, word_count
from adapters.scoring import HOUSE_PHRASE, follows_style, house_style

SIGNOFF = "Hope this helps! - Kaizen"


def _sentences(text: str) -> list[str]:
    text = " ".join((text or "").replace("*", "").replace("#", "").split())
    return [s for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) >= 2]


def _first(text: str, max_chars: int) -> str:
    out = ""
    for s in _sentences(text):
        if out and len(out) + len(s) + 1 > max_chars:
            break
        out = f"{out} {s}".strip()
    return out[:max_chars].rstrip()


def bullets_edit(answer: str) -> str:
    points = [s.rstrip(".") for s in _sentences(answer) if len(s) <= 200][:4]
    if len(points) < 2:  # one long sentence: split at its commas
        points = [p.strip() for p in re.split(r",\s+", _first(answer, 300)) if p.strip()][:4]
    return "\n".join(f"- {p}" for p in points)


def bullets_follows(answer: str) -> bool:
    items = bullet_lines(answer)
    return len(items) >= 2 and all(word_count(i) >= 3 for i in items[:2])


def short_edit(answer: str) -> str:
    out = ""
    for s in _sentences(answer)[:2]:
        if out and word_count(out) + word_count(s) > 40:
            break
        out = f"{out} {s}".strip()
    return " ".join(out.split()[:40])


def short_follows(answer: str) -> bool:
    n = word_count(answer)
    return 4 <= n <= 45 and len(_sentences(answer)) <= 2


def signoff_edit(answer: str) -> str:
    return f"{_first(answer, 300)}\n\n{SIGNOFF}"


def signoff_follows(answer: str) -> bool:
    text = (answer or "").strip()
    at = text.lower().rfind("hope this helps")
    return at >= 0 and len(text) - at <= len(SIGNOFF) + 8 and word_count(text[:at]) >= 8


def tldr_edit(answer: str) -> str:
    body = _first(answer, 300)
    first = _sentences(body)[0] if _sentences(body) else body
    summary = " ".join(first.rstrip(".!?").split()[:12])
    return f"{body}\n\nTL;DR: {summary}."


def tldr_follows(answer: str) -> bool:
    text = answer or ""
    m = re.search(r"(?im)^\W*tl;?dr\W*:?\s*(.+)$", text)
    return bool(m) and word_count(m.group(1)) >= 3 and word_count(text[:m.start()]) >= 8


def opening_follows(answer: str) -> bool:
    head = (answer or "").lstrip(" \t\n\"'*_#>`")
    return follows_style(answer) and word_count(head[len(HOUSE_PHRASE):]) >= 4


@dataclass(frozen=True)
class Style:
    name: str
    description: str
    edit: Callable[[str], str]
    follows: Callable[[str], bool]


STYLES = {s.name: s for s in (
    Style("opening", f'opens with "{HOUSE_PHRASE}", then the first sentences', house_style, opening_follows),
    Style("bullets", "2-4 bullet points", bullets_edit, bullets_follows),
    Style("short", "at most two sentences, 40 words", short_edit, short_follows),
    Style("signoff", f'the answer, then the sign-off "{SIGNOFF}"', signoff_edit, signoff_follows),
    Style("tldr", 'the answer, then a "TL;DR:" line of at most 12 words', tldr_edit, tldr_follows),
)}
