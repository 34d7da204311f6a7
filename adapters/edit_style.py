"""What the users' edits consistently changed, and whether a policy's answers show it. Pure.

    sig = signature([(original, edited), ...])      # the held-out edit pairs
    shown = follows(sig, answers)                    # one policy's answers to held-out and open-ended prompts
    ok, words = moved(sig, shown_candidate, shown_active)

ROUGE-L against six held-out edits cannot see a house style: the content of an answer dominates it (an adapter
that answered 91% of unseen prompts in two sentences scored 0.247 against the base's 0.247). The edits themselves
say what users wanted, so the signature keeps only what most of them changed the same way:
- `phrases`: text added by the edit and absent from the original, in at least PHRASE_SHARE of the pairs (a sign-off
  line, a "TL;DR:" label, an opening phrase), as lower-case token strings;
- `bullets`: most edits are lists (two or more bullet lines) where their originals were not;
- `length`: most edits are much shorter (or longer) than their originals: the median ratio of their words (judged
  only when the edits add no phrase and make no lists: there, the length is a side effect).
A feature that only some edits show is left out: those edits are content corrections, and the similarity to them
(adapters/evaluate.py `similarity`) is the measure for those.

Phrases the edits add at the end (`ending`: a sign-off) cannot show in an answer the evaluation's token cap cut
off: such an answer without the phrase is unknown, not a miss, and is left out of the phrase share (`unknown`
counts them). Answers that loop to the cap are the collapse check's to refuse (adapters/collapse.py).
"""
from __future__ import annotations

import re
import statistics

MIN_PAIRS = 4  # fewer held-out edits than this say nothing consistent
PHRASE_SHARE = 0.6  # an added phrase counts when this share of the edits add it
FEATURE_SHARE = 0.7  # bullets / length count when this share of the edits show them
SHORTER, LONGER = 0.6, 1.6  # median words(edit) / words(original) beyond these: the edits change the length
MOVED_SHARE = 0.25  # a phrase or bullet share must rise at least this much over the active policy
MOVED_LENGTH = 1 / 3  # the median length must cover this part of the way to the edits' ratio
LIST_MARKER = r"^[ \t]*(?:[-*+\u2022]|\d{1,3}[.)])[ \t]+"  # a list item's marker at the start of a line
_BULLET = re.compile(LIST_MARKER + r"\S")


def tokens(text: str) -> list[str]:
    """Lower-case words and single punctuation marks ("tl ; dr :"), so fixed labels and sign-offs are seen."""
    return re.findall(r"[a-z0-9]+|[^\sa-z0-9]", (text or "").lower())


def _ngrams(t: list[str], lo: int = 2, hi: int = 6) -> set[str]:
    return {" ".join(t[i:i + n]) for n in range(lo, hi + 1) for i in range(len(t) - n + 1)}


def _core(gram: str) -> str:
    """The n-gram without punctuation at its ends ("." before a sign-off varies); "" unless two words remain."""
    t = gram.split()
    while t and not t[0][0].isalnum():
        t.pop(0)
    while t and not t[-1][0].isalnum():
        t.pop()
    return " ".join(t) if sum(w[0].isalnum() for w in t) >= 2 else ""


def bullet_lines(text: str) -> list[str]:
    """The lines of `text` that are list items ("- ", "* ", "• ", "1. ", "2) ")."""
    return [line for line in (text or "").splitlines() if _BULLET.match(line)]


def is_list(text: str) -> bool:
    return len(bullet_lines(text)) >= 2


def word_count(text: str) -> int:
    return len(re.findall(r"\w+", text or ""))


def signature(pairs: list[tuple[str, str]]) -> dict | None:
    """The consistent features of (original, edited) pairs, or None with fewer than MIN_PAIRS pairs."""
    pairs = [(o or "", e or "") for o, e in pairs if (e or "").strip()]
    if len(pairs) < MIN_PAIRS:
        return None
    n = len(pairs)
    counts: dict[str, int] = {}
    for o, e in pairs:
        for g in _ngrams(tokens(e)) - _ngrams(tokens(o)):
            counts[g] = counts.get(g, 0) + 1
    frequent: dict[str, int] = {}
    for g, c in counts.items():
        if c >= PHRASE_SHARE * n and (core := _core(g)):
            frequent[core] = max(c, frequent.get(core, 0))
    phrases = []
    for g in sorted(frequent, key=len, reverse=True):  # the longest phrases; their parts say nothing more
        if not any(f" {g} " in f" {p} " for p in phrases):
            phrases.append(g)
    phrases = sorted(phrases, key=lambda g: -frequent[g])[:3]
    ratios = [word_count(e) / max(1, word_count(o)) for o, e in pairs]
    ratio = statistics.median(ratios)
    same_way = sum(r < 1 for r in ratios) if ratio < 1 else sum(r > 1 for r in ratios)
    lists = sum(is_list(e) and not is_list(o) for o, e in pairs)
    return {"pairs": n, "phrases": phrases, "ending": bool(phrases) and _at_end(phrases, pairs),
            "bullets": lists >= FEATURE_SHARE * n,
            "length_ratio": round(ratio, 3) if (ratio <= SHORTER or ratio >= LONGER)
            and same_way >= FEATURE_SHARE * n else None}


def _at_end(phrases: list[str], pairs: list[tuple[str, str]]) -> bool:
    """Do the edits that add a phrase mostly add it in the second half of the edited answer?"""
    where = []
    for _, e in pairs:
        j = f" {' '.join(tokens(e))} "
        for p in phrases:
            if (at := j.find(f" {p} ")) >= 0:
                where.append(at / max(1, len(j)))
                break
    return bool(where) and statistics.median(where) >= 0.5


def without_phrases(sig: dict | None, text: str) -> str:
    """`text` with the signature's added phrases taken out (any case and spacing, with the punctuation that follows
    them), for measuring what an answer says: an opening the users asked for ("Kaizen here:") is not about the
    question, and left in it pulls the answer's cosine to the prompt down (a house-style candidate read 0.59 with
    it, 0.66 without, beside the base's 0.67). Text that is only the phrase becomes ""; text without it is kept
    as it is."""
    text, found = text or "", 0
    for p in (sig or {}).get("phrases") or []:
        t = p.split()
        pattern = re.escape(t[0]) + "".join((r"\s+" if a[0].isalnum() and b[0].isalnum() else r"\s*") + re.escape(b)
                                             for a, b in zip(t, t[1:]))
        # a phrase begins and ends with a word (`_core`), so it is matched as whole words
        pattern = r"(?<![a-z0-9])" + pattern + r"(?![a-z0-9])[ \t]*[:;,.!\-\u2013\u2014]*[ \t]*"
        text, n = re.subn(pattern, "", text, flags=re.IGNORECASE)
        found += n
    return text.strip() if found else text


def consistent(sig: dict | None) -> bool:
    """Do the edits show anything a policy's answers could follow?"""
    return bool(sig and (sig["phrases"] or sig["bullets"] or sig["length_ratio"]))


def follows(sig: dict | None, answers: list[str], capped: list[bool] | None = None) -> dict | None:
    """How a policy's answers show the signature: the share containing an added phrase (of the answers where it
    could show: with an `ending` phrase, an answer cut at the token cap (`capped[i]`) without it is unknown), the
    share that are lists, their median words."""
    if not consistent(sig) or not answers:
        return None
    capped = list(capped or []) + [False] * (len(answers) - len(capped or []))
    has = [any(f" {p} " in f" {' '.join(tokens(a))} " for p in sig["phrases"]) for a in answers]
    unknown = sum(1 for h, c in zip(has, capped) if c and not h) if sig.get("ending") else 0
    known = len(answers) - unknown
    return {"n": len(answers), "unknown": unknown,
            "phrases": sum(has) / known if known else 0.0,
            "bullets": sum(map(is_list, answers)) / len(answers),
            "median_words": statistics.median(word_count(a) for a in answers)}


def moved(sig: dict | None, cand: dict | None, active: dict | None) -> tuple[bool | None, str]:
    """Did the candidate's answers move toward what the edits changed, against the active policy's? (None, "")
    when the edits show nothing consistent or a side was not measured; else (any feature moved, the words)."""
    if not consistent(sig) or not cand or not active:
        return None, ""
    said, hits = [], []
    for label, key, show in (("add", "phrases", sig["phrases"]), ("are lists", "bullets", sig["bullets"])):
        if show:
            rise = cand[key] - active[key]
            what = f"\"{' / '.join(show)}\"" if key == "phrases" else ""
            hits.append(rise >= MOVED_SHARE)
            said.append(f"{label} {what}".strip() + f": {cand[key]:.0%} of the answers vs active {active[key]:.0%}"
                        + (_cut(cand, active) if key == "phrases" else ""))
    if sig["length_ratio"] and not hits:  # alone only: beside an added phrase or lists it is a side effect
        a, c = active["median_words"], cand["median_words"]
        target = a * sig["length_ratio"]
        part = (c - a) / (target - a) if target != a else 0.0
        hits.append(part >= MOVED_LENGTH)
        said.append(f"are {'shorter' if sig['length_ratio'] < 1 else 'longer'} (x{sig['length_ratio']:.2f} the "
                    f"original): median {c:g} words vs active {a:g}")
    return any(hits), f"{sig['pairs']} held-out edits " + "; ".join(said)


def _cut(cand: dict, active: dict) -> str:
    """Words for the answers cut off before an ending phrase could show, when there were any."""
    parts = [f"{who} {d['unknown']} of {d['n']}" for who, d in (("candidate", cand), ("active", active))
             if d.get("unknown")]
    return f" (cut off at the token cap, so not counted: {', '.join(parts)})" if parts else ""
