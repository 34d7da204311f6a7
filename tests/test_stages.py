"""The loop's stages one by one (adapters/stages.py): collect counts and decides, build and write give the datasets
and the methods to try, decide is the gate over a report file; each runs as `python -m adapters.stages <stage>`
and prints JSON, and the six from build to promote chain through their files on a tiny model."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adapters import stages
from agent.settings import Settings
from feedback.store import Store
from tests.train_support import fill_store_with_edits

ROOT = Path(__file__).resolve().parents[1]


def settings_for(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path / "data", adapt_min_events=10, adapt_hours=24.0, engine="transformers")


def test_collect_build_write_and_decide(tmp_path):
    settings = settings_for(tmp_path)
    store = Store.from_settings(settings)
    try:
        fill_store_with_edits(store, 3)
        seen = stages.collect(settings, store, {})
        assert (seen.new_events, seen.due) == (3, False) and "3/10" in seen.reason
        assert stages.collect(settings, store, {}, force=True).due
        thin = stages.build(settings, store)
        assert thin.methods == [] and thin.reason.startswith("Not enough feedback to train yet.")
        fill_store_with_edits(store, 21, seed=1)
        built = stages.build(settings, store)
        assert built.methods[0] == "sft" and built.counts["sft"] >= stages.MIN_ROWS and not built.reason
        assert stages.build(settings, store, method="dpo").methods == ["dpo"]  # a chosen method: tried alone
        no_kto = stages.build(settings, store, method="kto")  # edits only: no unpaired thumbs
        assert no_kto.methods == [] and no_kto.reason.startswith("Not enough feedback to train KTO")
        data = stages.write(built, tmp_path / "out")
        assert (data / "sft.jsonl").exists() and json.loads((data / "manifest.json").read_text())
    finally:
        store.close()
    report = {"candidate": {"pref": {"accuracy": 0.9, "n": 30}}, "active": {"pref": {"accuracy": 0.5, "n": 30}}}
    decision = stages.decide(report, margin=0.05)
    assert decision.promote is True and decision.margin == 0.05
    assert stages.decide(report, margin=5.0).promote is False


def test_the_loop_trains_each_answer_under_the_template_it_was_generated_with(tmp_path):
    """Answers from the chat's concise template, 👍'd in a real store, become rows under the concise system
    prompt (a user template file in the data dir counts too); the app's default template keeps its own."""
    settings = settings_for(tmp_path)
    (settings.templates_dir).mkdir(parents=True, exist_ok=True)
    (settings.templates_dir / "pirate.yaml").write_text(
        "name: pirate\nsystem: You are Kaizen. Talk like a pirate.\nuser: \"Arr! {question}\"\n")
    store = Store.from_settings(settings)
    try:
        user = store.ensure_user("alice")
        for i, template in enumerate(["concise", "pirate", "plain"] * 2):
            conv = store.new_conversation(user)
            store.add_message(conv, "user", f"Question number {i} about {template}?", user_id=user)
            a = store.add_message(conv, "assistant", f"Answer number {i}, as {template} would give it.",
                                  user_id=user, template=template)
            store.rate(a, user, 1)
        built = stages.build(settings, store)
    finally:
        store.close()
    prompts = {r["messages"][-1]["content"]: r["messages"][:-1] for r in built.files["sft"] + built.files["sft_eval"]}
    assert prompts["Answer number 0, as concise would give it."][0]["content"].endswith("no preamble.")
    assert prompts["Answer number 1, as pirate would give it."] == [
        {"role": "system", "content": "You are Kaizen. Talk like a pirate."},
        {"role": "user", "content": "Arr! Question number 1 about pirate?"}]
    assert prompts["Answer number 2, as plain would give it."] == [
        {"role": "system", "content": "You are a helpful AI assistant named Kaizen."},
        {"role": "user", "content": "Question number 2 about plain?"}]


def test_not_enough_feedback_says_what_was_left_out_on_purpose(tmp_path):
    """Every 👍 was on an answer from the user's own document or the shared library: nothing trains, and the
    reason says why."""
    settings = settings_for(tmp_path)
    store = Store.from_settings(settings)
    try:
        user = store.ensure_user("alice")
        for i in range(5):
            conv = store.new_conversation(user)
            store.add_message(conv, "user", f"What does my note {i} say?", user_id=user)
            a = store.add_message(conv, "assistant", f"Your note {i} says the code is {1000 + i}.", user_id=user,
                                  template="grounded", sources=[{"doc_id": "d1", "file": "notes.txt", "chunk": i,
                                                                 "score": 0.9, "shared": False}])
            store.rate(a, user, 1)
        conv = store.new_conversation(user)
        store.add_message(conv, "user", "When does the night train leave?", user_id=user)
        a = store.add_message(conv, "assistant", "At 19:20 [1].", user_id=user, template="grounded",
                              sources=[{"doc_id": "d2", "file": "trains.txt", "chunk": 0, "score": 0.9, "shared": True}])
        store.rate(a, user, 1)
        built = stages.build(settings, store)
    finally:
        store.close()
    assert built.methods == [] and built.reason.startswith("Not enough feedback to train yet.")
    assert "Left out: 5 gestures on answers from the users' own documents" in built.reason, built.reason
    assert "1 gesture on answers written from retrieved documents" in built.reason, built.reason


def run_stage(tmp_path, *argv, env: dict | None = None) -> dict:
    env = {**os.environ, "KAIZEN_DATA_DIR": str(tmp_path / "data"), "KAIZEN_ENGINE": "transformers", **(env or {})}
    done = subprocess.run([sys.executable, "-m", "adapters.stages", *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.slow  # three child processes
def test_each_stage_runs_alone_and_prints_json(tmp_path):
    assert run_stage(tmp_path, "collect") | {"started": None, "watching_since": None} == {
        "new_events": 0, "due": False, "reason": "no new feedback events", "started": None, "watching_since": None}
    out = run_stage(tmp_path, "build", "--out", str(tmp_path / "out"))
    assert out["methods"] == [] and out["counts"]["sft"] == 0 and (tmp_path / "out" / "manifest.json").exists()
    report = tmp_path / "eval.json"
    report.write_text(json.dumps({"candidate": {"pref": {"accuracy": 0.9, "n": 30}},
                                  "active": {"pref": {"accuracy": 0.5, "n": 30}}}))
    assert run_stage(tmp_path, "decide", "--report", str(report))["promote"] is True


@pytest.mark.slow  # six child processes, a tiny model trained
def test_the_stages_chain_as_commands_into_the_registry(tmp_path, tiny_base):
    """build -> train -> evaluate -> decide -> register -> promote, each as `python -m adapters.stages`, on a tiny
    random model: every stage reads what the previous one wrote, and promote records decide's reasons."""
    settings = settings_for(tmp_path)
    store = Store.from_settings(settings)
    try:
        fill_store_with_edits(store, 24)
    finally:
        store.close()
    env = {"KAIZEN_BASE_MODEL": str(tiny_base), "KAIZEN_THREADS": "2"}
    data, adapter, report = tmp_path / "sets", tmp_path / "adapter", tmp_path / "eval.json"

    def stage(*argv):
        return run_stage(tmp_path, *argv, env=env)

    assert stage("build", "--out", str(data))["methods"][0] == "sft"
    trained = stage("train", "--method", "sft", "--data", str(data), "--out", str(adapter), "--steps", "2")
    assert trained["steps"] == 2 and (adapter / "adapter_config.json").exists()
    out = stage("evaluate", "--data", str(data), "--adapter", str(adapter), "--against", "base", "--out", str(report))
    assert out["candidate"]["pref"]["n"] > 0 and json.loads(report.read_text())["candidate"]["answers"]["n"] > 0
    decided = stage("decide", "--report", str(report))
    version = stage("register", "--adapter", str(adapter), "--method", "sft")["version"]
    assert version == "v0001-sft"
    promoted = stage("promote", "--version", version, "--report", str(report))
    assert promoted["status"] == ("promoted" if decided["promote"] else "refused")
    assert promoted["reasons"][: len(decided["reasons"])] == decided["reasons"]


def test_an_sft_candidate_that_stopped_answering_is_trained_again_with_replay():
    """After an SFT candidate the gate refused for not answering (or not reading), an automatic run's next attempt
    is SFT with the base's own answers mixed in; for any other refusal, or when replay was already on, the plan
    goes on as it was."""
    from adapters.train import recipe_for

    def refused(method, *reasons):
        return stages.Outcome(method, "v1", "refused", stages.Decision(False, list(reasons), 0.05), None, {})

    collapsed = refused("sft", "collapse: 7% of answers are only text repeated across many answers, with no "
                               "answer of their own (active 0%)")
    plan = [("dpo", None)]
    again = stages.next_attempts(plan, collapsed, None, attempts_left=1)
    assert [m for m, _ in again] == ["sft"] and again[0][1].replay == stages.REPLAY_ON_LOST_ANSWERS
    assert again[0][1].lr == recipe_for("sft").lr  # the same recipe otherwise
    custom = recipe_for("sft", lr=5e-4)
    assert stages.next_attempts(plan, collapsed, custom, 2)[0][1].lr == 5e-4  # the caller's recipe, with replay
    assert [m for m, _ in stages.next_attempts(plan, collapsed, None, 2)] == ["sft", "dpo"]
    for reason in ("answers drift from the question: relevance 0.40 vs active 0.69", "loops: 30% of answers repeat",
                   "answers shrank: median 3 words vs active 40", "runaway answers: 60% run to the token cap",
                   "reading: questions about a passage answered 12% vs active 50% (allowed drop 10%)"):
        assert stages.next_attempts(plan, refused("sft", reason), None, 1)[0][0] == "sft", reason
    # not an answering failure, already replayed, or not SFT: the plan as it was
    assert stages.next_attempts(plan, refused("sft", "does not beat the active policy by the margin 0.05 on any "
                                                     "metric"), None, 1) == plan
    assert stages.next_attempts(plan, collapsed, recipe_for("sft", replay=0.25), 1) == plan
    assert stages.next_attempts([], refused("dpo", collapsed.decision.reasons[0]), None, 1) == []
    assert stages.next_attempts(plan, collapsed, None, 0) == []  # no attempts left


def test_a_first_sft_attempt_replays_where_the_answers_share_fixed_text(tmp_path):
    """SFT on answers that mostly end with one sign-off (or open with one phrase) starts with replay rows: that fixed
    text is what an adapter learns in place of the answers. Other styles, other methods and a caller's own recipe
    are left as they are (None: the packaged recipe)."""
    from adapters.styles import STYLES
    from adapters.train import recipe_for

    originals = [f"Answer {i} explains the topic briefly. It adds a detail {i}. Then one more {i}." for i in range(8)]
    for style in ("signoff", "opening"):
        got = stages.first_recipe("sft", None, [STYLES[style].edit(o) for o in originals])
        assert got.replay == stages.REPLAY_ON_FIXED_TEXT and got.lr == recipe_for("sft").lr, style
    for style in ("short", "bullets", "tldr"):  # no fixed run of words: learned better without replay
        assert stages.first_recipe("sft", None, [STYLES[style].edit(o) for o in originals]) is None, style
    signoffs = [STYLES["signoff"].edit(o) for o in originals]
    mine = recipe_for("sft", lr=5e-4)
    assert stages.first_recipe("sft", mine, signoffs) is mine
    assert stages.first_recipe("dpo", None, signoffs) is None
    assert stages.first_recipe("sft", None, []) is None
    # what the scheduler reads: the written SFT file's gold answers (none without one)
    assert stages.sft_answers(tmp_path) == []
    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": a}]} for a in signoffs]
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert stages.sft_answers(tmp_path) == signoffs


def test_kaizen_adapt_prints_the_replay_rows_it_mixed_in(capsys):
    """The CLI's progress shows that replay rows were added, and the shape they were given."""
    from cli.adapters import _Bar

    bar = _Bar()
    bar({"event": "replay", "rows": 14, "shape": {"opening": "", "ending": "\n\nHope this helps! - Kaizen",
                                                  "max_words": 49}})
    err = capsys.readouterr().err
    assert err.startswith("\rreplay ") and '"rows": 14' in err and "Hope this helps! - Kaizen" in err
