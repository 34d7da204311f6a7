"""Training events: feedback rows joined with their prompt and answers (`Store.training_events`).

`load_training_events` does the reading; `build_events` and `prompt_chain` are pure transforms.
Event dict (all kinds): event_id ("rating:12"), kind, id, user_id, user, opted_out, created, message_id,
parent_id (the user message answered), conversation_id, prompt ([{"role","content"}], the conversation up to and
including that user message, no system messages; earlier answers as the user saw them, i.e. with the latest edit
made before this answer was generated), answer (the text as generated), seen (the answer as the user saw it when
making this gesture: the latest edit made before it, else the answer), template, model, adapter, stopped (the
user stopped that answer before its end), private_sources (it drew on the user's own documents, which no other
user may read; a choice: any of its candidates did), grounded (it was written from retrieved documents, the
shared library's or the user's: the reference block is not stored with it; a choice: any candidate), superseded
(a later event of the same kind by the same user on the same message / prompt exists: readers take the latest).
rating: value, reasons, comment. edit: edited. choice: chosen, rejected (the texts as seen when picking: an answer
the user had corrected was shown, and picked or passed over, as its correction), candidate_ids, picked_id,
candidates ([{id, content, seen, template, model, adapter}] in the order shown). For a choice,
message_id/answer/seen are the pick's.
Order: created, then kind, then id.
"""
from __future__ import annotations

import json

from sqlite_utils import Database

_EVENT_SQL = {
    "rating": "SELECT r.*, m.conversation_id FROM ratings r JOIN messages m ON m.id = r.message_id "
              "WHERE r.created > ?",
    "edit": "SELECT e.*, m.conversation_id FROM edits e JOIN messages m ON m.id = e.message_id WHERE e.created > ?",
    "choice": "SELECT c.*, m.conversation_id FROM choices c JOIN messages m ON m.id = c.prompt_message_id "
              "WHERE c.created > ?",
}
_LATEST_SQL = {  # ids of the latest event per (target, user): everything else is superseded
    "rating": "SELECT max(id) FROM ratings GROUP BY message_id, user_id",
    "edit": "SELECT max(id) FROM edits GROUP BY message_id, user_id",
    "choice": "SELECT max(id) FROM choices GROUP BY prompt_message_id, user_id",
}


def load_training_events(db: Database, since: str) -> list[dict]:
    """Read events created after `since` (normalized ISO, '' for all) in one read transaction."""
    conn = db.conn
    conn.execute("BEGIN")  # one consistent snapshot across the queries below
    try:
        rows = {kind: list(db.query(sql, (since,))) for kind, sql in _EVENT_SQL.items()}
        if not any(rows.values()):
            return []
        latest = {kind: {r[0] for r in conn.execute(sql)} for kind, sql in _LATEST_SQL.items()}
        conv_ids = sorted({r["conversation_id"] for kind_rows in rows.values() for r in kind_rows})
        messages, edits = {}, {}
        for i in range(0, len(conv_ids), 500):
            chunk = conv_ids[i:i + 500]
            marks = ",".join("?" * len(chunk))
            for m in db.query(f"SELECT * FROM messages WHERE conversation_id IN ({marks})", chunk):
                messages[m["id"]] = m
            for e in db.query(f"SELECT e.message_id, e.edited, e.created FROM edits e JOIN messages m "
                               f"ON m.id = e.message_id WHERE m.conversation_id IN ({marks}) ORDER BY e.id", chunk):
                edits.setdefault(e["message_id"], []).append(e)
        users = {u["id"]: u for u in db.query("SELECT id, name, opted_out FROM users")}
    finally:
        conn.execute("COMMIT")
    return build_events(rows, latest, messages, edits, users)


def shown_text(message: dict, edits: dict[int, list[dict]], before: str) -> str:
    """An answer as its owner saw it at time `before`: the latest edit made before then, else the text as generated
    (`edits` holds each message's edits in the order made)."""
    content = message["content"]
    for e in edits.get(message["id"], ()):
        if e["created"] < before:
            content = e["edited"]
    return content


def source_list(message: dict) -> list[dict]:
    """The documents an answer was written from (its stored `sources`, parsed; [] when none were retrieved)."""
    sources = message.get("sources")
    return json.loads(sources) if isinstance(sources, str) else sources or []


def private_sources(message: dict) -> bool:
    """Whether an answer drew on its user's own documents (a source not of the shared library). A source stored
    without the `shared` mark (answers from before it was kept) counts as private."""
    return any(not s.get("shared") for s in source_list(message))


def prompt_chain(messages: dict[int, dict], edits: dict[int, list[dict]], user_message_id: int,
                 before: str) -> list[dict]:
    """[{role, content}] from the root to `user_message_id` along parent links, skipping system messages.
    Earlier answers carry the latest edit created before `before` (what the user saw when asking)."""
    chain, mid, seen = [], user_message_id, set()
    while mid is not None and mid not in seen:
        seen.add(mid)
        m = messages[mid]
        if m["role"] != "system":
            chain.append({"role": m["role"], "content": shown_text(m, edits, before) if m["role"] == "assistant"
                          else m["content"]})
        mid = m["parent_id"]
    return chain[::-1]


def build_events(rows: dict[str, list[dict]], latest: dict[str, set[int]], messages: dict[int, dict],
                 edits: dict[int, list[dict]], users: dict[int, dict]) -> list[dict]:
    """Pure: event rows + messages -> training event dicts, sorted by (created, kind, id)."""
    out = []
    for kind, kind_rows in rows.items():
        for r in kind_rows:
            answer_id = r["picked_id"] if kind == "choice" else r["message_id"]
            answer = messages[answer_id]
            parent_id = answer["parent_id"]
            user = users.get(r["user_id"], {})
            ev = {
                "event_id": f"{kind}:{r['id']}", "kind": kind, "id": r["id"], "user_id": r["user_id"],
                "user": user.get("name"), "opted_out": bool(user.get("opted_out")), "created": r["created"],
                "message_id": answer_id, "parent_id": parent_id, "conversation_id": answer["conversation_id"],
                "prompt": prompt_chain(messages, edits, parent_id, answer["created"]) if parent_id else [],
                "answer": answer["content"], "seen": shown_text(answer, edits, r["created"]),
                "template": answer["template"], "model": answer["model"],
                "adapter": answer["adapter"], "stopped": bool(answer.get("stopped")),
                "private_sources": private_sources(answer), "grounded": bool(source_list(answer)),
                "superseded": r["id"] not in latest[kind],
            }
            if kind == "rating":
                ev.update(value=r["value"], reasons=json.loads(r["reasons"]), comment=r["comment"])
            elif kind == "edit":
                ev.update(edited=r["edited"])
            else:
                ids = json.loads(r["candidates"])
                seen = {i: shown_text(messages[i], edits, r["created"]) for i in ids}
                ev["private_sources"] = any(private_sources(messages[i]) for i in ids)
                ev["grounded"] = any(source_list(messages[i]) for i in ids)
                ev.update(chosen=seen[answer_id], rejected=[seen[i] for i in ids if i != answer_id],
                          candidate_ids=ids, picked_id=answer_id,
                          candidates=[{**{k: messages[i][k] for k in ("id", "content", "template", "model", "adapter")},
                                       "seen": seen[i]} for i in ids])
            out.append(ev)
    order = {"rating": 0, "edit": 1, "choice": 2}
    out.sort(key=lambda e: (e["created"], order[e["kind"]], e["id"]))
    return out
