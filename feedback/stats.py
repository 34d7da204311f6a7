"""Feedback statistics: `compute(db, user_id)` reads, `format_table(stats)` renders text for the CLI.

Thumbs counts use each user's latest rating per message (a later rating supersedes an earlier one, a 0 takes it
back); the per-day counts count every event. `user_id=None` covers all users (admin view). Answers served without
an adapter are grouped as "base".
"""
from __future__ import annotations

import json

from sqlite_utils import Database

GROUPS = ("template", "model", "adapter")
LATEST_EDITS = 10
LATEST_REASONS = 10
BASE = "base"  # the adapter label of answers from the base model (no adapter)
DAILY_SERIES = ("answers", "thumbs up", "thumbs down", "taken back", "edits", "picks")


def _query(db: Database, sql: str, params: dict) -> list[dict]:
    return list(db.query(sql, params))


def ratio(up: int, down: int) -> float | None:
    """Share of thumbs up among rated answers; None when nothing is rated."""
    return round(up / (up + down), 4) if up + down else None


def compute(db: Database, user_id: int | None = None) -> dict:
    """Totals, events per day and kind (`per_day`: rating / edit / choice events; `daily`: answers, thumbs up,
    thumbs down, taken back (each user's standing rating of an answer, on the day it was given: 👎 then 👍 is one
    👍), edits, picks), answers/thumbs/edits per template, model and adapter, latest edits, and the
    latest reasons and comments (of ratings that still stand)."""
    # One bound parameter, :user (None: every user); no SQL is built from values. The only spliced names are the
    # fixed GROUPS columns, since a column cannot be a parameter.
    args = {"user": user_id, "reasons": LATEST_REASONS, "edits": LATEST_EDITS}
    latest = """SELECT * FROM ratings WHERE id IN (SELECT max(id) FROM ratings WHERE (:user IS NULL OR user_id = :user)
             GROUP BY message_id, user_id)"""
    own = "(:user IS NULL OR user_id = :user)"
    mine = "(SELECT id FROM conversations WHERE (:user IS NULL OR user_id = :user))"
    db.conn.execute("BEGIN")  # one snapshot
    try:
        totals = _query(db, f"""SELECT
            (SELECT count(*) FROM users WHERE (:user IS NULL OR id = :user)) AS users,
            (SELECT count(*) FROM conversations WHERE {own}) AS conversations,
            (SELECT count(*) FROM messages WHERE role = 'assistant' AND conversation_id IN {mine}) AS answers,
            (SELECT count(*) FROM ratings WHERE {own}) AS ratings,
            (SELECT count(*) FROM edits WHERE {own}) AS edits,
            (SELECT count(*) FROM choices WHERE {own}) AS choices,
            (SELECT count(*) FROM ({latest}) WHERE value = 1) AS thumbs_up,
            (SELECT count(*) FROM ({latest}) WHERE value = -1) AS thumbs_down""", args)[0]
        per_day = _query(db, f"""SELECT day, kind, count(*) AS count FROM (
            SELECT substr(created, 1, 10) AS day, 'rating' AS kind FROM ratings WHERE {own}
            UNION ALL SELECT substr(created, 1, 10), 'edit' FROM edits WHERE {own}
            UNION ALL SELECT substr(created, 1, 10), 'choice' FROM choices WHERE {own})
            GROUP BY day, kind ORDER BY day, kind""", args)
        daily = _query(db, f"""SELECT day, series, count(*) AS count FROM (
            SELECT substr(m.created, 1, 10) AS day, 'answers' AS series FROM messages m
                WHERE m.role = 'assistant' AND m.conversation_id IN {mine}
            UNION ALL SELECT substr(created, 1, 10), CASE value WHEN 1 THEN 'thumbs up' WHEN -1 THEN 'thumbs down'
                ELSE 'taken back' END FROM ({latest})
            UNION ALL SELECT substr(created, 1, 10), 'edits' FROM edits WHERE {own}
            UNION ALL SELECT substr(created, 1, 10), 'picks' FROM choices WHERE {own})
            GROUP BY day, series ORDER BY day, series""", args)  # ratings: the standing one, on its day
        reasons = _query(db, f"""SELECT r.id, r.created, u.name AS user, r.message_id, m.adapter, r.value,
                r.reasons, r.comment, m.content AS answer
            FROM ({latest}) r JOIN users u ON u.id = r.user_id JOIN messages m ON m.id = r.message_id
            WHERE r.reasons != '[]' OR r.comment != '' ORDER BY r.id DESC LIMIT :reasons""", args)
        groups = {}
        for g in GROUPS:
            assert g in ("template", "model", "adapter")  # a fixed column name, never input
            none = f"'{BASE}'" if g == "adapter" else "'(none)'"
            rows = _query(db, f"""SELECT coalesce(m.{g}, {none}) AS {g}, count(*) AS answers,
                  sum(r.value = 1) AS up, sum(r.value = -1) AS down,
                  (SELECT count(*) FROM edits e JOIN messages m2 ON m2.id = e.message_id
                     WHERE coalesce(m2.{g}, {none}) = coalesce(m.{g}, {none}) AND (:user IS NULL OR e.user_id = :user)
                  ) AS edits
                FROM messages m JOIN conversations c ON c.id = m.conversation_id
                LEFT JOIN ({latest}) r ON r.message_id = m.id
                WHERE m.role = 'assistant' AND (:user IS NULL OR c.user_id = :user)
                GROUP BY coalesce(m.{g}, {none}) ORDER BY answers DESC, {g}""", args)
            for r in rows:
                r["up"], r["down"] = r["up"] or 0, r["down"] or 0
                r["ratio"] = ratio(r["up"], r["down"])
            groups[g] = rows
        edits = _query(db, """SELECT e.id, e.created, u.name AS user, e.message_id, m.adapter, e.original, e.edited
            FROM edits e JOIN users u ON u.id = e.user_id JOIN messages m ON m.id = e.message_id
            WHERE (:user IS NULL OR e.user_id = :user) ORDER BY e.id DESC LIMIT :edits""", args)
    finally:
        db.conn.execute("COMMIT")
    return {
        "totals": totals,
        "thumbs_ratio": ratio(totals["thumbs_up"], totals["thumbs_down"]),
        "per_day": per_day,
        "by_template": groups["template"],
        "by_model": groups["model"],
        "by_adapter": groups["adapter"],
        "latest_edits": edits,
        "daily": daily,
        "latest_reasons": [dict(r, reasons=json.loads(r["reasons"] or "[]"), adapter=r["adapter"] or BASE)
                           for r in reasons],
    }


def _clip(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(rows: list[dict], columns: list[str]) -> list[str]:
    cells = [[("-" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return ["  " + line.rstrip() for line in lines]


def format_table(stats: dict) -> str:
    """Readable plain-text report of `compute()`'s result."""
    t = stats["totals"]
    r = stats["thumbs_ratio"]
    out = ["Feedback", "  " + ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in t.items()),
           f"  thumbs-up ratio: {'-' if r is None else f'{r:.0%}'}"]
    if stats["per_day"]:
        days: dict[str, dict] = {}
        for row in stats["per_day"]:
            days.setdefault(row["day"], {"day": row["day"], "rating": 0, "edit": 0, "choice": 0})[row["kind"]] = \
                row["count"]
        out += ["", "Events per day"] + _table(list(days.values()), ["day", "rating", "edit", "choice"])
    for g in ("template", "model", "adapter"):
        rows = stats[f"by_{g}"]
        if rows:
            rows = [dict(row, ratio=None if row["ratio"] is None else f"{row['ratio']:.0%}") for row in rows]
            out += ["", f"By {g}"] + _table(rows, [g, "answers", "up", "down", "ratio", "edits"])
    if stats["latest_edits"]:
        rows = [dict(e, original=_clip(e["original"], 30), edited=_clip(e["edited"], 30))
                for e in stats["latest_edits"]]
        out += ["", "Latest edits"] + _table(rows, ["created", "user", "message_id", "original", "edited"])
    return "\n".join(out)
