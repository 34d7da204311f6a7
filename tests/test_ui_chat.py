"""Chat-tab logic on a real SQLite store and a tiny random Llama: server-side ids, forged indices, feedback events."""
import json
import sqlite3
import threading

import pytest

from agent.chat import Answerer
from agent.model import ChatModel
from agent.settings import Settings
from ui.chat import (ChatLogic, can_continue, chat_index_to_shown, cut_off_notice, escape_display,
                           is_sources_note, new_state, pick_texts, to_chatbot, unescape_display)
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
                    lambda: logic.pick(st, bob, "first"),
                    lambda: next(logic.continue_answer(st, bob, "plain", "off", "default", threading.Event())),
                    lambda: next(logic.reask(st, bob, 0, "mine now", "plain", "off", "default",
                                             threading.Event()))):
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
    assert "earlier" in logic.pick(st, uid, "first")
    assert st["shown"][1]["id"] == first and st["pending"] is None
    with sqlite3.connect(tmp_path / "kaizen.db") as db:
        (candidates, picked), = db.execute("select candidates, picked_id from choices").fetchall()
    assert picked == first and sorted(json.loads(candidates)) == sorted([first, second])
    with pytest.raises(ValueError):
        logic.pick(st, uid, "second")  # nothing pending any more


def test_undo_removes_the_turn_from_the_display_and_a_reload_keeps_it_removed(logic):
    uid = logic.user_id(None)
    st = ask(logic, new_state(), uid, "first question")
    st = ask(logic, st, uid, "second question")
    assert logic.undo(st, uid, 2) == "second question"
    assert len(st["shown"]) == 2
    assert len(logic.store.conversation(st["conversation"], uid)) == 4  # append-only record
    reopened = logic.open(uid, st["conversation"])  # a reload: the undone turn does not come back
    assert [m["content"] for m in reopened["shown"]] == [m["content"] for m in st["shown"]]
    st = ask(logic, reopened, uid, "a new second question")  # the chat goes on from the kept answer
    assert [m["role"] for m in logic.open(uid, st["conversation"])["shown"]] == ["user", "assistant"] * 2
    assert logic.open(uid, st["conversation"])["shown"][2]["content"] == "a new second question"
    bob = logic.user_id("bob")
    with pytest.raises(PermissionError):  # another user's session state: refused before anything is written
        logic.undo(st, bob, 2)
    from feedback.store import NotFoundError
    with pytest.raises(NotFoundError):  # another user's question id, straight at the store
        logic.store.undo(st["shown"][2]["id"], bob)


def test_sources_notes_shift_indices():
    st = {"shown": [{"role": "user", "content": "q", "id": 1},
                    {"role": "assistant", "content": "a", "id": 2,
                     "sources": [{"file": "<b>x</b>.txt", "chunk": 0, "score": 0.5}]},
                    {"role": "user", "content": "q2", "id": 3}], "conversation": 1, "pending": None}
    shown = to_chatbot(st)
    assert [m["role"] for m in shown] == ["user", "assistant", "assistant", "user"]
    note = shown[2]
    assert note["metadata"] == {"title": "Sources", "status": "done"}  # a collapsed "thought": no text area in
    # Gradio's edit mode, and an all-text bubble keeps its copy button
    assert note["content"] == "[1] &lt;b&gt;x&lt;/b&gt;.txt — chunk 0, score 0.500", note["content"]
    assert chat_index_to_shown(st, 3) == 2
    with pytest.raises(ValueError, match="sources"):
        chat_index_to_shown(st, 2)
    assert [is_sources_note(st, i) for i in range(5)] == [False, False, True, False, False]
    assert not is_sources_note(st, "2") and not is_sources_note(st, True)


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


def retry(logic, st, uid, index=0):
    for st in logic.retry(st, uid, index, "plain", "off", "default", threading.Event()):
        pass
    return st


def test_unclicking_a_thumb_is_a_retraction_not_a_second_rating(logic, tmp_path):
    uid = logic.user_id(None)
    st = ask(logic, new_state(), uid, "hello")
    assert "👎" in logic.rate(st, uid, 1, False)
    assert "taken back" in logic.rate(st, uid, 1, "")  # what Gradio's LikeData.liked is on an un-click
    assert "👍" in logic.rate(st, uid, 1, True)
    with pytest.raises(ValueError, match="unknown feedback"):
        logic.rate(st, uid, 1, "Funny")
    with sqlite3.connect(tmp_path / "kaizen.db") as db:
        assert [r[0] for r in db.execute("select value from ratings order by id")] == [-1, 0, 1]
    from feedback.datasets import build_datasets

    files, _ = build_datasets(logic.store.training_events(), eval_fraction=0.0, min_answer_chars=1)
    assert [r["label"] for r in files["kto"]] == [True]


def test_a_retry_that_repeats_the_answer_offers_no_pick(tiny_llama, tokenizer, tmp_path):
    """Sampling this cold is greedy in effect: every attempt repeats the first answer, so nothing is offered."""
    settings = Settings(data_dir=tmp_path, max_new_tokens=6, retry_temperature=1e-6, retry_attempts=3)
    logic = ChatLogic(Answerer(ChatModel(tiny_llama, tokenizer), settings), Store(settings.db_path))
    uid = logic.user_id(None)
    st = ask(logic, new_state(), uid, "hello")
    first = dict(st["shown"][1])
    st = retry(logic, st, uid)
    assert st["pending"] is None and "same answer 3 times" in st["notice"]
    assert st["shown"][1]["id"] == first["id"]  # the first answer stays on screen, feedback goes to it
    assert len(logic.store.conversation(st["conversation"], uid)) == 1 + 1 + 3  # every attempt is on record
    with pytest.raises(ValueError, match="no pair"):
        logic.pick(st, uid, "second")


def test_a_retry_samples_a_new_answer_with_a_new_seed_each_time(logic):
    uid = logic.user_id(None)
    st = ask(logic, new_state(), uid, "hello")
    st = retry(logic, st, uid)
    assert st["pending"] and st["pending"]["first"]["content"] != st["pending"]["second"]["content"]
    first, second = pick_texts(st)
    assert first and second and first != second  # both shown side by side for the pick
    logic.pick(st, uid, "second")
    st = retry(logic, st, uid)
    assert st["retries"] == 2


def test_a_pick_between_two_copies_is_refused_and_stores_nothing(logic, tmp_path):
    uid = logic.user_id(None)
    st = ask(logic, new_state(), uid, "hello")
    st = retry(logic, st, uid)
    st["pending"]["second"]["content"] = st["pending"]["first"]["content"].upper() + "  "  # forged / repeated
    with pytest.raises(ValueError, match="same text"):
        logic.pick(st, uid, "second")
    assert st["pending"] is None
    with sqlite3.connect(tmp_path / "kaizen.db") as db:
        assert db.execute("select count(*) from choices").fetchone()[0] == 0


def test_a_cut_off_answer_says_so_and_continue_extends_it(logic):
    uid = logic.user_id(None)
    st = ask(logic, new_state(), uid, "hello")  # 6 tokens of a random model: it never ends by itself
    cut = dict(st["shown"][1])
    assert cut["cut_off"] == 6 and can_continue(st) and "cut off at 6 tokens" in cut_off_notice(st)
    for st in logic.continue_answer(st, uid, "plain", "off", "default", threading.Event()):
        pass
    longer = st["shown"][1]
    assert longer["content"].startswith(cut["content"]) and len(longer["content"]) > len(cut["content"])
    assert longer["id"] != cut["id"]
    stored = logic.store.message(longer["id"], uid)
    assert stored["content"] == longer["content"] and stored["parent_id"] == st["shown"][0]["id"]
    assert len(st["shown"]) == 2


def test_a_corrected_cut_off_answer_is_not_continued(logic):
    """The user's correction is their whole answer: Continue would generate on from their text."""
    uid = logic.user_id(None)
    st = ask(logic, new_state(), uid, "hello")
    assert can_continue(st)
    logic.edit(st, uid, 1, "A complete answer.")
    assert not can_continue(st) and cut_off_notice(st) == ""
    with pytest.raises(ValueError, match="nothing to continue"):
        for _ in logic.continue_answer(st, uid, "plain", "off", "default", threading.Event()):
            pass


def test_a_stopped_answer_is_stored_as_stopped_and_its_thumbs_up_trains_nothing(logic):
    """Stop mid-answer: the fragment is stored (the user saw it) marked stopped, and a 👍 on it makes no SFT row."""
    from feedback.datasets import build_datasets

    uid = logic.user_id(None)
    stop = threading.Event()
    for st in logic.respond(new_state(), uid, "hello", "plain", "off", "default", stop):
        stop.set()  # Stop pressed at the first piece
    stopped = logic.store.message(st["shown"][1]["id"], uid)
    assert stopped["stopped"] == 1 and not st["shown"][1].get("cut_off")
    st = ask(logic, st, uid, "hello again")
    whole = logic.store.message(st["shown"][3]["id"], uid)
    assert whole["stopped"] is None
    logic.rate(st, uid, 1, True)
    logic.rate(st, uid, 3, True)
    files, manifest = build_datasets(logic.store.training_events(), eval_fraction=0.0)
    assert [r["messages"][-1]["content"] for r in files["sft"]] == [whole["content"]]
    assert manifest["stages"]["sft"]["stopped_answer"] == 1


def test_continue_refuses_a_complete_answer(logic):
    uid = logic.user_id(None)
    st = ask(logic, new_state(), uid, "hello")
    st["shown"][1].pop("cut_off")
    with pytest.raises(ValueError, match="nothing to continue"):
        for _ in logic.continue_answer(st, uid, "plain", "off", "default", threading.Event()):
            pass


def reask(logic, st, uid, index, text):
    for st in logic.reask(st, uid, index, text, "plain", "off", "default", threading.Event()):
        pass
    return st


def test_editing_a_question_asks_it_again_on_a_new_branch(logic):
    uid = logic.user_id(None)
    st = ask(logic, new_state(), uid, "first question")
    st = ask(logic, st, uid, "second question")
    old_ids = [m["id"] for m in st["shown"]]
    st = reask(logic, st, uid, 2, "second question, better")
    assert [m["content"] for m in st["shown"][:3]] == ["first question", st["shown"][1]["content"],
                                                      "second question, better"]
    assert len(st["shown"]) == 4 and st["shown"][3]["role"] == "assistant" and st["shown"][3]["content"]
    new_q, new_a = st["shown"][2]["id"], st["shown"][3]["id"]
    assert new_q not in old_ids and new_a not in old_ids
    rows = {r["id"]: r for r in logic.store.conversation(st["conversation"], uid)}
    assert len(rows) == 6  # the old branch stays on record
    assert rows[new_q]["parent_id"] == old_ids[1] == rows[old_ids[2]]["parent_id"]  # a sibling of the old question
    assert rows[new_a]["parent_id"] == new_q


def test_editing_the_first_question_starts_a_new_root(logic):
    uid = logic.user_id(None)
    st = ask(logic, new_state(), uid, "first question")
    st = ask(logic, st, uid, "second question")
    st = reask(logic, st, uid, 0, "a different start")
    assert [m["role"] for m in st["shown"]] == ["user", "assistant"]
    assert logic.store.message(st["shown"][0]["id"], uid)["parent_id"] is None
    with pytest.raises(ValueError, match="did not change"):
        reask(logic, st, uid, 0, "  A different START ")
    with pytest.raises(ValueError, match="only a question"):
        reask(logic, st, uid, 1, "not a question")


# -- per-chat settings and answer details ------------------------------------------------------------------------
def test_chat_options_are_checked_on_the_server():
    from ui.options import MAX_TEMPERATURE, chat_options, max_tokens_limit

    s = Settings(max_new_tokens=256)
    assert chat_options(s) == {} and chat_options(s, "", None) == {}
    assert chat_options(s, 0.7, 64) == {"temperature": 0.7, "max_tokens": 64}
    assert chat_options(s, 0, 64.0) == {"temperature": 0.0, "max_tokens": 64}
    assert max_tokens_limit(s) == 1024 and max_tokens_limit(Settings(max_new_tokens=2000)) == 2000
    from ui.options import temperature_limit

    hot = Settings(temperature=1.8)  # the server's own default is always allowed (the page starts there)
    assert temperature_limit(hot) == 1.8 and chat_options(hot, 1.8, None) == {"temperature": 1.8}
    assert chat_options(Settings(max_new_tokens=12), None, 12) == {"max_tokens": 12}
    for bad_t in (-0.1, MAX_TEMPERATURE + 0.01, "hot", True, float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            chat_options(s, bad_t, None)
    for bad_n in (0, 1025, 10**9, 12.5, "many", True):
        with pytest.raises(ValueError, match="max tokens"):
            chat_options(s, None, bad_n)


def test_a_chats_temperature_and_length_are_used_and_stored_with_the_answer(logic):
    uid = logic.user_id(None)
    state = new_state()
    for state in logic.respond(state, uid, "hello there", "plain", "off", "default", threading.Event(),
                               {"temperature": 0.9, "max_tokens": 3}):
        pass
    row = logic.store.message(state["shown"][-1]["id"], uid)
    assert row["decoding"] == {"temperature": 0.9, "top_p": 0.95, "seed": None, "max_new_tokens": 3}
    assert row["completion_tokens"] <= 3
    # no options: the server's settings (greedy, KAIZEN_MAX_NEW_TOKENS), recorded as such
    state = ask(logic, state, uid, "and again")
    row = logic.store.message(state["shown"][-1]["id"], uid)
    assert row["decoding"] == {"temperature": 0.0, "top_p": 0.95, "seed": None, "max_new_tokens": 6}


def test_a_retry_samples_at_least_as_hot_as_the_chat_and_records_its_seed(logic):
    uid = logic.user_id(None)
    state = ask(logic, new_state(), uid, "hello")
    hot = {"temperature": 1.4}
    for state in logic.retry(state, uid, 0, "plain", "off", "default", threading.Event(), hot):
        pass
    rows = logic.store._rows("SELECT decoding FROM messages WHERE role = 'assistant' ORDER BY id")
    retried = [json.loads(r["decoding"]) for r in rows[1:]]
    assert retried and all(d["temperature"] == 1.4 and d["seed"] is not None for d in retried)
    cool = {"temperature": 0.1}  # colder than KAIZEN_RETRY_TEMPERATURE (0.8): the retry's own temperature
    for state in logic.retry(state, uid, 0, "plain", "off", "default", threading.Event(), cool):
        pass
    last = json.loads(logic.store._rows("SELECT decoding FROM messages ORDER BY id DESC LIMIT 1")[0]["decoding"])
    assert last["temperature"] == logic.answerer.settings.retry_temperature


def test_answer_details_come_from_the_stored_answer_and_name_no_server_path(logic, tmp_path):
    from ui.options import details_text

    uid = logic.user_id(None)
    assert logic.details(new_state(), uid) == "No answer yet."
    state = new_state()
    for state in logic.respond(state, uid, "hello", "plain", "off", "default", threading.Event(),
                               {"temperature": 0.5, "max_tokens": 4}):
        pass
    text = logic.details(state, uid)
    assert "**Answer 1**" in text and "template: plain" in text and "temperature 0.5" in text and "cap 4" in text
    assert "adapter: base" in text
    row = logic.store.message(state["shown"][-1]["id"], uid)
    assert f"{row['completion_tokens']:,} out" in text
    assert "/" not in details_text({**row, "model": str(tmp_path / "models" / "smol")}).split("model: ")[1]
    # another user's session state pointing at this answer reads nothing of it
    bob = logic.user_id("bob")
    with pytest.raises(LookupError):
        logic.details(state, bob)


def test_a_restored_cut_off_answer_offers_continue_again(logic):
    uid = logic.user_id(None)
    st = ask(logic, new_state(), uid, "tell me a long story")  # the fixture caps answers at 6 tokens
    assert can_continue(st)
    reopened = logic.open(uid, st["conversation"])
    assert can_continue(reopened) and cut_off_notice(reopened).startswith("… cut off at 6 tokens")
    for reopened in logic.continue_answer(reopened, uid, "plain", "off", "default", threading.Event()):
        pass
    rows = logic.store.conversation(st["conversation"], uid)
    assert rows[-1]["content"].startswith(rows[1]["content"]) and rows[-1]["parent_id"] == rows[0]["id"]


def test_a_reopened_conversation_brings_back_its_own_temperature_and_length_not_a_retrys(logic):
    from ui.options import conversation_options

    settings = logic.answerer.settings
    uid = logic.user_id(None)
    state = new_state()
    for text in ("hello there", "and again"):
        for state in logic.respond(state, uid, text, "plain", "off", "default", threading.Event(),
                                   {"temperature": 0.7, "max_tokens": 4}):
            pass
    for state in logic.retry(state, uid, 2, "plain", "off", "default", threading.Event(), {"temperature": 1.4}):
        pass  # the last answer is now a retry, sampled with its own seed: not the chat's setting
    reopened = logic.open(uid, state["conversation"])
    assert conversation_options(reopened["shown"], settings) == (0.7, 4)
    # no answer recorded its decoding (a conversation from before m005): the server's defaults
    assert conversation_options([{"role": "assistant", "decoding": {}}], settings) == (0.0, 6)
    # a stored value past today's bounds is held within the sliders' range (Gradio refuses it otherwise)
    past = [{"role": "assistant", "decoding": {"temperature": 9.0, "max_new_tokens": 10**6, "seed": None}}]
    assert conversation_options(past, settings) == (1.5, 1024)


def test_a_change_of_subject_is_answered_without_the_conversation_and_its_row_says_so(logic):
    """agent/routing.py keeps_history with the real MiniLM similarities: the answer's stored row counts the earlier
    messages the model was given, and the details say when it was none."""
    uid = logic.user_id(None)
    st = ask(logic, new_state(), uid, "When does the night train from Vienna to Rome leave?")
    assert "conversation" not in logic.details(st, uid)  # a first question: nothing to give
    st = ask(logic, st, uid, "Is there a dining car on the night train?")  # the same subject
    assert "the 2 earlier messages" in logic.details(st, uid)
    st = ask(logic, st, uid, "Who wrote Romeo and Juliet?")  # another subject
    assert "conversation: not given (a new subject" in logic.details(st, uid)
    st = ask(logic, st, uid, "And how long does it take?")  # a follow-up, whatever its words
    rows = [r for r in logic.store.conversation(st["conversation"], uid) if r["role"] == "assistant"]
    assert [r["context_messages"] for r in rows] == [0, 2, 0, 6]
