"""A user's own feedback as JSONL (the Feedback tab's export): their conversations, messages, ratings (reasons,
comments, a thumb taken back), edits and picks, and never another user's row."""
from __future__ import annotations

import json

import gradio as gr

from feedback.export import user_export_rows, write_user_export
from feedback.store import Store
from ui.feedback import build_feedback_tab


def _two_users(tmp_path):
    store = Store(tmp_path / "kaizen.db")
    alice, bob = store.ensure_user("alice"), store.ensure_user("bob", "admin")
    for uid, word in ((alice, "apple"), (bob, "bobsecret")):
        conv = store.new_conversation(uid, title=f"{word} chat")
        q = store.add_message(conv, "user", f"tell me about {word}", user_id=uid)
        a1 = store.add_message(conv, "assistant", f"{word} is a fruit", user_id=uid, adapter="v0001-sft")
        a2 = store.add_message(conv, "assistant", f"{word} grows on trees", user_id=uid, parent_id=q)
        store.rate(a1, uid, -1, ["wrong"], f"{word} comment")
        store.retract(a1, uid)
        store.rate(a2, uid, 1)
        store.edit(a1, uid, f"{word}: a pome")
        store.choose(q, uid, [a1, a2], a2)
    return store, alice, bob


def test_the_export_holds_the_users_own_rows_only(tmp_path):
    store, alice, bob = _two_users(tmp_path)
    rows = user_export_rows(store, alice)
    text = json.dumps(rows)
    assert "bobsecret" not in text and "apple" in text
    head, body = rows[0], rows[1:]
    assert head["type"] == "export" and head["user"] == "alice"
    assert head["counts"] == {"conversation": 1, "message": 3, "rating": 3, "edit": 1, "pick": 1}
    kinds = [r["type"] for r in body]
    assert kinds == ["conversation", "message", "message", "message", "rating", "rating", "rating", "edit", "pick"]
    ratings = [(r["value"], r["reasons"], r["comment"], r["superseded"]) for r in body if r["type"] == "rating"]
    assert ratings == [(-1, ["wrong"], "apple comment", True), (0, [], "", False), (1, [], "", False)]
    edit, = (r for r in body if r["type"] == "edit")
    assert (edit["original"], edit["edited"]) == ("apple is a fruit", "apple: a pome")
    pick, = (r for r in body if r["type"] == "pick")
    messages = {r["id"]: r for r in body if r["type"] == "message"}
    assert messages[pick["picked_id"]]["content"] == "apple grows on trees"
    assert messages[edit["message_id"]]["edited"] == "apple: a pome"
    assert all(messages[i]["conversation_id"] == body[0]["id"] for i in pick["candidate_ids"])
    # an admin's export is theirs too: the admin sees everyone's statistics, but exports only their own record
    assert "apple" not in json.dumps(user_export_rows(store, bob))
    store.close()


def test_the_feedback_tab_export_button_writes_the_callers_file(tmp_path, monkeypatch):
    store, alice, bob = _two_users(tmp_path)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    viewer = {"id": alice}
    with gr.Blocks() as demo:
        with gr.Tab("Feedback"):
            tab = build_feedback_tab(store, lambda request: viewer["id"])
    export, = [f.fn for f in demo.fns.values() if (tab.export_button._id, "click") in f.targets]
    update = export(None)
    path = update["value"]
    assert update["visible"] is True and path.endswith(".jsonl") and "kaizen-feedback-alice-" in path
    assert update["label"].startswith("Download kaizen-feedback-alice-") and update["label"].endswith("(9 records)")
    lines = [json.loads(line) for line in open(path, encoding="utf-8")]
    assert lines[0]["user"] == "alice" and "bobsecret" not in open(path, encoding="utf-8").read()
    tab.download.postprocess(path)  # gradio accepts it
    viewer["id"] = bob
    other = export(None)["value"]
    assert other != path and "apple" not in open(other, encoding="utf-8").read()
    viewer["id"] = None  # nobody logged in: refused, no file
    try:
        export(None)
        raise AssertionError("an export without a user must be refused")
    except gr.Error as e:
        assert "Log in first" in str(e)
    store.close()


def test_old_exports_are_removed(tmp_path):
    import os

    store, alice, _ = _two_users(tmp_path)
    first, n = write_user_export(store, alice, tmp_path / "exports")
    assert n == 9 and first.exists()
    os.utime(first.parent, (0, 0))  # an hour and more ago
    second, _ = write_user_export(store, alice, tmp_path / "exports")
    assert second.exists() and not first.exists()
    store.close()
