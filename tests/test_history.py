"""The history sidebar's data: the branch a user last saw, rebuilt from a real SQLite store; rename and delete are
append-only and per user; another user's or a forged conversation id reads nothing."""
from __future__ import annotations

import json
import sqlite3

import pytest

from ui.chat import ChatLogic, feedback_values, restored_state
from feedback.history import current_branch, list_label, list_labels, unpicked_retry
from feedback.store import FeedbackError, NotFoundError, Store


def rows(*spec):
    """(id, parent_id, role) triples -> message rows."""
    return [{"id": i, "parent_id": p, "role": r} for i, p, r in spec]


def test_branch_follows_the_newest_message_back_to_the_root():
    # q1 -> a2 (a retry of a1) ; q3 follows a2 ; a4 answers q3
    msgs = rows((1, None, "user"), (2, 1, "assistant"), (3, 1, "assistant"), (4, 3, "user"), (5, 4, "assistant"))
    assert [m["id"] for m in current_branch(msgs)] == [1, 3, 4, 5]
    # an edited question is a sibling of the old one: the newest branch is shown, the old one is not
    msgs += rows((6, 3, "user"), (7, 6, "assistant"))
    assert [m["id"] for m in current_branch(msgs)] == [1, 3, 6, 7]


def test_branch_shows_the_picked_answer_of_the_last_turn():
    msgs = rows((1, None, "user"), (2, 1, "assistant"), (3, 1, "assistant"))
    assert [m["id"] for m in current_branch(msgs)] == [1, 3]  # no pick yet: the newest answer, as on screen
    assert [m["id"] for m in current_branch(msgs, {1: 2})] == [1, 2]
    assert [m["id"] for m in current_branch(msgs, {1: 99})] == [1, 3]  # a pick of something else is ignored


def test_branch_survives_a_parent_cycle_and_skips_system_rows():
    msgs = rows((1, 2, "user"), (2, 1, "assistant"), (3, None, "system"))
    assert [m["id"] for m in current_branch(msgs)] == [1, 2]
    assert current_branch([]) == [] and current_branch(rows((1, None, "system"))) == []


def test_list_label_names_title_day_and_adapter():
    assert list_label({"title": "Trip to Kyoto", "last_message": "2026-12-01T10:00:00", "adapter": "v3"}) == \
        "Trip to Kyoto · 2026-12-01 · v3"
    assert list_label({"title": "", "created": "2026-11-30T09:00", "adapter": None}) == "Untitled · 2026-11-30 · base"
    assert len(list_label({"title": "x" * 200})) < 70


def test_list_labels_tell_apart_conversations_with_the_same_title():
    """Two "Name a colour." chats on one day show their times; two at the same minute are numbered, oldest #1;
    a title seen once keeps its short line."""
    convs = [{"title": "Name a colour.", "last_message": "2026-12-01T15:02:09", "adapter": None},
             {"title": "Trip to Kyoto", "last_message": "2026-12-01T12:00:00", "adapter": "v3"},
             {"title": "Name a colour.", "last_message": "2026-12-01T10:00:30", "adapter": None},
             {"title": "Name a colour.", "last_message": "2026-12-01T10:00:01", "adapter": None},
             {"title": "Name a colour.", "last_message": "2026-11-30T10:00:01", "adapter": None}]
    assert list_labels(convs) == ["Name a colour. · 2026-12-01 15:02 · base", "Trip to Kyoto · 2026-12-01 · v3",
                                  "Name a colour. · 2026-12-01 10:00 · base #2",
                                  "Name a colour. · 2026-12-01 10:00 · base #1",
                                  "Name a colour. · 2026-11-30 · base"]
    assert list_labels([]) == []


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "kaizen.db")
    yield s
    s.close()


def chat(store, user, title, turns):
    """A stored conversation: [(question, answer), ...]; returns (conversation id, [answer ids])."""
    cid = store.new_conversation(user, title)
    answers = []
    for q, a in turns:
        store.add_message(cid, "user", q, user_id=user)
        answers.append(store.add_message(cid, "assistant", a, user_id=user, adapter="v2"))
    return cid, answers


def test_a_restored_conversation_carries_ids_edits_and_ratings(store):
    alice = store.ensure_user("alice")
    cid, (a1, a2) = chat(store, alice, "WAL", [("What is WAL?", "A log."), ("And fsync?", "A flush.")])
    store.rate(a1, alice, -1, ["wrong"])
    store.rate(a1, alice, 1)  # changed to a thumbs-up: the latest rating is what shows
    store.edit(a2, alice, "It forces data to disk.")
    st = ChatLogic(answerer=None, store=store).open(alice, str(cid))  # the browser sends the id as it stored it
    assert [(m["role"], m["content"], m["id"]) for m in st["shown"]] == [
        ("user", "What is WAL?", a1 - 1), ("assistant", "A log.", a1),
        ("user", "And fsync?", a2 - 1), ("assistant", "It forces data to disk.", a2)]
    assert feedback_values(st) == ["Like", None]
    assert (st["conversation"], st["owner"]) == (cid, alice)
    store.retract(a1, alice)
    assert feedback_values(ChatLogic(None, store).open(alice, cid)) == [None, None]


def test_a_rating_on_a_restored_answer_is_stored_against_that_answer(store):
    alice = store.ensure_user("alice")
    cid, (a1, a2) = chat(store, alice, "t", [("q1", "one"), ("q2", "two")])
    logic = ChatLogic(None, store)
    st = logic.open(alice, cid)
    said = logic.rate(st, alice, 3, False)  # Chatbot index 3: the second answer
    assert said == "Saved: 👎 on answer 2." and str(a2) not in said  # by position, never a database id
    logic.rate(st, alice, 3, "")
    logic.rate(st, alice, 1, False)  # Chatbot index 1: the first answer
    assert store.message(a1, alice)["rating"] == -1 and store.message(a2, alice)["rating"] is None
    assert feedback_values(st) == ["Dislike", None]


def test_another_users_or_a_forged_conversation_reads_nothing(store):
    alice, bob = store.ensure_user("alice"), store.ensure_user("bob")
    cid, _ = chat(store, alice, "secret plans", [("the vault code?", "1234")])
    logic = ChatLogic(None, store)
    for forged in (cid, str(cid), 10_000, -1, "1; drop table messages", None, True):
        with pytest.raises((LookupError, FeedbackError)):
            logic.open(bob, forged)
    assert logic.conversations(bob) == []
    with pytest.raises(NotFoundError):
        store.rename_conversation(cid, bob, "mine now")
    with pytest.raises(NotFoundError):
        store.hide_conversation(cid, bob)
    assert [c["title"] for c in store.conversations(alice)] == ["secret plans"]


def test_rename_and_delete_are_append_only_and_keep_the_record(store):
    alice = store.ensure_user("alice")
    c1, _ = chat(store, alice, "first", [("q", "a")])
    c2, (a2,) = chat(store, alice, "second", [("q2", "a2")])
    assert [c["id"] for c in store.conversations(alice)] == [c2, c1]  # newest activity first
    store.add_message(c1, "user", "back to the first", user_id=alice)
    assert [c["id"] for c in store.conversations(alice)] == [c1, c2]
    store.rename_conversation(c2, alice, "Renamed")
    store.rename_conversation(c2, alice, "Renamed again")
    store.rate(a2, alice, 1)
    store.hide_conversation(c2, alice)
    listed = store.conversations(alice)
    assert [c["id"] for c in listed] == [c1]
    with pytest.raises(NotFoundError, match="deleted"):  # a reload does not reopen a deleted conversation
        ChatLogic(None, store).open(alice, c2)
    hidden = [c for c in store.conversations(alice, include_hidden=True) if c["id"] == c2][0]
    assert (hidden["title"], hidden["hidden"], hidden["adapter"]) == ("Renamed again", True, "v2")
    assert any(e["kind"] == "rating" for e in store.training_events())  # the feedback stays training data
    with sqlite3.connect(store.path) as db:
        assert db.execute("select count(*) from conversation_changes").fetchone()[0] == 3
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("update conversation_changes set title = 'x'")
    with pytest.raises(FeedbackError):
        store.rename_conversation(c1, alice, "")


def test_restored_state_of_nothing_is_a_new_chat():
    st = restored_state([], 7, 1)
    assert st["shown"] == [] and st["conversation"] == 7


def test_an_undone_question_and_what_followed_it_leave_the_branch():
    from feedback.history import current_branch

    msgs = [{"id": 1, "parent_id": None, "role": "user"}, {"id": 2, "parent_id": 1, "role": "assistant"},
            {"id": 3, "parent_id": 2, "role": "user"}, {"id": 4, "parent_id": 3, "role": "assistant"},
            {"id": 5, "parent_id": 3, "role": "assistant"}]  # a retry of the undone question
    assert [m["id"] for m in current_branch(msgs, undone=[3])] == [1, 2]
    assert [m["id"] for m in current_branch(msgs + [{"id": 6, "parent_id": 2, "role": "user"}], undone=[3])] == [1, 2, 6]
    assert current_branch(msgs, undone=[1]) == []
    assert [m["id"] for m in current_branch(msgs)] == [1, 2, 3, 5]


def test_an_unpicked_retry_is_the_newest_seeded_answer_and_the_latest_different_one_before_it():
    def msg(i, parent, role, content="", seed=None, **kw):
        return {"id": i, "parent_id": parent, "role": role, "content": content,
                "decoding": {"seed": seed} if role == "assistant" else None, **kw}

    q, a = msg(1, None, "user", "q"), msg(2, 1, "assistant", "Paris.")
    retry = msg(3, 1, "assistant", "It is Paris, on the Seine.", seed=11)
    pair = unpicked_retry([q, a, retry], [q, retry])
    assert pair is not None and [m["id"] for m in pair] == [2, 3]
    assert unpicked_retry([q, a, retry], [q, retry], picks={1: 3}) is None  # picked already
    assert unpicked_retry([q, a], [q, a]) is None  # one answer
    cont = msg(4, 1, "assistant", "Paris. It is the capital.")  # a Continue is a sibling, but not sampled
    assert unpicked_retry([q, a, cont], [q, cont]) is None
    # a retry that only repeated the first answer (stored, never offered) is skipped over
    again = msg(3, 1, "assistant", " paris. ", seed=11)
    other = msg(4, 1, "assistant", "The capital is Paris.", seed=12)
    assert [m["id"] for m in unpicked_retry([q, a, again, other], [q, other])] == [3, 4]
    assert unpicked_retry([q, a, again], [q, again]) is None  # every retry the same: nothing to choose from
    for spoilt in ({"stopped": 1}, {"edited": "Paris!"}, {"content": "  "}):
        assert unpicked_retry([q, a, {**retry, **spoilt}], [q, {**retry, **spoilt}]) is None
    assert unpicked_retry([q, {**a, "stopped": 1}, retry], [q, retry]) is None  # the first one was stopped


def test_a_reopened_chat_offers_its_unpicked_retry_and_the_pick_is_stored_once(store):
    """A retry is answered, the page reloads before the pick: the reopened chat offers the same two answers, the
    pick stores one choice with both ids, and after it nothing is offered again."""
    alice, bob = store.ensure_user("alice"), store.ensure_user("bob")
    cid, (first,) = chat(store, alice, "t", [("Capital of France?", "Paris.")])
    question = first - 1
    second = store.add_message(cid, "assistant", "It is Paris, on the Seine.", user_id=alice, parent_id=question,
                               decoding={"temperature": 0.8, "top_p": 0.9, "seed": 5, "max_new_tokens": 64})
    logic = ChatLogic(None, store)
    st = logic.open(alice, cid)
    assert st["shown"][-1]["id"] == second
    p = st["pending"]
    assert (p["prompt_id"], p["first"]["id"], p["second"]["id"]) == (question, first, second)
    assert st["retries"] == 1  # the next retry samples with a new seed
    assert logic.pick(st, alice, "first") == "Saved: you preferred the earlier answer."
    assert st["shown"][-1]["id"] == first and st["pending"] is None
    choices = store.db.execute("SELECT prompt_message_id, candidates, picked_id FROM choices").fetchall()
    assert len(choices) == 1 and choices[0][0] == question and choices[0][2] == first
    assert sorted(json.loads(choices[0][1])) == [first, second]
    again = logic.open(alice, cid)
    assert again["pending"] is None and again["shown"][-1]["id"] == first  # the pick is what shows
    with pytest.raises(NotFoundError):  # never another user's
        logic.open(bob, cid)
