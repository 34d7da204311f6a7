"""The Feedback tab builder: components, refresh, per-user scope."""
from __future__ import annotations

import gradio as gr

from feedback.store import Store
from feedback.ui import build_feedback_tab, frames


def _store(tmp_path):
    store = Store(tmp_path / "kaizen.db")
    alice, boss = store.ensure_user("alice"), store.ensure_user("boss", "admin")
    for uid, adapter, text in ((alice, "v1", "alice's fix"), (boss, None, "boss's fix")):
        conv = store.new_conversation(uid)
        store.add_message(conv, "user", "q", user_id=uid, template="plain")
        a = store.add_message(conv, "assistant", "a", user_id=uid, adapter=adapter, model="smollm2")
        store.rate(a, uid, 1 if uid == boss else -1, ["unhelpful"] if uid == alice else [])
        store.edit(a, uid, text)
    return store, alice, boss


def test_tab_builds_and_refresh_fills_every_output(tmp_path):
    store, alice, boss = _store(tmp_path)
    viewer = {"id": boss}
    with gr.Blocks() as demo:
        with gr.Tab("Feedback"):
            tab = build_feedback_tab(store, lambda request: viewer["id"])
        demo.load(tab.refresh, None, tab.outputs)
    selects = [d for d in demo.config["dependencies"] if any(t[1] == "select" for t in d["targets"])]
    assert len(selects) == 1  # the tab refreshes itself when selected
    values = tab.refresh(None)
    assert len(values) == len(tab.outputs) == 7
    for component, value in zip(tab.outputs, values):
        component.postprocess(value)  # gradio accepts every value
    summary, per_day, ratio, by_adapter, by_template, by_model, edits = values
    assert summary.startswith("**All users**") and "2 ratings" in summary
    assert per_day["count"].sum() == 4
    assert set(ratio["adapter"]) == {"(all)", "v1", "(none)"}
    assert ratio.set_index("adapter").loc["(all)", "thumbs_up_ratio"] == 0.5
    assert set(edits["edited"]) == {"alice's fix", "boss's fix"}
    # a plain user sees only their own feedback
    viewer["id"] = alice
    summary, *_, edits = tab.refresh(None)
    assert summary.startswith("**Your feedback**") and list(edits["edited"]) == ["alice's fix"]
    store.close()


def test_frames_of_an_empty_store(tmp_path):
    store = Store(tmp_path / "kaizen.db")
    f = frames(store.stats())
    assert all(df.empty for df in f.values())
    assert list(f["by_adapter"].columns) == ["adapter", "kind", "count"]
    store.close()
