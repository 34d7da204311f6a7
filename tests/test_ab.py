"""A/B serving: a share of new conversations answered by a candidate version; arms are stable per conversation,
recorded with each answer, and split in the feedback stats; the registry file, the CLI and bad input."""
from __future__ import annotations

import sqlite3
import threading

import pytest

from adapters import ab
from adapters.registry import RegistryError, sync_model
from cli import main as cli
from agent.chat import Answerer
from agent.settings import Settings
from ui.chat import ChatLogic, new_state
from feedback.store import Store
from tests.test_registry import adapter, other_base, reg  # noqa: F401  (fixtures)


def test_arms_are_deterministic_and_near_the_share():
    arms = [ab.in_candidate_arm(i, 0.2, "v0002-sft") for i in range(4000)]
    assert arms == [ab.in_candidate_arm(i, 0.2, "v0002-sft") for i in range(4000)]
    assert 0.17 < sum(arms) / len(arms) < 0.23
    # another experiment draws other conversations (the candidate arm is not always the same early ids)
    assert arms != [ab.in_candidate_arm(i, 0.2, "v0003-sft") for i in range(4000)]


def test_route_only_touches_default_requests():
    exp = {"version": "v0002-sft", "share": 0.5, "started": ""}
    inside = next(i for i in range(100) if ab.in_candidate_arm(i, 0.5, "v0002-sft"))
    outside = next(i for i in range(100) if not ab.in_candidate_arm(i, 0.5, "v0002-sft"))
    assert ab.route(exp, inside, "default") == "v0002-sft"
    assert ab.route(exp, outside, "default") == "default"
    assert ab.route(exp, inside, None) is None  # "base" picked by the user
    assert ab.route(exp, inside, "v0001-sft") == "v0001-sft"  # an explicit version picked by the user
    assert ab.route(None, inside, "default") == "default" and ab.route(exp, None, "default") == "default"


@pytest.mark.parametrize("share", [0, 1, -0.1, 1.5, "half", None])
def test_bad_shares_are_refused(share):
    with pytest.raises(RegistryError, match="share"):
        ab.check_share(share)


def test_start_stop_and_refusals(reg, adapter):
    v1 = reg.promote(reg.register(adapter, {"method": "sft"}))
    v2 = reg.register(adapter, {"method": "sft"})
    assert ab.read(reg) is None
    with pytest.raises(RegistryError, match="already served"):
        ab.start(reg, v1, 0.3)
    with pytest.raises(RegistryError, match="unknown version"):
        ab.start(reg, "v0009-sft", 0.3)
    (reg.root / v2 / "extra.pkl").write_bytes(b"x")
    with pytest.raises(RegistryError, match="pickle-capable"):
        ab.start(reg, v2, 0.3)
    (reg.root / v2 / "extra.pkl").unlink()
    exp = ab.start(reg, v2, 0.3)
    assert ab.read(reg) == exp and exp["version"] == v2 and exp["share"] == 0.3
    (reg.root / "AB").write_text("{not json")
    assert ab.read(reg) is None  # a damaged file is no experiment, not a crash
    ab.start(reg, v2, 0.3)
    assert ab.stop(reg)["version"] == v2 and ab.read(reg) is None and ab.stop(reg) is None


def test_conversations_split_between_arms_and_the_stats_show_both(reg, adapter, tiny_base, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agent.model import ChatModel

    model = ChatModel(AutoModelForCausalLM.from_pretrained(tiny_base).eval(), AutoTokenizer.from_pretrained(tiny_base))
    v1 = reg.promote(reg.register(adapter, {"method": "sft"}))
    v2 = reg.register(adapter, {"method": "sft"})
    sync_model(reg, model)
    assert ab.sync(reg, model) is None
    ab.start(reg, v2, 0.5)
    exp = ab.sync(reg, model)
    assert exp["version"] == v2 and v2 in model.adapters and model.active == v1

    settings = Settings(data_dir=tmp_path / "app", max_new_tokens=3)
    store = Store(settings.db_path)
    logic = ChatLogic(Answerer(model, settings), store, router=lambda conv, asked: ab.route(exp, conv, asked))
    uid = logic.user_id(None)
    served = {}
    for i in range(12):
        state = new_state()
        for turn in range(2):  # two turns: both answers of a conversation come from one arm
            for state in logic.respond(state, uid, f"question {i}.{turn}", "plain", "off", "default",
                                       threading.Event()):
                pass
        logic.rate(state, uid, 1, liked=i % 2 == 0)
        with sqlite3.connect(settings.db_path) as db:
            adapters = {a for (a,) in db.execute("select adapter from messages where role='assistant' and "
                                                 "conversation_id=?", (state["conversation"],))}
        assert len(adapters) == 1
        served[state["conversation"]] = adapters.pop()
        expected = v2 if ab.in_candidate_arm(state["conversation"], 0.5, v2) else v1
        assert served[state["conversation"]] == expected
    assert set(served.values()) == {v1, v2}
    by_adapter = {r["adapter"]: r for r in store.stats()["by_adapter"]}
    assert set(by_adapter) == {v1, v2}
    # an explicit pick is honoured whatever the arm
    state = new_state()
    for state in logic.respond(state, uid, "base please", "plain", "off", None, threading.Event()):
        pass
    with sqlite3.connect(settings.db_path) as db:
        (last,), = db.execute("select adapter from messages order by id desc limit 1").fetchall()
    assert last is None


def test_cli_starts_shows_and_stops_a_test(reg, adapter, monkeypatch, capsys):
    v1 = reg.promote(reg.register(adapter, {"method": "sft"}))
    v2 = reg.register(adapter, {"method": "sft"})
    monkeypatch.setenv("KAIZEN_DATA_DIR", str(reg.settings.data_dir))
    monkeypatch.setenv("KAIZEN_BASE_MODEL", reg.settings.base_model)
    assert cli.main(["adapters", "ab", v2, "--share", "0.25"]) == 0
    assert f"A/B: {v2} gets 25% of new conversations" in capsys.readouterr().out
    assert cli.main(["adapters", "list"]) == 0
    assert f"A/B: {v2} gets 25%" in capsys.readouterr().out
    assert cli.main(["adapters", "ab", v1]) == 2  # the served version: a clear error, nothing changed
    assert "already served" in capsys.readouterr().err and ab.read(reg)["version"] == v2
    assert cli.main(["adapters", "ab", "--stop"]) == 0
    assert "stopped" in capsys.readouterr().out and ab.read(reg) is None
