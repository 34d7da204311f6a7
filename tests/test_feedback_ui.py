"""The Feedback tab builder: components, refresh, per-user scope."""
from __future__ import annotations

import gradio as gr

from feedback.store import Store
from ui.feedback import build_feedback_tab, frames


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
    assert len(values) == len(tab.outputs) == 8
    for component, value in zip(tab.outputs, values):
        component.postprocess(value)  # gradio accepts every value
    summary, per_day, ratio, by_adapter, by_template, by_model, edits, reasons = values
    assert summary.startswith("**All users**") and "2 ratings" in summary
    assert per_day["count"].sum() == 6  # 2 answers, 1 👍, 1 👎, 2 edits
    assert set(ratio["adapter"]) == {"(all)", "v1", "base"}  # the base model is named, not "(none)"
    assert list(reasons["reasons"]) == ["unhelpful"] and list(reasons["rating"]) == ["👎 down"]
    assert ratio.set_index("adapter").loc["(all)", "thumbs_up_ratio"] == 0.5
    assert set(edits["edited"]) == {"alice's fix", "boss's fix"}
    # a plain user sees only their own feedback
    viewer["id"] = alice
    summary, *_, edits, reasons = tab.refresh(None)
    assert summary.startswith("**Your feedback**") and list(edits["edited"]) == ["alice's fix"]
    store.close()


def test_frames_of_an_empty_store(tmp_path):
    store = Store(tmp_path / "kaizen.db")
    f = frames(store.stats())
    assert all(df.empty for df in f.values())
    assert list(f["by_adapter"].columns) == ["kind", "adapter", "count"]
    store.close()


def test_one_day_of_data_still_draws_and_each_series_is_its_own_line():
    from ui.feedback import SERIES, daily_frame

    f = daily_frame([{"day": "2026-12-01", "series": "answers", "count": 3},
                     {"day": "2026-12-01", "series": "thumbs down", "count": 1}])
    assert sorted(set(f["day"])) == ["2026-11-30", "2026-12-01"]  # two points a line, dates as text (no hour ticks)
    assert set(f["series"]) == set(SERIES) and len(f) == 2 * len(SERIES)
    last = f[f["day"] == "2026-12-01"].set_index("series")["count"]
    assert (last["answers"], last["thumbs down"], last["thumbs up"]) == (3, 1, 0)
    assert f[f["day"] == "2026-11-30"]["count"].sum() == 0
    gap = daily_frame([{"day": "2026-11-01", "series": "edits", "count": 1},
                       {"day": "2026-11-04", "series": "edits", "count": 2}])
    assert len(set(gap["day"])) == 5  # the days between are there, at 0


def test_a_retracted_thumb_leaves_its_reason_out(tmp_path):
    store = Store(tmp_path / "kaizen.db")
    uid = store.ensure_user("alice")
    conv = store.new_conversation(uid)
    store.add_message(conv, "user", "q", user_id=uid)
    a = store.add_message(conv, "assistant", "a", user_id=uid)
    store.rate(a, uid, -1, ["wrong"], "nope")
    assert [r["comment"] for r in store.stats()["latest_reasons"]] == ["nope"]
    store.retract(a, uid)
    st = store.stats()
    assert st["latest_reasons"] == []
    assert {r["series"]: r["count"] for r in st["daily"]} == {"answers": 1, "taken back": 1}  # the standing one
    store.rate(a, uid, 1)
    assert {r["series"]: r["count"] for r in store.stats()["daily"]} == {"answers": 1, "thumbs up": 1}
    store.close()


def test_the_tab_names_a_model_without_the_servers_folders():
    from ui.feedback import frames, shown_name

    assert shown_name("/srv/data/models/smollm2-135m-instruct/") == "smollm2-135m-instruct"
    assert shown_name("serve.q8_0.gguf") == "serve.q8_0.gguf" and shown_name(None) is None
    stats = {"daily": [], "by_template": [], "by_adapter": [], "thumbs_ratio": None, "latest_edits": [],
             "latest_reasons": [],
             "by_model": [{"model": "/tmp/secret/dir/smollm2", "answers": 1, "up": 0, "down": 0, "edits": 0}]}
    f = frames(stats)
    assert set(f["by_model"]["model"]) == {"smollm2"}
