"""The conversation as the user last saw it, rebuilt from the append-only messages (pure: no I/O).

Messages form a tree: an answer's parent is the question it answers (a retry or a Continue is a sibling, with the
same parent), a question's parent is the answer it follows (the picked one after a regenerate-and-pick), and an
edited question is a new sibling of the old one. The branch on screen is the path from the newest message back
to the root; where that newest message is an answer whose question had a pick, the picked answer is shown.
"""
from __future__ import annotations


def current_branch(messages: list[dict], picks: dict[int, int] | None = None, undone=()) -> list[dict]:
    """`messages`: one conversation's rows (id, parent_id, role, ...) in any order; `picks`: question id ->
    the answer id the user picked last; `undone`: ids of questions the user took back (↶ undo): they and everything
    after them are left out. Returns the rows on the current branch, root first (system rows left out)."""
    gone = set(undone)
    rows = {}
    for m in sorted(messages, key=lambda m: m["id"]):  # a parent's id is always smaller than its children's
        if m["id"] in gone or m["parent_id"] in gone:
            gone.add(m["id"])
        elif m["role"] != "system":
            rows[m["id"]] = m
    if not rows:
        return []
    leaf = rows[max(rows)]
    picked = (picks or {}).get(leaf["parent_id"]) if leaf["role"] == "assistant" else None
    if picked in rows and rows[picked]["parent_id"] == leaf["parent_id"]:
        leaf = rows[picked]
    path, seen = [], set()
    node = leaf
    while node is not None and node["id"] not in seen:  # `seen`: a damaged file with a parent cycle ends here
        seen.add(node["id"])
        path.append(node)
        node = rows.get(node["parent_id"])
    return path[::-1]


def unpicked_retry(messages: list[dict], branch: list[dict], picks: dict[int, int] | None = None):
    """(first, second): the two answers a reopened chat offers to pick from, or None. They are the newest answer of
    the branch when it is a retry (sampled with a seed: `decoding.seed`), complete, not corrected, to a question
    with no pick, and the newest earlier complete answer to that question whose text differs from it (what the
    pick row showed before the reload; a retry that only repeated an answer is never offered)."""
    from feedback.curate import normalize_text

    if not branch or branch[-1]["role"] != "assistant":
        return None
    leaf = branch[-1]
    if leaf["parent_id"] in (picks or {}) or leaf.get("edited") or not _complete(leaf) or sampled_seed(leaf) is None:
        return None
    earlier = sorted((m for m in messages if m["role"] == "assistant" and m["parent_id"] == leaf["parent_id"]
                      and m["id"] < leaf["id"] and _complete(m)), key=lambda m: m["id"], reverse=True)
    for m in earlier:
        if normalize_text(m["content"]) != normalize_text(leaf["content"]):
            return m, leaf
    return None


def _complete(m: dict) -> bool:
    return not m.get("stopped") and bool((m.get("content") or "").strip())


def sampled_seed(m: dict):
    """The seed an answer was sampled with (a retry: `decoding.seed`, as the Store's decorated rows parse it), or
    None."""
    return (m.get("decoding") or {}).get("seed")


def list_label(conv: dict, with_time: bool = False) -> str:
    """One line of the sidebar: title · date (and time, with `with_time`) · adapter of its latest answer."""
    title = (conv.get("title") or "").strip() or "Untitled"
    if len(title) > 48:
        title = title[:47] + "…"
    stamp = conv.get("last_message") or conv.get("created") or ""
    day = stamp[:16].replace("T", " ") if with_time else stamp[:10]
    adapter = conv.get("adapter") or "base"
    return f"{title} · {day} · {adapter}"


def list_labels(convs: list[dict]) -> list[str]:
    """The sidebar's lines for `convs` (newest first), each one different: conversations whose lines would be the
    same ("Name a colour." twice on one day) also show the time of their latest message, and where even that is the
    same, a number in order of age (#1 the oldest), so a person can tell which one they are opening."""
    plain = [list_label(c) for c in convs]
    labels = [list_label(c, with_time=plain.count(p) > 1) for c, p in zip(convs, plain)]
    for label in set(labels):
        same = [i for i, x in enumerate(labels) if x == label]
        if len(same) > 1:
            for n, i in enumerate(reversed(same), 1):  # newest first in the list: the last one is the oldest
                labels[i] = f"{label} #{n}"
    return labels
