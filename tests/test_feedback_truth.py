"""A dataset built from a real SQLite store holds only what the person meant: a pick between two copies of one
answer (rows written before the store refused them) gives no DPO pair, and a thumb taken back gives no KTO row."""
from __future__ import annotations

import json
import sqlite3

from feedback.datasets import build_datasets
from feedback.store import Store, now_iso


def test_identical_retry_candidates_and_a_retracted_thumb_give_no_rows(tmp_path):
    store = Store(tmp_path / "kaizen.db")
    uid = store.ensure_user("alice")
    conv = store.new_conversation(uid)
    q = store.add_message(conv, "user", "What is the capital of France?", user_id=uid)
    a1 = store.add_message(conv, "assistant", "The capital of France is Paris.", user_id=uid, parent_id=q)
    a2 = store.add_message(conv, "assistant", "The capital of France is  paris.", user_id=uid, parent_id=q)
    with sqlite3.connect(store.path) as db:  # a pick stored by the old app, before `choose` refused it
        db.execute("INSERT INTO choices (prompt_message_id, user_id, candidates, picked_id, created) "
                   "VALUES (?, ?, ?, ?, ?)", (q, uid, json.dumps([a1, a2]), a2, now_iso()))
    q2 = store.add_message(conv, "user", "And of Italy?", user_id=uid, parent_id=a2)
    b = store.add_message(conv, "assistant", "The capital of Italy is Rome.", user_id=uid, parent_id=q2)
    store.rate(b, uid, -1, ["wrong"], "no")
    store.retract(b, uid)
    q3 = store.add_message(conv, "user", "And of Spain?", user_id=uid, parent_id=b)
    c = store.add_message(conv, "assistant", "The capital of Spain is Madrid.", user_id=uid, parent_id=q3)
    store.rate(c, uid, -1)
    store.rate(c, uid, 1)  # 👎 switched to 👍: one +1

    files, manifest = build_datasets(store.training_events(), eval_fraction=0.0)
    store.close()
    assert files["dpo"] == []
    assert manifest["stages"]["dpo"]["identical"] == 1
    kto = [(r["completion"][0]["content"], r["label"]) for r in files["kto"]]
    assert kto == [("The capital of Spain is Madrid.", True)]
    assert [r["messages"][-1]["content"] for r in files["sft"]] == ["The capital of Spain is Madrid."]
    assert manifest["events"]["retracted_ratings"] == 1
