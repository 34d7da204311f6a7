"""Curation of dataset rows (pure functions, no I/O): PII redaction, suspicious-edit flags, length bounds, exact and
near-duplicate removal, a per-user cap. Each step returns what it kept plus what it dropped, so the manifest can
count every decision. The standard library and datasketch (MinHash LSH)."""
from __future__ import annotations

import functools
import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

from datasketch import MinHash, MinHashLSH


@dataclass(frozen=True)
class CurateConfig:
    """Knobs of `feedback.datasets.build_datasets`. Lengths are in characters (token-free, so pure and fast)."""

    min_answer_chars: int = 2  # gold / chosen / rejected / completion shorter than this: dropped
    max_answer_chars: int = 8000
    max_prompt_chars: int = 16000  # all prompt messages together
    near_dup_threshold: float = 0.9  # word-3-gram Jaccard at or above this: a near duplicate (0 or 1 = off)
    per_user_cap: int | None = None  # at most this many rows of one user per file
    max_user_share: float | None = 0.5  # no user above this share of a file (applies with 2+ users)
    redact_pii: bool = True
    include_flagged: bool = False  # keep rows built from suspicious edits (they are listed in the manifest anyway)

    def __post_init__(self):
        if self.min_answer_chars < 0 or self.max_answer_chars < self.min_answer_chars or self.max_prompt_chars < 1:
            raise ValueError("length bounds: need 0 <= min_answer_chars <= max_answer_chars, max_prompt_chars >= 1")
        if not 0.0 <= self.near_dup_threshold <= 1.0:
            raise ValueError(f"near_dup_threshold must be in [0, 1], got {self.near_dup_threshold}")
        if self.per_user_cap is not None and self.per_user_cap < 1:
            raise ValueError(f"per_user_cap must be >= 1 or None, got {self.per_user_cap}")
        if self.max_user_share is not None and not 0.0 < self.max_user_share <= 1.0:
            raise ValueError(f"max_user_share must be in (0, 1] or None, got {self.max_user_share}")


def normalize_text(text: str) -> str:
    """Case-, width- and whitespace-insensitive form used for equality, dedup and split keys."""
    text = unicodedata.normalize("NFKC", text or "").casefold()
    return re.sub(r"\s+", " ", text).strip()


def row_texts(row: dict) -> list[str]:
    """Every message text of a row, prompt first."""
    out = []
    for key in ("messages", "prompt", "chosen", "rejected", "completion"):
        out += [m["content"] for m in row.get(key, [])]
    return out


def _map_texts(row: dict, fn) -> dict:
    new = dict(row)
    for key in ("messages", "prompt", "chosen", "rejected", "completion"):
        if key in row:
            new[key] = [{**m, "content": fn(m["content"])} for m in row[key]]
    return new


def answers(row: dict) -> list[str]:
    """The model-side texts of a row (what training pushes towards or away from)."""
    if "messages" in row:
        return [row["messages"][-1]["content"]]
    return [m["content"] for k in ("chosen", "rejected", "completion") for m in row.get(k, [])]


def prompt_texts(row: dict) -> list[str]:
    msgs = row["messages"][:-1] if "messages" in row else row["prompt"]
    return [m["content"] for m in msgs]


# ---------------------------------------------------------------------------------------------- PII
PII_PATTERNS: list[tuple[str, re.Pattern, str]] = [
    ("private_key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)",
                               re.S), "[SECRET]"),
    ("api_key", re.compile(r"(?<![\w-])(?:sk-(?:proj-|ant-)?[A-Za-z0-9_-]{16,}|AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}"
                           r"|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}|xox[abprs]-[A-Za-z0-9-]{10,}"
                           r"|AIza[0-9A-Za-z_-]{35}|hf_[A-Za-z0-9]{30,}"
                           r"|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})"), "[API_KEY]"),
    ("email", re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"), "[EMAIL]"),
    ("secret", re.compile(r"(?<![0-9A-Za-z])(?:0x)?[0-9a-fA-F]{32,}(?![0-9A-Za-z])"), "[SECRET]"),
    ("phone", re.compile(r"(?<![\w.+])(?:\+\d{10,15}|(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?|\d{2,4}[\s.-])"
                         r"\d{3,4}[\s.-]?\d{3,5})(?![\w.]\d|\w)"), "[PHONE]"),
]
_B64 = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{32,}={0,2}")


def _entropy(s: str) -> float:
    counts = Counter(s)
    return -sum(c / len(s) * math.log2(c / len(s)) for c in counts.values())


def _looks_secret(token: str) -> bool:
    """A long base64/url-safe token with mixed classes and high entropy (not a path of words)."""
    body = token.rstrip("=")
    return (sum(c.isdigit() for c in body) >= 4 and any(c.islower() for c in body) and any(c.isupper() for c in body)
            and body.count("/") <= 2 and _entropy(body) >= 4.0)


def redact(text: str) -> tuple[str, Counter]:
    """Replace emails, phone numbers, API keys and long secrets with placeholders. Returns (text, counts by kind).
    Long hex strings (32+) count as secrets even when they are harmless (a git commit id): leaking a key costs
    more than losing a hash from the training text."""
    out, counts = _redact(text)
    return out, Counter(dict(counts))


@functools.lru_cache(maxsize=16384)  # prompts repeat across rows (every turn of a thread carries its history)
def _redact(text: str) -> tuple[str, tuple]:
    counts: Counter = Counter()
    for kind, pattern, repl in PII_PATTERNS[:-1]:  # phone last: after secrets have been taken out
        text, n = pattern.subn(repl, text)
        counts[kind] += n

    def b64(m):
        if _looks_secret(m.group(0)):
            counts["secret"] += 1
            return "[SECRET]"
        return m.group(0)

    text = _B64.sub(b64, text)
    kind, pattern, repl = PII_PATTERNS[-1]
    text, n = pattern.subn(repl, text)
    counts[kind] += n
    return text, tuple(sorted((+counts).items()))


def redact_row(row: dict) -> tuple[dict, Counter]:
    total: Counter = Counter()

    def fn(text):
        out, c = redact(text)
        total.update(c)
        return out

    return _map_texts(row, fn), total


# ---------------------------------------------------------------------------------------------- suspicious edits
FLAG_PATTERNS: dict[str, re.Pattern] = {
    "injection": re.compile(
        r"\b(?:ignore|disregard|forget|override)\b[^.\n]{0,40}\b(?:previous|prior|above|earlier|all|system|your)\b"
        r"[^.\n]{0,20}\b(?:instructions?|prompts?|rules|messages|guidelines)\b"
        r"|\byou are now\b|\bnew instructions?\s*:|\bsystem prompt\b|\bjailbreak|\bdo anything now\b"
        r"|<\|(?:im_start|im_end|system|user|assistant|endoftext)\|>|\[/?INST\]|<</?SYS>>", re.I),
    "link": re.compile(r"\b(?:https?|ftp)://\S+|\bwww\.[^\s/]+\.\S+|\bdata:[a-z]+/[a-z+.-]+[;,]"
                       r"|\[[^\]]*\]\([^)\s]+\)", re.I),
    "html": re.compile(r"<\s*/?\s*(?:script|iframe|object|embed|svg|style|form|meta|link)\b|\bjavascript\s*:"
                       r"|<[^>]+\bon[a-z]+\s*=", re.I),
}


def edit_flags(original: str, edited: str) -> list[str]:
    """Reasons an edit looks suspicious: it brings in injected instructions, links or markup that the original
    answer did not have (the pattern occurs more often in the edit than in the original)."""
    return sorted(name for name, p in FLAG_PATTERNS.items()
                  if len(p.findall(edited or "")) > len(p.findall(original or "")))


def flag_events(events: list[dict]) -> dict[str, list[str]]:
    """{event_id: reasons} for every event whose rows would carry a suspicious edit: the edit itself, and a vote or
    a pick made after the answer was corrected (its rows hold the texts as the user saw them, `seen`)."""
    out = {}
    for e in events:
        if e["kind"] == "edit":
            pairs = [(e.get("answer", ""), e.get("edited", ""))]
        elif e["kind"] == "choice":
            pairs = [(c.get("content", ""), c.get("seen", c.get("content", ""))) for c in e.get("candidates") or []]
        else:
            pairs = [(e.get("answer", ""), e.get("seen", e.get("answer", "")))]
        reasons = sorted({r for original, shown in pairs for r in edit_flags(original, shown)})
        if reasons:
            out[e["event_id"]] = reasons
    return out


# ---------------------------------------------------------------------------------------------- length
def length_problem(row: dict, cfg: CurateConfig) -> str | None:
    """"too_short" / "too_long" / "prompt_too_long" / None."""
    lens = [len(a.strip()) for a in answers(row)]
    if min(lens) < cfg.min_answer_chars:
        return "too_short"
    if max(lens) > cfg.max_answer_chars:
        return "too_long"
    if sum(len(t) for t in prompt_texts(row)) > cfg.max_prompt_chars:
        return "prompt_too_long"
    return None


def degenerate(row: dict) -> bool:
    """A preference pair whose two sides became the same text (e.g. after redaction)."""
    return "chosen" in row and normalize_text(row["chosen"][0]["content"]) == normalize_text(
        row["rejected"][0]["content"])


# ---------------------------------------------------------------------------------------------- duplicates
def dedup_key(row: dict) -> str:
    """Normalized content of a row: what makes two rows the same training example."""
    parts = [k + "\x1f" + "\x1e".join(m["role"] + "\x1d" + normalize_text(m["content"]) for m in row[k])
             for k in ("messages", "prompt", "chosen", "rejected", "completion") if k in row]
    if "label" in row:
        parts.append("label\x1f" + str(bool(row["label"])))
    return "\x1c".join(parts)


def exact_dedup(rows: list[dict], sort_key) -> tuple[list[dict], list[dict]]:
    """Keep the first of rows with the same normalized content; its `source` absorbs the duplicates' sources.
    Returns (kept, dropped)."""
    first: dict[str, dict] = {}
    dropped = []
    for row in rows:
        key = dedup_key(row)
        if key in first:
            kept = first[key]
            kept["source"] = sorted(set(kept["source"]) | set(row["source"]), key=sort_key)
            dropped.append(row)
        else:
            first[key] = {**row, "source": list(row["source"])}
    return list(first.values()), dropped


def shingles(text: str, n: int = 3) -> set[str]:
    words = re.findall(r"\w+", normalize_text(text))
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


_NUM_PERM, _BANDS = 64, 16  # LSH: 16 bands of 4 rows; a pair at Jaccard 0.8 shares a band with p ~ 0.9999


def minhash(sh: set[str]) -> MinHash:
    """64-permutation MinHash of a shingle set (datasketch; its fixed seed makes it stable across runs)."""
    m = MinHash(num_perm=_NUM_PERM)
    m.update_batch([s.encode() for s in sorted(sh)])
    return m


def near_dedup(rows: list[dict], threshold: float) -> tuple[list[dict], list[dict]]:
    """Drop a row when an earlier kept row (with the same KTO label) has both its prompt and its answer side
    (gold / chosen + rejected / completion) at word-3-gram Jaccard >= threshold. Alike prompts alone never make a
    duplicate (different answers to one long thread), nor do alike answers alone (one short reply to different
    questions). MinHash LSH (16 bands x 4) over the answer side finds candidates; exact Jaccards decide.
    Returns (kept, dropped)."""
    if threshold <= 0.0 or threshold >= 1.0:
        return list(rows), []
    lsh = MinHashLSH(num_perm=_NUM_PERM, params=(_BANDS, _NUM_PERM // _BANDS))
    kept, kept_sh, dropped, kept_empty = [], [], [], []  # kept_empty: kept rows without answer shingles (Jaccard 1)
    for row in rows:
        ans, prm = shingles("\n".join(answers(row))), shingles("\n".join(prompt_texts(row)))
        sig = minhash(ans)
        candidates = sorted(lsh.query(sig)) if ans else kept_empty
        if any(kept[i].get("label") == row.get("label") and jaccard(ans, kept_sh[i][0]) >= threshold
               and jaccard(prm, kept_sh[i][1]) >= threshold for i in candidates):
            dropped.append(row)
            continue
        if ans:
            lsh.insert(len(kept), sig)
        else:
            kept_empty.append(len(kept))
        kept.append(row)
        kept_sh.append((ans, prm))
    return kept, dropped


# ---------------------------------------------------------------------------------------------- per-user cap
def user_cap(counts: dict, cfg: CurateConfig) -> int | None:
    """The most rows one user may keep: min(per_user_cap, the largest c such that no user holds more than
    max_user_share of the capped total). None = no limit."""
    cap = cfg.per_user_cap
    if cfg.max_user_share is not None and cfg.max_user_share < 1.0 and len(counts) >= 2:
        c = max(counts.values())
        while c > 1 and c > cfg.max_user_share * sum(min(n, c) for n in counts.values()):
            c -= 1
        if c < max(counts.values()):
            cap = c if cap is None else min(cap, c)
    return cap


def cap_users(rows: list[dict], owner_of, cfg: CurateConfig) -> tuple[list[dict], list[dict]]:
    """Keep each user's latest rows (rows come in time order) up to the cap. owner_of(row) -> user id."""
    owners = [owner_of(r) for r in rows]
    cap = user_cap(Counter(owners), cfg)
    if cap is None:
        return list(rows), []
    seen: Counter = Counter()
    keep = [False] * len(rows)
    for i in range(len(rows) - 1, -1, -1):  # newest first
        if seen[owners[i]] < cap:
            seen[owners[i]] += 1
            keep[i] = True
    return [r for r, k in zip(rows, keep) if k], [r for r, k in zip(rows, keep) if not k]
