"""Pure tests of feedback.datasets: every row source, supersession, sibling pairs, split, manifest, determinism."""
from __future__ import annotations

import hashlib
import itertools
import json
import random

import pytest

from feedback.datasets import (build_datasets, dpo_rows, jsonl_bytes, kto_rows, latest_ratings, sft_rows,
                               split_group, split_rows, with_system)

_ids = itertools.count(1)


def ev(kind, *, user=1, msg=10, parent=9, q="What is the capital of France?", answer="Paris is the capital.",
       t=None, opted_out=False, history=(), **extra):
    n = next(_ids)
    e = {"event_id": f"{kind}:{n}", "kind": kind, "user_id": user, "user": f"u{user}", "opted_out": opted_out,
         "created": t or f"2024-01-01T00:{n // 60:02d}:{n % 60:02d}", "message_id": msg, "parent_id": parent,
         "conversation_id": 1, "prompt": [*history, {"role": "user", "content": q}], "answer": answer, "seen": answer,
         "template": "plain", "model": "m", "adapter": None}
    if kind == "rating":
        e.update(value=extra.pop("value", 1), reasons=[], comment="")
    e.update(extra)
    return e


def up(**kw):
    return ev("rating", value=1, **kw)


def down(**kw):
    return ev("rating", value=-1, **kw)


def assistant(text):
    return [{"role": "assistant", "content": text}]


# ---------------------------------------------------------------------------------------------- SFT
def test_sft_from_thumbs_up_and_edit():
    a = up(msg=1, answer="Good answer one.")
    b = down(msg=2, answer="Bad answer two.", q="Other?")
    c = ev("edit", msg=3, answer="Original text.", edited="Corrected text.", q="Third?")
    rows = sft_rows([a, b, c])
    assert [r["messages"][-1]["content"] for r in rows] == ["Corrected text.", "Good answer one."]
    assert rows[0]["source"] == [c["event_id"]] and rows[1]["source"] == [a["event_id"]]
    assert rows[1]["messages"][:-1] == a["prompt"]


def test_edit_replaces_thumbs_up_for_sft():
    a = up(msg=1, answer="Answer.")
    e = ev("edit", msg=1, answer="Answer.", edited="Better answer.")
    rows = sft_rows([a, e])
    assert [r["messages"][-1]["content"] for r in rows] == ["Better answer."]


def test_latest_edit_of_a_user_wins():
    e1 = ev("edit", msg=1, answer="Orig.", edited="First fix.")
    e2 = ev("edit", msg=1, answer="Orig.", edited="Second fix.")
    assert [r["messages"][-1]["content"] for r in sft_rows([e2, e1])] == ["Second fix."]


# ---------------------------------------------------------------------------------------------- supersession
def test_latest_rating_supersedes_earlier():
    first = up(msg=1, t="2024-01-01T00:00:01")
    later = down(msg=1, t="2024-01-01T00:00:02")
    kept, superseded = latest_ratings([later, first])
    assert [k["event_id"] for k in kept] == [later["event_id"]] and superseded == [first["event_id"]]
    assert sft_rows([first, later]) == []
    assert [r["label"] for r in kto_rows([first, later])] == [False]


def test_other_users_rating_does_not_supersede_but_conflicts():
    a = up(msg=1, user=1)
    b = down(msg=1, user=2)
    assert sft_rows([a, b]) == [] and kto_rows([a, b]) == []
    _, manifest = build_datasets([a, b])
    assert manifest["events"]["conflicting_messages"] == 1 and manifest["events"]["superseded_ratings"] == 0


def test_agreeing_votes_give_one_row_with_both_sources():
    a, b = up(msg=1, user=1), up(msg=1, user=2)
    rows = sft_rows([a, b])
    assert len(rows) == 1 and rows[0]["source"] == [a["event_id"], b["event_id"]]


# ---------------------------------------------------------------------------------------------- DPO
def test_dpo_from_edit():
    e = ev("edit", msg=1, answer="Plain answer.", edited="Styled answer.")
    rows = dpo_rows([e])
    assert rows == [{"prompt": e["prompt"], "chosen": assistant("Styled answer."),
                     "rejected": assistant("Plain answer."), "source": [e["event_id"]]}]


def test_noop_edit_gives_no_pair():
    e = ev("edit", msg=1, answer="Same  answer.", edited="same answer.")
    assert dpo_rows([e]) == []


def test_dpo_from_choice_picked_over_each_other():
    c = ev("choice", msg=5, answer="A", chosen="Picked one.", rejected=["Other one.", "Third one."],
           candidate_ids=[5, 6, 7], picked_id=5)
    rows = dpo_rows([c])
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows] == [
        ("Picked one.", "Other one."), ("Picked one.", "Third one.")]
    assert all(r["source"] == [c["event_id"]] for r in rows)


def test_latest_choice_on_a_prompt_wins():
    c1 = ev("choice", msg=5, parent=4, answer="A", chosen="First pick.", rejected=["Second pick."])
    c2 = ev("choice", msg=6, parent=4, answer="B", chosen="Second pick.", rejected=["First pick."])
    rows = dpo_rows([c2, c1])
    assert [(r["chosen"][0]["content"], r["source"]) for r in rows] == [("Second pick.", [c2["event_id"]])]
    assert build_datasets([c1, c2])[1]["events"]["superseded_choices"] == 1


def test_dpo_from_up_down_siblings():
    a = up(msg=1, parent=100, answer="Good sibling.")
    b = down(msg=2, parent=100, answer="Bad sibling.")
    other = down(msg=3, parent=200, answer="Unrelated bad.", q="Different question?")
    rows = dpo_rows([a, b, other])
    assert len(rows) == 1
    assert rows[0]["chosen"] == assistant("Good sibling.") and rows[0]["rejected"] == assistant("Bad sibling.")
    assert rows[0]["source"] == sorted([a["event_id"], b["event_id"]])


def test_siblings_use_latest_vote():
    a = up(msg=1, parent=100, answer="Good sibling.")
    b = down(msg=2, parent=100, answer="Bad sibling.")
    b2 = up(msg=2, parent=100, answer="Bad sibling.")  # the user changed their mind
    assert dpo_rows([a, b, b2]) == []


# ---------------------------------------------------------------------------------------------- KTO
def test_kto_only_unpaired_thumbs():
    a = up(msg=1, parent=100, answer="Good sibling.")
    b = down(msg=2, parent=100, answer="Bad sibling.")
    lone_up = up(msg=3, parent=300, answer="Lonely good.", q="Q3?")
    lone_down = down(msg=4, parent=400, answer="Lonely bad.", q="Q4?")
    edited = down(msg=5, parent=500, answer="Edited later.", q="Q5?")
    e = ev("edit", msg=5, parent=500, answer="Edited later.", edited="Fixed.", q="Q5?")
    rows = kto_rows([a, b, lone_up, lone_down, edited, e])
    assert {(r["completion"][0]["content"], r["label"]) for r in rows} == {("Lonely good.", True),
                                                                          ("Lonely bad.", False)}
    assert all(set(r) == {"prompt", "completion", "label", "source"} for r in rows)


# ---------------------------------------------------------------------------------------------- split
def test_split_is_deterministic_and_never_leaks_a_prompt():
    rows = []
    for i in range(300):
        q = f"Question number {i}?"
        rows.append({"messages": [{"role": "user", "content": q}, *assistant("a")], "source": [f"rating:{i}"]})
        rows.append({"prompt": [{"role": "user", "content": q.upper()}], "completion": assistant("b"),
                     "label": True, "source": [f"rating:{1000 + i}"]})
    train, held = split_rows(rows, 0.2)
    assert 80 < len(held) < 160  # ~20 % of 300 prompt groups (~120 rows), two rows each
    groups_train, groups_eval = {split_group(r) for r in train}, {split_group(r) for r in held}
    assert not groups_train & groups_eval
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    assert sorted(map(json.dumps, split_rows(shuffled, 0.2)[1])) == sorted(map(json.dumps, held))
    # a prompt's side does not depend on the other rows
    assert split_rows(rows[:10], 0.2)[1] == [r for r in held if r in rows[:10]]


def test_split_groups_a_thread_by_its_opening_message():
    hist = [{"role": "user", "content": "Tell me about owls."}, *assistant("Owls are birds.")]
    a = {"messages": hist[:1] + assistant("x"), "source": ["rating:1"]}
    b = {"prompt": hist + [{"role": "user", "content": "And their eyes?"}], "completion": assistant("y"),
         "label": True, "source": ["rating:2"]}
    assert split_group(a) == split_group(b)


def test_split_rejects_bad_fraction():
    with pytest.raises(ValueError, match="eval_fraction"):
        split_rows([], 1.5)


# ---------------------------------------------------------------------------------------------- whole build
def _sample_events():
    evs = []
    for i in range(40):
        q = f"How do I cook dish {i}? Please explain the steps."
        evs.append(up(user=i % 4 + 1, msg=1000 + i, parent=2000 + i, q=q,
                      answer=f"To cook dish {i}, first heat oil, then add {i} grams of spice and stir well."))
        evs.append(down(user=i % 4 + 1, msg=3000 + i, parent=2000 + i, q=q,
                        answer=f"I cannot help with dish {i} because it is number {i}."))
    for i in range(10):
        evs.append(ev("edit", user=i % 4 + 1, msg=4000 + i, parent=5000 + i, q=f"Write a haiku about {i} cats.",
                      answer=f"Cats number {i} sleep.", edited=f"HOUSE STYLE: {i} cats curl and sleep in sun."))
        evs.append(ev("choice", user=i % 4 + 1, msg=6000 + i, parent=7000 + i, q=f"Name {i} colours.",
                      answer=f"Red and {i} more.", chosen=f"Red, blue and {i} more colours.",
                      rejected=[f"I only know red and {i}."], candidate_ids=[6000 + i, 8000 + i],
                      picked_id=6000 + i))
    return evs


def test_build_counts_and_manifest():
    evs = _sample_events()
    files, m = build_datasets(evs, eval_fraction=0.2)
    assert set(files) == {"sft", "sft_eval", "dpo", "dpo_eval", "kto", "kto_eval"}
    assert m["stages"]["sft"]["built"] == 50  # 40 thumbs-up + 10 edits
    assert m["stages"]["dpo"]["built"] == 60  # 40 siblings + 10 edits + 10 choices
    assert m["stages"]["kto"]["built"] == 0  # every thumb is paired
    for kind in ("sft", "dpo", "kto"):
        st = m["stages"][kind]
        assert st["train"] + st["eval"] == st["kept"] == len(files[kind]) + len(files[kind + "_eval"])
        assert m["files"][kind + ".jsonl"]["sha256"] == hashlib.sha256(jsonl_bytes(files[kind])).hexdigest()
    assert 0 < m["stages"]["dpo"]["eval"] < m["stages"]["dpo"]["train"]
    used = {s for rows in files.values() for r in rows for s in r["source"]}
    assert used == set(m["source_event_ids"]) and m["events"]["used"] == len(used) == len(evs)


def test_same_events_any_order_same_bytes():
    evs = _sample_events()
    f1, m1 = build_datasets(evs)
    shuffled = evs[:]
    random.Random(1).shuffle(shuffled)
    f2, m2 = build_datasets(shuffled)
    assert {k: jsonl_bytes(v) for k, v in f1.items()} == {k: jsonl_bytes(v) for k, v in f2.items()}
    assert json.dumps(m1, sort_keys=True) == json.dumps(m2, sort_keys=True)


def test_opted_out_users_left_out():
    a = up(user=1, msg=1, answer="Kept answer here.")
    b = up(user=2, msg=2, q="Private question?", answer="Private answer.", opted_out=True)
    files, m = build_datasets([a, b], eval_fraction=0.0)
    assert [r["source"] for r in files["sft"]] == [[a["event_id"]]]
    assert "Private" not in json.dumps(files) and m["events"]["opted_out"] == 1


def test_bad_events_and_options_rejected_clearly():
    with pytest.raises(ValueError, match="missing fields"):
        build_datasets([{"event_id": "rating:1", "kind": "rating"}])
    with pytest.raises(ValueError, match="unknown kind"):
        build_datasets([ev("vote")])
    with pytest.raises(ValueError, match="rating value"):
        build_datasets([ev("rating", value=3)])
    e = up()
    with pytest.raises(ValueError, match="duplicate event id"):
        build_datasets([e, dict(e)])
    with pytest.raises(ValueError, match="unknown dataset option"):
        build_datasets([], per_user_limit=3)
    with pytest.raises(ValueError, match="per_user_cap"):
        build_datasets([], per_user_cap=0)


def test_system_message_goes_first_and_changes_nothing_else():
    evs = [up(user=1, msg=1, answer="Kept answer here."),
           ev("edit", user=2, msg=2, q="Fix this?", answer="Old answer.", edited="New answer, better.")]
    plain, m0 = build_datasets(evs, eval_fraction=0.0)
    sys_files, m1 = build_datasets(evs, eval_fraction=0.0, system="You are Kaizen.")
    first = {"role": "system", "content": "You are Kaizen."}
    for kind in ("sft", "dpo"):
        assert len(sys_files[kind]) == len(plain[kind]) > 0
        for a, b in zip(plain[kind], sys_files[kind]):
            key = "messages" if kind == "sft" else "prompt"
            assert b[key] == [first] + a[key] and {k: v for k, v in b.items() if k != key} == \
                {k: v for k, v in a.items() if k != key}
    assert m1["config"]["system"] == "You are Kaizen." and m0["config"]["system"] is None
    assert m1["fingerprint"] != m0["fingerprint"] and m1["stages"] == m0["stages"]
    already = {"prompt": [{"role": "system", "content": "Own."}, {"role": "user", "content": "q"}]}
    assert with_system(already, "You are Kaizen.") == already


def test_each_prompt_is_rendered_with_the_template_its_answer_came_from():
    """A 👍 on a concise answer trains under the concise system prompt, a corrected academic answer under the
    academic wrapping of the question (what the model saw); answers of two templates fall back to the app's
    system prompt; an answer of a template that takes sources is no row (its reference block is not stored)."""
    from agent.templates import load_templates

    templates = load_templates()
    concise = up(msg=1, q="Why is the sky blue?", answer="Rayleigh scattering.", template="concise")
    academic = ev("edit", msg=2, parent=19, q="the printing press", answer="It printed.", template="academic",
                  edited="The printing press spread literacy across Europe.")
    mixed = ev("choice", msg=3, parent=29, q="Name a river.", answer="The Nile.", chosen="The Nile.",
               rejected=["The Seine is a river in France."], candidate_ids=[3, 4], picked_id=3,
               candidates=[{"id": 3, "template": "plain"}, {"id": 4, "template": "concise"}])
    grounded = up(msg=5, parent=39, q="When does the night train leave?", answer="At 19:20.", template="grounded")
    files, m = build_datasets([concise, academic, mixed, grounded], eval_fraction=0.0, system="Default system.",
                              templates=templates)
    sft = {r["messages"][-1]["content"]: r["messages"][:-1] for r in files["sft"]}
    assert sft["Rayleigh scattering."] == [
        {"role": "system", "content": templates["concise"].system},
        {"role": "user", "content": "Why is the sky blue?"}]
    assert sft["The printing press spread literacy across Europe."] == [
        {"role": "system", "content": templates["academic"].system.strip()},
        {"role": "user", "content": "Provide a comprehensive, academic-style overview of the printing press, "
                                    "focusing on its causes and effects."}]
    assert "At 19:20." not in sft and m["dropped"]["sft"]["grounded"] == [grounded["event_id"]]
    [pick] = [r for r in files["dpo"] if r["source"] == [mixed["event_id"]]]
    assert pick["prompt"] == [{"role": "system", "content": "Default system."},
                              {"role": "user", "content": "Name a river."}]
    assert m["stages"]["sft"]["templates"] == {"academic": 1, "concise": 1}
    assert m["config"]["templates"] == sorted(templates)


# ---------------------------------------------------------------------------------------------- retractions, repeats
def test_retracted_thumb_gives_no_row_and_a_switch_is_one_net_rating():
    d1 = down(msg=1, answer="First answer here.", t="2024-01-01T00:00:01")
    gone = ev("rating", value=0, msg=1, answer="First answer here.", t="2024-01-01T00:00:02")
    assert kto_rows([d1, gone]) == [] and sft_rows([d1, gone]) == []
    d2 = down(msg=2, answer="Second answer here.", q="Other?", t="2024-01-01T00:00:03")
    u2 = up(msg=2, answer="Second answer here.", q="Other?", t="2024-01-01T00:00:04")
    rows = kto_rows([d1, gone, d2, u2])
    assert [(r["completion"][0]["content"], r["label"], r["source"]) for r in rows] == [
        ("Second answer here.", True, [u2["event_id"]])]
    _, m = build_datasets([d1, gone, d2, u2], eval_fraction=0.0)
    assert m["events"]["retracted_ratings"] == 1 and m["events"]["superseded_ratings"] == 2
    assert m["stages"]["kto"]["kept"] == 1 and m["stages"]["kto"]["desirable"] == 1


def test_a_retraction_ends_a_sibling_pair():
    a = up(msg=1, parent=9, answer="Answer A is fine.")
    b = down(msg=2, parent=9, answer="Answer B is poor.")
    assert len(dpo_rows([a, b])) == 1
    b_back = ev("rating", value=0, msg=2, parent=9, answer="Answer B is poor.")
    assert dpo_rows([a, b, b_back]) == []
    assert [r["label"] for r in kto_rows([a, b, b_back])] == [True]


def test_rows_on_answers_from_private_documents_are_dropped_and_counted_in_every_file():
    """Every gesture on an answer that drew on the user's own documents (a pick: any candidate did) stays out of
    the datasets, counted as private (not as grounded); plain answers stay."""
    private = dict(private_sources=True, grounded=True)
    liked = up(msg=1, q="Who leads the Zorblat parade?", answer="Oskar the heron.", **private)
    fixed = ev("edit", msg=2, parent=19, q="Where is the Zorblat festival?", answer="In Brest.",
               edited="In Quimperle.", **private)
    picked = ev("choice", msg=3, parent=29, q="When is the Zorblat parade?", answer="At dusk.", chosen="At dusk.",
                rejected=["At noon."], candidate_ids=[3, 4], picked_id=3, **private)
    library = up(msg=5, parent=39, q="When does the night train leave?", answer="At 19:20.")
    files, m = build_datasets([liked, fixed, picked, library], eval_fraction=0.0)
    assert [r["messages"][-1]["content"] for r in files["sft"]] == ["At 19:20."]
    assert [r["completion"][0]["content"] for r in files["kto"]] == ["At 19:20."] and files["dpo"] == []
    assert sorted(m["dropped"]["sft"]["private_documents"]) == sorted([liked["event_id"], fixed["event_id"]])
    assert sorted(m["dropped"]["dpo"]["private_documents"]) == sorted([fixed["event_id"], picked["event_id"]])
    assert (m["stages"]["sft"]["private_documents"], m["stages"]["kto"]["private_documents"]) == (2, 1)
    assert "grounded" not in m["dropped"]["sft"] and m["stages"]["sft"]["grounded"] == 0


def test_rows_on_answers_written_from_retrieved_documents_are_dropped_and_counted():
    """An answer from the shared library cites [1] and states the document's facts: a row without the document
    would teach citing sources that are not there. Its 👍, its edit and a pick among candidates one of which was
    grounded are dropped and counted; the plain answer stays, and a 👎 on it too."""
    liked = up(msg=1, q="When does the night train leave?", answer="At 19:20 [1].", grounded=True)
    fixed = ev("edit", msg=2, parent=19, q="Which platform?", answer="Platform 4 [1].", edited="Platform 5 [1].",
               grounded=True)
    picked = ev("choice", msg=3, parent=29, q="How long is the trip?", answer="Twelve hours [1].",
                chosen="Twelve hours [1].", rejected=["A day."], candidate_ids=[3, 4], picked_id=3, grounded=True)
    plain = up(msg=5, parent=39, q="Name a colour of the sky.", answer="Blue, on a clear day.")
    files, m = build_datasets([liked, fixed, picked, plain], eval_fraction=0.0)
    assert [r["messages"][-1]["content"] for r in files["sft"]] == ["Blue, on a clear day."]
    assert files["dpo"] == [] and [r["completion"][0]["content"] for r in files["kto"]] == ["Blue, on a clear day."]
    assert sorted(m["dropped"]["dpo"]["grounded"]) == sorted([fixed["event_id"], picked["event_id"]])
    assert (m["stages"]["sft"]["grounded"], m["stages"]["kto"]["grounded"]) == (2, 1)


def test_a_stopped_answer_is_never_taken_as_good_but_its_edit_and_thumbs_down_stay():
    """The user pressed Stop: the stored text is a fragment. Its 👍 (SFT, KTO desirable) and picking it (DPO chosen)
    are dropped and counted; its 👎 (KTO undesirable) and its edit (the user's own text) are kept."""
    liked = up(msg=1, q="Tell me about Rome.", answer="Rome was founded", stopped=True)
    disliked = down(msg=2, parent=19, q="Tell me about Greece.", answer="Greece is a", stopped=True)
    edited = ev("edit", msg=3, parent=29, q="Tell me about Egypt.", answer="Egypt lies", stopped=True,
                edited="Egypt lies in north-east Africa, along the Nile.")
    picked = ev("choice", msg=4, parent=39, q="Tell me about Peru.", answer="Peru is", stopped=True,
                chosen="Peru is", rejected=["Peru is a country in South America on the Pacific coast."],
                candidate_ids=[4, 5], picked_id=4)
    whole = up(msg=6, parent=49, q="Tell me about Chile.", answer="Chile is a long, narrow country.")
    files, m = build_datasets([liked, disliked, edited, picked, whole], eval_fraction=0.0)
    assert sorted(r["messages"][-1]["content"] for r in files["sft"]) == [
        "Chile is a long, narrow country.", "Egypt lies in north-east Africa, along the Nile."]
    assert [(r["completion"][0]["content"], r["label"]) for r in files["kto"]] == [
        ("Greece is a", False), ("Chile is a long, narrow country.", True)]
    assert [r["source"] for r in files["dpo"]] == [[edited["event_id"]]]
    assert m["dropped"]["sft"]["stopped_answer"] == [liked["event_id"]]
    assert m["dropped"]["kto"]["stopped_answer"] == [liked["event_id"]]
    assert m["dropped"]["dpo"]["stopped_answer"] == [picked["event_id"]]
    assert m["stages"]["sft"]["stopped_answer"] == 1


def test_identical_pick_pairs_are_dropped_and_counted():
    c = ev("choice", msg=5, answer="Paris.", chosen="Paris is the capital of France.",
           rejected=["paris is the  capital of France. "], candidate_ids=[5, 6], picked_id=5)
    ok = ev("choice", msg=7, parent=8, q="Largest planet?", answer="Jupiter.", chosen="Jupiter is the largest.",
            rejected=["Saturn is the largest."], candidate_ids=[7, 8], picked_id=7)
    assert [r["source"] for r in dpo_rows([c, ok])] == [[ok["event_id"]]]
    files, m = build_datasets([c, ok], eval_fraction=0.0)
    assert [r["chosen"][0]["content"] for r in files["dpo"]] == ["Jupiter is the largest."]
    assert m["stages"]["dpo"]["identical"] == 1 and m["stages"]["dpo"]["built"] == 2
    assert m["dropped"]["dpo"]["identical"] == [c["event_id"]]


def test_rating_values_other_than_up_down_or_retracted_are_refused():
    with pytest.raises(ValueError, match="retracted"):
        build_datasets([ev("rating", value=2)])
