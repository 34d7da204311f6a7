"""Replay OpenAssistant message trees as feedback, through the Store's public API (no SQL).

Each tree becomes one conversation of one user ("oasst-<tree id prefix>"; that user owns the conversation, so it is
the one who may rate it). Every branch is kept: prompter messages become user messages, assistant replies become
sibling answers (same parent). Votes: a reply with any `-1` emoji -> thumbs-down; with `+1` and no `-1` ->
thumbs-up. Sibling ranks -> a regenerate-and-pick choice among the ranked replies, the best rank picked (rank 0).
Deleted messages, and messages the store refuses (e.g. longer than its limit), are skipped with their subtree and
counted.

    python -m feedback.replay [PATH] [--limit N]     # into the store of KAIZEN_DATA_DIR
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

DEFAULT_PATH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "oasst_en_100" / "en_100_tree.jsonl"
ROLES = {"prompter": "user", "assistant": "assistant"}


def read_trees(path: str | Path, limit: int | None = None) -> list[dict]:
    """The trees of an oasst `*_tree.jsonl` file (clear error on a malformed line)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such oasst tree file")
    trees = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            if limit is not None and len(trees) >= limit:
                break
            try:
                tree = json.loads(line)
                root = tree["prompt"]
                if root["role"] != "prompter" or not isinstance(root.get("text"), str):
                    raise ValueError("the root must be a prompter message with text")
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{n}: not an oasst message tree ({e})") from e
            trees.append(tree)
    return trees


def vote(node: dict) -> int | None:
    """-1 if anyone voted it down, +1 if voted up and never down, None otherwise."""
    emojis = node.get("emojis") or {}
    if emojis.get("-1", 0) > 0:
        return -1
    if emojis.get("+1", 0) > 0:
        return 1
    return None


def replay_tree(store, tree: dict, counts: Counter) -> None:
    """Replay one tree as one conversation (see the module docstring)."""
    from feedback.store import FeedbackError

    tid = str(tree.get("message_tree_id") or tree["prompt"].get("message_id") or "tree")
    user_id = store.ensure_user(f"oasst-{tid[:8]}")
    conv = store.new_conversation(user_id, title=tree["prompt"]["text"][:80])
    counts["trees"] += 1

    def add(node: dict, parent_id: int | None) -> int | None:
        role = ROLES.get(node.get("role"))
        if node.get("deleted") or role is None:
            counts["skipped_deleted" if node.get("deleted") else "skipped_role"] += 1
            return None
        try:
            mid = store.add_message(conv, role, node["text"], user_id=user_id, parent_id=parent_id,
                                    model=node.get("model_name") or "oasst")
        except FeedbackError:
            counts["skipped_refused"] += 1
            return None
        counts[f"{role}_messages"] += 1
        return mid

    stack = [(tree["prompt"], add(tree["prompt"], None))]
    while stack:
        node, node_id = stack.pop()
        if node_id is None:
            continue
        replies = [(r, add(r, node_id)) for r in node.get("replies") or []]
        replies = [(r, rid) for r, rid in replies if rid is not None]
        if node["role"] == "prompter":
            for r, rid in replies:
                v = vote(r)
                if v is not None:
                    store.rate(rid, user_id, v)
                    counts["thumbs_up" if v == 1 else "thumbs_down"] += 1
            ranked = sorted((r["rank"], rid) for r, rid in replies if isinstance(r.get("rank"), int))
            if len(ranked) >= 2:
                store.choose(node_id, user_id, [rid for _, rid in ranked], ranked[0][1])
                counts["choices"] += 1
        stack += reversed(replies)  # depth first, in file order


def replay_oasst(store, path: str | Path = DEFAULT_PATH, limit: int | None = None) -> dict:
    """Replay the first `limit` trees (all when None) of an oasst tree file into `store`.
    Returns counts: trees, user_messages, assistant_messages, thumbs_up, thumbs_down, choices, events, skipped_*."""
    counts: Counter = Counter()
    for tree in read_trees(path, limit):
        replay_tree(store, tree, counts)
    counts["events"] = counts["thumbs_up"] + counts["thumbs_down"] + counts["choices"]
    keys = ["trees", "user_messages", "assistant_messages", "thumbs_up", "thumbs_down", "choices", "events",
            "skipped_deleted", "skipped_refused", "skipped_role"]
    return {k: counts.get(k, 0) for k in keys}


def main(argv: list[str] | None = None) -> int:
    import argparse

    from agent.settings import Settings
    from feedback.store import Store

    p = argparse.ArgumentParser(prog="python -m feedback.replay", description=__doc__.split("\n\n")[0])
    p.add_argument("path", nargs="?", default=str(DEFAULT_PATH))
    p.add_argument("--limit", type=int, default=None, help="only the first N trees")
    args = p.parse_args(argv)
    settings = Settings.from_env()
    store = Store(settings.db_path, max_user_chars=settings.max_input_chars, max_answer_chars=settings.max_edit_chars)
    print(json.dumps(replay_oasst(store, args.path, args.limit), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
