"""Chat-tab logic on a real SQLite store and a tiny random Llama: server-side ids, forged indices, feedback events."""
import json
import sqlite3
import threading

import pytest

from agent.chat import Answerer
from agent.model import ChatModel
from agent.settings import Settings
from agent.ui_chat import ChatLogic, chat_index_to_shown, escape_display, new_state, to_chatbot, unescape_display
from feedback.store import Store


@pytest.fixture
def logic(tiny_llama, tokenizer, tmp_path):
    settings = Settings(data_dir=tmp_path, max_new_tokens=6, max_edit_chars=200)
    store = Store(settings.db_path)
    return ChatLogic(Answerer(ChatModel(tiny_llama, tokenizer), settings), store)


def ask(logic, state, uid, text):
    for state in logic.respond(state, uid, text, "plain", "off", "default", threading.Event()):
        pass
    return state


def test_respond_stores_both_messages_with_provenance(logic):
    uid = logic.user_id(None)
    st = ask(logic, new_state(), uid, "hello")
    assert [m["role"] for m in st["shown"]] == ["user", "assistant"]
    rows = logic.store.conversation(st["conversation"], uid)
    assert [r["role"] for r in rows] == ["user", "assistant"]
    answer = rows[1]
    assert answer["parent_id"] == rows[0]["id"] and answer["template"] == "plain"
    assert answer["model"] == "model" and answer["completion_tokens"] >= 1 and answer["latency_ms"] > 0


def test_feedback_goes_to_the_stored_ids(logic, tmp_path):
    uid = logic.user_id(None)
    st = ask(logic, new_state(), uid, "hello")
    assert "Saved" in logic.rate(st, uid, 1, False, ["wrong"], "bad")
    assert "Saved" in logic.edit(st, uid, 1, "A better answer")
    with sqlite3.connect(tmp_path / "kaizen.db") as db:
        (value, reasons, comment), = db.execute("select value, reasons, comment from ratings").fetchall()
        (original, edited), = db.execute("select original, edited from edits").fetchall()
    assert (value, comment) == (-1, "bad") and "wrong" in reasons
    assert edited == "A better answer" and original == logic.store.message(st["shown"][1]["id"], uid)["content"]
    assert st["shown"][1]["content"] == "A better answer"


@pytest.mark.parametrize("index", [-1, 2, 99, "1", None, True, [5, 0]])
def test_forged_indices_are_refused_and_change_nothing(logic, index, tmp_path):
    uid = logic.user_id(None)
    st = ask(logic, new_state(), uid, "hello")
    with pytest.raises(ValueError):
        logic.rate(st, uid, index, True)
    with pytest.raises(ValueError):
        logic.edit(st, uid, index, "x")
    with sqlite3.connect(tmp_path / "kaizen.db") as db:
        assert db.execute("select count(*) from ratings").fetchone()[0] == 0
        assert db.execute("select count(*) from edits").fetchone()[0] == 0


def test_questions_cannot_be_rated_or_corrected(logic):
    uid = logic.user_id(None)
    st = ask(logic, new_state(), uid, "hello")
    with pytest.raises(ValueError):
        logic.rate(st, uid, 0, True)
    with pytest.raises(ValueError, match="only answers"):
        logic.edit(st, uid, 0, "new question")


def test_another_users_state_cannot_write_feedback(logic):
    alice, bob = logic.user_id("alice"), logic.user_id("bob")
    st = ask(logic, new_state(), alice, "hello")
    with pytest.raises((PermissionError, LookupError, ValueError)):
        logic.rate(st, bob, 1, True)
    with pytest.raises((PermissionError, LookupError, ValueError)):
        logic.edit(st, bob, 1, "hijacked")
    assert logic.store.message(st["shown"][1]["id"], alice)["content"] != "hijacked"


def test_the_session_state_belongs_to_its_first_user(logic):
    alice, bob = logic.user_id("alice"), logic.user_id("bob")
    st = ask(logic, new_state(), alice, "hello")
    assert st["owner"] == alice
    shown = [dict(m) for m in st["shown"]]
    for attempt in (lambda: next(logic.respond(st, bob, "mine now", "plain", "off", "default", threading.Event())),
                    lambda: next(logic.retry(st, bob, 0, "plain", "off", "default", threading.Event())),
                    lambda: logic.rate(st, bob, 1, True), lambda: logic.edit(st, bob, 1, "hijacked"),
                    lambda: logic.pick(st, bob, "first")):
        with pytest.raises(PermissionError, match="another user"):
            attempt()
    assert st["shown"] == shown and st["owner"] == alice  # nothing changed


def test_oversized_edit_refused(logic):
    uid = logic.user_id(None)
    st = ask(logic, new_state(), uid, "hello")
    with pytest.raises(ValueError, match="too long"):
        logic.edit(st, uid, 1, "z" * 201)


def test_retry_then_pick_records_a_choice(logic, tmp_path):
    uid = logic.user_id(None)
    st = ask(logic, new_state(), uid, "hello")
    first = st["shown"][1]["id"]
    for st in logic.retry(st, uid, 0, "plain", "off", "default", threading.Event()):
        pass
    second = st["shown"][1]["id"]
    assert second != first and st["pending"]["prompt_id"] == st["shown"][0]["id"]
    assert "first" in logic.pick(st, uid, "first")
    assert st["shown"][1]["id"] == first and st["pending"] is None
    with sqlite3.connect(tmp_path / "kaizen.db") as db:
        (candidates, picked), = db.execute("select candidates, picked_id from choices").fetchall()
    assert picked == first and sorted(json.loads(candidates)) == sorted([first, second])
    with pytest.raises(ValueError):
        logic.pick(st, uid, "second")  # nothing pending any more


def test_undo_removes_the_turn_from_the_display_only(logic):
    uid = logic.user_id(None)
    st = ask(logic, new_state(), uid, "first question")
    st = ask(logic, st, uid, "second question")
    assert logic.undo(st, 2) == "second question"
    assert len(st["shown"]) == 2
    assert len(logic.store.conversation(st["conversation"], uid)) == 4  # append-only record


def test_sources_notes_shift_indices():
    st = {"shown": [{"role": "user", "content": "q", "id": 1},
                    {"role": "assistant", "content": "a", "id": 2,
                     "sources": [{"file": "<b>x</b>.txt", "chunk": 0, "score": 0.5}]},
                    {"role": "user", "content": "q2", "id": 3}], "conversation": 1, "pending": None}
    shown = to_chatbot(st)
    assert [m["role"] for m in shown] == ["user", "assistant", "assistant", "user"]
    assert shown[2]["metadata"]["title"] == "Sources" and "&lt;b&gt;" in shown[2]["content"]
    assert chat_index_to_shown(st, 3) == 2
    with pytest.raises(ValueError, match="sources"):
        chat_index_to_shown(st, 2)


def test_html_is_displayed_as_text_but_code_is_left_alone():
    raw = 'hi <img src=x onerror=alert(1)> & `<b>`\n```\n<i>x</i>\n```'
    shown = escape_display(raw)
    assert "<img" not in shown and "&lt;img src=x onerror=alert(1)&gt;" in shown
    assert "`<b>`" in shown and "<i>x</i>" in shown
    assert unescape_display(shown) == raw
    # a ``` run in the middle of a line spanning lines is not certain to be code: escaped (see agent/escape.py)
    odd = 'a ```\n<i>x</i>\n```'
    assert "<i>" not in escape_display(odd) and unescape_display(escape_display(odd)) == odd
    assert escape_display("\\`<img src=http://evil.test/x.png>`") == "\\`&lt;img src=http&#58;//evil.test/x.png&gt;`"
