"""Feedback store on a real SQLite file: ownership, forged events, limits, verbatim text, training events, backup."""
from __future__ import annotations

import sqlite3

import pytest

from feedback.store import REASONS, FeedbackError, NotFoundError, Store


def snapshot(path) -> dict:
    """Every row of every table, plus the schema."""
    with sqlite3.connect(path) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        rows = {t: conn.execute(f'SELECT * FROM "{t}" ORDER BY rowid').fetchall() for t in tables}
        rows["sqlite_master"] = conn.execute("SELECT * FROM sqlite_master ORDER BY name").fetchall()
    return rows

XSS = '<img src=x onerror=alert(1)><script>alert("x")</script>'


@pytest.fixture
def world(tmp_path):
    """alice: one question with two sibling answers (a retry) and a second turn; bob: his own chat."""
    store = Store(tmp_path / "data" / "kaizen.db")
    alice, bob = store.ensure_user("alice"), store.ensure_user("bob")
    ca = store.new_conversation(alice, "alice's chat")
    q1 = store.add_message(ca, "user", "What is WAL?", user_id=alice)
    a1 = store.add_message(ca, "assistant", "Write-ahead logging.", user_id=alice, template="plain",
                           model="smollm2", adapter=None, sources=[{"file": "sqlite.md", "chunk": 3, "score": 0.8}],
                           latency_ms=120.5, prompt_tokens=12, completion_tokens=4)
    a2 = store.add_message(ca, "assistant", "A journal mode.", user_id=alice, parent_id=q1, adapter="v2")
    q2 = store.add_message(ca, "user", "And busy_timeout?", user_id=alice, parent_id=a1)
    a3 = store.add_message(ca, "assistant", "How long to wait for a lock.", user_id=alice)
    cb = store.new_conversation(bob)
    bq = store.add_message(cb, "user", "Hi", user_id=bob)
    ba = store.add_message(cb, "assistant", "Hello", user_id=bob)
    yield dict(store=store, path=store.path, alice=alice, bob=bob, ca=ca, cb=cb, q1=q1, a1=a1, a2=a2, q2=q2, a3=a3,
               bq=bq, ba=ba)
    store.close()


def test_messages_round_trip_with_provenance(world):
    s, alice = world["store"], world["alice"]
    m = s.message(world["a1"], alice)
    assert (m["role"], m["content"], m["parent_id"], m["conversation_id"]) == \
           ("assistant", "Write-ahead logging.", world["q1"], world["ca"])
    assert (m["template"], m["model"], m["adapter"], m["latency_ms"], m["prompt_tokens"], m["completion_tokens"]) == \
           ("plain", "smollm2", None, 120.5, 12, 4)
    assert m["sources"] == [{"file": "sqlite.md", "chunk": 3, "score": 0.8}]
    assert m["edited"] is None and m["rating"] is None
    conv = s.conversation(world["ca"], alice)
    assert [r["id"] for r in conv] == [world[k] for k in ("q1", "a1", "a2", "q2", "a3")]
    # default parents: a retry answers the latest user message, the next answer answers q2
    assert s.message(world["a3"], alice)["parent_id"] == world["q2"]
    assert [c["id"] for c in s.conversations(alice)] == [world["ca"]]
    assert s.conversations(alice)[0]["messages"] == 5


def test_default_parent_of_next_question_is_the_picked_answer(world):
    s, alice = world["store"], world["alice"]
    conv = s.new_conversation(alice)
    q = s.add_message(conv, "user", "q", user_id=alice)
    first = s.add_message(conv, "assistant", "first", user_id=alice)
    second = s.add_message(conv, "assistant", "second", user_id=alice)
    assert s.message(second, alice)["parent_id"] == q
    s.choose(q, alice, [first, second], first)
    nxt = s.add_message(conv, "user", "follow-up", user_id=alice)
    assert s.message(nxt, alice)["parent_id"] == first


def test_user_b_cannot_read_list_or_rate_user_a(world):
    s, bob = world["store"], world["bob"]
    before = snapshot(world["path"])
    assert [c["id"] for c in s.conversations(bob)] == [world["cb"]]
    with pytest.raises(NotFoundError, match="not found"):
        s.message(world["a1"], bob)
    with pytest.raises(NotFoundError):
        s.conversation(world["ca"], bob)
    with pytest.raises(NotFoundError):
        s.rate(world["a1"], bob, -1, ["wrong"])
    with pytest.raises(NotFoundError):
        s.edit(world["a1"], bob, "forged correction")
    with pytest.raises(NotFoundError):
        s.choose(world["q1"], bob, [world["a1"], world["a2"]], world["a1"])
    with pytest.raises(NotFoundError):
        s.add_message(world["ca"], "user", "sneaking in", user_id=bob)
    assert snapshot(world["path"]) == before
    # bob's own message works, and the error for alice's id is the same as for a missing one
    assert s.rate(world["ba"], bob, 1) > 0
    with pytest.raises(NotFoundError) as missing:
        s.message(999_999, bob)
    with pytest.raises(NotFoundError) as foreign:
        s.message(world["a1"], bob)
    assert str(missing.value).replace("999999", "X") == str(foreign.value).replace(str(world["a1"]), "X")


def _forgeries(w):
    s, alice = w["store"], w["alice"]
    big_answer = "x" * 8001
    return {
        "another user's message": lambda: s.rate(w["ba"], alice, 1),
        "non-existent id": lambda: s.rate(987654, alice, 1),
        "negative id": lambda: s.rate(-1, alice, 1),
        "id as text": lambda: s.rate(str(w["a1"]), alice, 1),
        "user message instead of answer": lambda: s.rate(w["q1"], alice, 1),
        "value 2": lambda: s.rate(w["a1"], alice, 2),
        "value 0": lambda: s.rate(w["a1"], alice, 0),
        "value True": lambda: s.rate(w["a1"], alice, True),
        "value '1'": lambda: s.rate(w["a1"], alice, "1"),
        "unknown reason": lambda: s.rate(w["a1"], alice, -1, ["boring"]),
        "reasons as a string": lambda: s.rate(w["a1"], alice, -1, "wrong"),
        "oversized comment": lambda: s.rate(w["a1"], alice, -1, ["other"], "c" * 2001),
        "non-existent user": lambda: s.rate(w["a1"], 4242, 1),
        "oversized edit": lambda: s.edit(w["a1"], alice, big_answer),
        "empty edit": lambda: s.edit(w["a1"], alice, "   "),
        "edit that changes nothing": lambda: s.edit(w["a1"], alice, "Write-ahead logging."),
        "edit of a user message": lambda: s.edit(w["q1"], alice, "changed question"),
        "edit of another user's answer": lambda: s.edit(w["ba"], alice, "changed"),
        "oversized user message": lambda: s.add_message(w["ca"], "user", "u" * 4001, user_id=alice),
        "oversized answer": lambda: s.add_message(w["ca"], "assistant", big_answer, user_id=alice),
        "empty user message": lambda: s.add_message(w["ca"], "user", "", user_id=alice),
        "unknown role": lambda: s.add_message(w["ca"], "tool", "x", user_id=alice),
        "message in another user's chat": lambda: s.add_message(w["cb"], "user", "x", user_id=alice),
        "parent from another chat": lambda: s.add_message(w["ca"], "assistant", "x", user_id=alice,
                                                          parent_id=w["bq"]),
        "answer replying to an answer": lambda: s.add_message(w["ca"], "assistant", "x", user_id=alice,
                                                              parent_id=w["a1"]),
        "bad sources": lambda: s.add_message(w["ca"], "assistant", "x", user_id=alice, sources="a.md"),
        "negative latency": lambda: s.add_message(w["ca"], "assistant", "x", user_id=alice, latency_ms=-1),
        "a stopped question": lambda: s.add_message(w["ca"], "user", "x", user_id=alice, stopped=True),
        "candidates not siblings": lambda: s.choose(w["q1"], alice, [w["a1"], w["a3"]], w["a1"]),
        "candidate of another user": lambda: s.choose(w["q1"], alice, [w["a1"], w["ba"]], w["a1"]),
        "picked not a candidate": lambda: s.choose(w["q1"], alice, [w["a1"], w["a2"]], w["a3"]),
        "a single candidate": lambda: s.choose(w["q1"], alice, [w["a1"]], w["a1"]),
        "duplicate candidates": lambda: s.choose(w["q1"], alice, [w["a1"], w["a1"]], w["a1"]),
        "prompt is an answer": lambda: s.choose(w["a1"], alice, [w["a1"], w["a2"]], w["a1"]),
        "conversation of nobody": lambda: s.new_conversation(31337),
        "opt-out of nobody": lambda: s.set_opt_out(31337, True),
        "opt-out not a bool": lambda: s.set_opt_out(alice, "yes"),
        "bad role": lambda: s.ensure_user("eve", "root"),
        "empty user name": lambda: s.ensure_user("  "),
    }


def test_forged_or_invalid_events_are_refused_and_change_nothing(world):
    before = snapshot(world["path"])
    for name, attempt in _forgeries(world).items():
        with pytest.raises(FeedbackError) as err:
            attempt()
        assert str(err.value), name
        assert snapshot(world["path"]) == before, f"{name} changed the database"
    assert world["store"].event_count() == 0


def test_length_limits_are_inclusive_and_configurable(world, tmp_path):
    s, alice = world["store"], world["alice"]
    assert s.add_message(world["ca"], "user", "u" * 4000, user_id=alice) > 0
    assert s.edit(world["a1"], alice, "e" * 8000) > 0
    small = Store(world["path"], max_user_chars=10, max_answer_chars=20)
    with pytest.raises(FeedbackError, match="too long: 11 characters \\(limit 10\\)"):
        small.add_message(world["ca"], "user", "u" * 11, user_id=alice)
    with pytest.raises(FeedbackError, match="limit 20"):
        small.edit(world["a1"], alice, "e" * 21)
    small.close()


def test_html_and_scripts_are_stored_verbatim(world):
    s, alice = world["store"], world["alice"]
    q = s.add_message(world["ca"], "user", XSS, user_id=alice)
    a = s.add_message(world["ca"], "assistant", XSS + " answer", user_id=alice)
    s.edit(a, alice, "<img src=x onerror=alert(1)>")
    s.rate(a, alice, -1, ["unsafe"], comment=XSS)
    with sqlite3.connect(world["path"]) as conn:
        assert conn.execute("SELECT content FROM messages WHERE id = ?", (q,)).fetchone()[0] == XSS
        assert conn.execute("SELECT original, edited FROM edits").fetchone() == (XSS + " answer",
                                                                                 "<img src=x onerror=alert(1)>")
        assert conn.execute("SELECT comment FROM ratings").fetchone()[0] == XSS
    m = s.message(a, alice)
    assert m["content"] == XSS + " answer" and m["edited"] == "<img src=x onerror=alert(1)>"


def test_ratings_edits_choices_and_latest_wins(world):
    s, alice = world["store"], world["alice"]
    r1 = s.rate(world["a1"], alice, -1, ["wrong", "too long", "wrong"], "too verbose")
    r2 = s.rate(world["a1"], alice, 1)
    assert r2 > r1
    assert s.message(world["a1"], alice)["rating"] == 1
    e1 = s.edit(world["a1"], alice, "WAL: write-ahead logging, readers do not block writers.")
    c1 = s.choose(world["q1"], alice, [world["a1"], world["a2"]], world["a2"])
    with sqlite3.connect(world["path"]) as conn:
        assert conn.execute("SELECT value, reasons, comment FROM ratings ORDER BY id").fetchall() == \
               [(-1, '["wrong", "too long"]', "too verbose"), (1, "[]", "")]
        # the original comes from the database, not from the caller
        assert conn.execute("SELECT message_id, user_id, original FROM edits WHERE id = ?", (e1,)).fetchone() == \
               (world["a1"], alice, "Write-ahead logging.")
        assert conn.execute("SELECT prompt_message_id, candidates, picked_id FROM choices WHERE id = ?",
                            (c1,)).fetchone() == (world["q1"], f"[{world['a1']}, {world['a2']}]", world["a2"])
    assert s.event_count() == 4
    assert set(REASONS) >= {"wrong", "unhelpful", "unsafe", "too long", "ignored the sources", "other"}


def test_a_pick_or_a_vote_after_a_correction_is_on_the_correction_the_user_saw(world):
    """alice corrects a1, retries, and picks (and 👍s) the first answer: the pick row showed her correction, so the
    DPO rows prefer the correction over a2; the text she replaced is never a chosen side."""
    from feedback.datasets import dpo_rows

    s, alice = world["store"], world["alice"]
    fixed = "Write-ahead logging: readers never block the writer."
    s.edit(world["a1"], alice, fixed)
    s.choose(world["q1"], alice, [world["a1"], world["a2"]], world["a1"])
    s.rate(world["a1"], alice, 1)
    s.rate(world["a2"], alice, -1)
    rows = dpo_rows(s.training_events())
    pairs = sorted((r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows)
    assert pairs == [(fixed, "A journal mode."), (fixed, "A journal mode."),  # the pick; the 👍 over the 👎 sibling
                     (fixed, "Write-ahead logging.")]  # the edit over the original
    assert all(r["chosen"][0]["content"] != "Write-ahead logging." for r in rows)


def test_training_events_carry_prompt_answer_and_provenance(world):
    s, alice, bob = world["store"], world["alice"], world["bob"]
    e_edit = s.edit(world["a1"], alice, "Write-ahead logging (WAL).")
    s.rate(world["a3"], alice, -1, ["unhelpful"], "vague")
    s.choose(world["q1"], alice, [world["a1"], world["a2"]], world["a1"])
    s.rate(world["ba"], bob, 1)
    s.rate(world["ba"], bob, -1)
    s.set_opt_out(bob, True)
    events = s.training_events()
    assert [e["event_id"] for e in events] == [f"edit:{e_edit}", "rating:1", "choice:1", "rating:2", "rating:3"]
    edit, rating, choice, bob_old, bob_new = events
    assert edit["kind"] == "edit" and edit["edited"] == "Write-ahead logging (WAL)."
    assert edit["answer"] == "Write-ahead logging." and edit["prompt"] == [{"role": "user", "content": "What is WAL?"}]
    assert (edit["user"], edit["user_id"], edit["opted_out"], edit["parent_id"], edit["conversation_id"]) == \
           ("alice", alice, False, world["q1"], world["ca"])
    assert (edit["template"], edit["model"], edit["adapter"]) == ("plain", "smollm2", None)
    # a3 was generated before the edit, so its prompt shows a1 as generated
    assert rating["prompt"] == [{"role": "user", "content": "What is WAL?"},
                                {"role": "assistant", "content": "Write-ahead logging."},
                                {"role": "user", "content": "And busy_timeout?"}]
    assert (rating["value"], rating["reasons"], rating["comment"], rating["message_id"]) == \
           (-1, ["unhelpful"], "vague", world["a3"])
    # a1 was picked after alice had corrected it: she saw, and picked, her correction (the DPO row's chosen side)
    fixed = "Write-ahead logging (WAL)."
    assert choice["chosen"] == choice["seen"] == fixed and choice["rejected"] == ["A journal mode."]
    assert choice["answer"] == choice["candidates"][0]["content"] == "Write-ahead logging."
    assert choice["candidates"][0]["seen"] == fixed and choice["candidates"][1]["seen"] == "A journal mode."
    assert edit["seen"] == "Write-ahead logging."  # an edit's own text is not what was seen when making it
    assert choice["candidate_ids"] == [world["a1"], world["a2"]] and choice["picked_id"] == world["a1"]
    assert [c["adapter"] for c in choice["candidates"]] == [None, "v2"]
    assert bob_old["opted_out"] and bob_old["superseded"] and not bob_new["superseded"]
    assert not any(e["superseded"] for e in (edit, rating, choice))
    # an answer generated after the edit sees the edited text in its prompt
    q3 = s.add_message(world["ca"], "user", "Thanks", user_id=alice, parent_id=world["a1"])
    a4 = s.add_message(world["ca"], "assistant", "You're welcome", user_id=alice)
    s.rate(a4, alice, 1)
    last = s.training_events(since=events[-1]["created"])
    assert [e["message_id"] for e in last] == [a4]
    assert last[0]["prompt"][1] == {"role": "assistant", "content": "Write-ahead logging (WAL)."}
    assert last[0]["parent_id"] == q3
    assert s.event_count() == 6 and s.event_count(since=events[-1]["created"]) == 1
    assert s.event_count(since="2999-01-01") == 0 and s.training_events(since="2999-01-01") == []
    with pytest.raises(FeedbackError, match="ISO"):
        s.event_count(since="yesterday")


def test_users_roles_and_opt_out(world):
    s = world["store"]
    assert s.ensure_user("alice") == world["alice"]
    assert s.ensure_user("carol", "admin") == s.ensure_user("carol", "admin")
    assert s.find_user("carol")["role"] == "admin"
    assert s.ensure_user("carol") == s.find_user("carol")["id"]  # no role given: unchanged
    assert s.find_user("carol")["role"] == "admin"
    s.ensure_user("carol", "user")  # roles follow the users file
    assert s.find_user("carol")["role"] == "user"
    s.set_opt_out(world["alice"], True)
    s.set_opt_out(world["alice"], False)
    s.set_opt_out(world["alice"], True)
    assert s.user(world["alice"])["opted_out"] is True
    with sqlite3.connect(world["path"]) as conn:
        assert conn.execute("SELECT user_id, opted_out FROM opt_outs ORDER BY id").fetchall() == \
               [(world["alice"], 1), (world["alice"], 0), (world["alice"], 1)]
    assert s.find_user("nobody") is None


def test_backup_is_a_consistent_copy_and_refuses_to_overwrite(world, tmp_path):
    s, alice = world["store"], world["alice"]
    s.rate(world["a1"], alice, 1)
    target = tmp_path / "backups" / "kaizen-copy.db"
    s.backup(target)
    with sqlite3.connect(target) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 7
        assert conn.execute("SELECT value FROM ratings").fetchall() == [(1,)]
    size = target.stat().st_size
    with pytest.raises(FeedbackError, match="already exists"):
        s.backup(target)
    assert target.stat().st_size == size
    copy = Store(target)
    assert copy.message(world["a1"], alice)["rating"] == 1
    copy.close()


def test_stats_counts_latest_ratings_by_adapter(world):
    s, alice, bob = world["store"], world["alice"], world["bob"]
    s.rate(world["a1"], alice, -1)
    s.rate(world["a1"], alice, 1)  # supersedes
    s.rate(world["a2"], alice, -1, ["wrong"])
    s.edit(world["a3"], alice, "It sets how long SQLite waits for a lock.")
    s.rate(world["ba"], bob, 1)
    st = s.stats()
    assert st["totals"]["ratings"] == 4 and st["totals"]["thumbs_up"] == 2 and st["totals"]["thumbs_down"] == 1
    assert st["thumbs_ratio"] == round(2 / 3, 4)
    by_adapter = {r["adapter"]: r for r in st["by_adapter"]}
    assert (by_adapter["v2"]["up"], by_adapter["v2"]["down"], by_adapter["v2"]["ratio"]) == (0, 1, 0.0)
    assert (by_adapter["base"]["answers"], by_adapter["base"]["up"], by_adapter["base"]["edits"]) == (3, 2, 1)
    assert sum(r["count"] for r in st["per_day"]) == 5
    assert [e["edited"] for e in st["latest_edits"]] == ["It sets how long SQLite waits for a lock."]
    mine = s.stats(bob)
    assert mine["totals"]["ratings"] == 1 and mine["totals"]["answers"] == 1 and mine["latest_edits"] == []


def test_a_choice_between_two_copies_of_one_answer_is_refused(world):
    s, w = world["store"], world
    same = s.add_message(w["ca"], "assistant", "  write-ahead   LOGGING. ", user_id=w["alice"], parent_id=w["q1"])
    before = snapshot(w["path"])
    with pytest.raises(FeedbackError, match="same text"):
        s.choose(w["q1"], w["alice"], [w["a1"], same], same)
    assert snapshot(w["path"]) == before
    assert s.choose(w["q1"], w["alice"], [w["a1"], w["a2"]], w["a2"]) > 0  # different answers still work


def test_retracting_a_thumb_is_an_appended_zero_that_wins(world):
    s, w = world["store"], world
    s.rate(w["a1"], w["alice"], -1, ["wrong"])
    s.retract(w["a1"], w["alice"])
    assert s.message(w["a1"], w["alice"])["rating"] is None
    st = s.stats()["totals"]
    assert (st["ratings"], st["thumbs_up"], st["thumbs_down"]) == (2, 0, 0)
    s.rate(w["a1"], w["alice"], 1)
    assert s.message(w["a1"], w["alice"])["rating"] == 1
    with sqlite3.connect(w["path"]) as conn:
        assert [r[0] for r in conn.execute("SELECT value FROM ratings ORDER BY id")] == [-1, 0, 1]
    with pytest.raises(FeedbackError):
        s.rate(w["a1"], w["alice"], 0)  # a retraction is `retract`, never a silent 0 from `rate`
    with pytest.raises(NotFoundError):
        s.retract(w["ba"], w["alice"])  # not hers


def test_an_answer_records_how_much_of_the_conversation_the_model_was_given(world):
    s, alice, ca = world["store"], world["alice"], world["ca"]
    given = s.add_message(ca, "assistant", "On its own.", user_id=alice, context_messages=0)
    assert s.message(given, alice)["context_messages"] == 0
    assert s.message(world["a3"], alice)["context_messages"] is None  # not recorded
    before = snapshot(world["path"])
    for role, count in (("assistant", -1), ("assistant", "two"), ("assistant", 1.5), ("user", 2)):
        with pytest.raises(FeedbackError):
            s.add_message(ca, role, "x", user_id=alice, context_messages=count)
    assert snapshot(world["path"]) == before
