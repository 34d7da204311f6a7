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


def list_label(conv: dict) -> str:
    """One line of the sidebar: title · date · adapter of its latest answer."""
    title = (conv.get("title") or "").strip() or "Untitled"
    if len(title) > 48:
        title = title[:47] + "…"
    day = (conv.get("last_message") or conv.get("created") or "")[:10]
    adapter = conv.get("adapter") or "base"
    return f"{title} · {day} · {adapter}"
