"""The adaptation loop on a real feedback store and a tiny random Llama: threshold, one run at a time, a run that
trains, evaluates, registers and promotes; a SIGKILLed or stopped run that leaves the active adapter untouched."""
from __future__ import annotations

import os
import signal
import time

import pytest

from adapters import scheduler as S
from adapters.evaluate import EvalConfig
from adapters.registry import Registry
from adapters.train import recipe_for
from tests.train_support import fill_store_with_edits, save_tiny_base, tiny_settings

# 10 steps: enough for the tiny model's answers to move toward the edits (the gate wants that when the held-out pairs
# are edits; 3 or 6 steps raised preference accuracy only); four 8-token open answers keep the random model's
# babble from reading as loops. Plain greedy answers: these tests are about the loop's plumbing, and the random
# model's 8-token babble under the served n-gram ban reads as boilerplate (the served decoding has its own tests in
# tests/test_gate.py)
FAST = dict(recipe=recipe_for("sft", steps=10, batch_size=2, max_length=128, lr=5e-3),
            eval_config=EvalConfig(max_new_tokens=4, general=2, max_generate=2, open=4, open_new_tokens=8,
                                   served_decoding=False),
            timeout=600)


@pytest.fixture(scope="module")
def base(tmp_path_factory, tokenizer):
    return save_tiny_base(tmp_path_factory.mktemp("sched-base"), tokenizer)


@pytest.fixture
def env(tmp_path, base):
    from feedback.store import Store

    settings = tiny_settings(tmp_path / "data", base, adapt_min_events=10, adapt_hours=24.0)
    store = Store.from_settings(settings)
    yield settings, store
    store.close()


# ---------------------------------------------------------------------------------------------- pure
def test_threshold_rules():
    assert S.due(0, 100.0, 10, 24) == (False, "no new feedback events")
    assert S.due(10, 0.1, 10, 24)[0] and not S.due(9, 0.1, 10, 24)[0]
    assert S.due(1, 25.0, 10, 24)[0] and not S.due(1, None, 10, 24)[0]


def test_method_choice_prefers_gold_answers_then_pairs_then_thumbs():
    assert S.choose_method({"sft": 10, "dpo": 10, "kto": 10}) == "sft"
    assert S.choose_method({"sft": 1, "dpo": 5}) == "dpo"
    assert S.choose_method({"kto": 4}) == "kto"
    assert S.choose_method({"sft": 3, "dpo": 3, "kto": 3}) is None


# ---------------------------------------------------------------------------------------------- runs
def test_below_threshold_nothing_happens_and_a_held_lock_means_busy(env):
    settings, store = env
    fill_store_with_edits(store, 3)
    r = S.run_once(settings, store=store)
    assert r["status"] == "skipped" and r["new_events"] == 3 and "3/10" in r["reason"]
    with S.run_lock(settings) as mine:
        assert mine
        assert S.run_once(settings, store=store, force=True)["status"] == "busy"
    assert Registry(settings).versions() == []


@pytest.mark.slow
def test_a_run_trains_evaluates_registers_and_promotes(env):
    settings, store = env
    fill_store_with_edits(store, 24)
    swapped = []
    r = S.run_once(settings, store=store, on_promote=lambda v, folder: swapped.append((v, folder)), **FAST)
    assert r["status"] == "promoted", r
    reg = Registry(settings)
    v = r["version"]
    assert v == "v0001-sft" and reg.active() == v and swapped == [(v, str(reg.folder(v)))]
    meta = reg.get(v)
    assert meta["state"] == "active" and meta["gate"]["promote"] is True
    assert meta["dataset"]["format"].startswith("kaizen-datasets") and meta["rows"]["sft"] > 0
    assert meta["eval"]["candidate"]["pref"]["accuracy"] > meta["eval"]["active"]["pref"]["accuracy"]
    assert meta["metrics"]["steps"] == 10 and meta["recipe"]["lr"] == 5e-3
    assert (reg.folder(v) / "metrics.jsonl").exists() and (reg.folder(v) / "train.log").exists()
    assert not list(reg.root.glob(".tmp-*"))
    assert S.run_once(settings, store=store)["status"] == "skipped"  # nothing new since
    assert S.read_state(settings)["last_version"] == v


@pytest.mark.slow
def test_a_killed_training_run_leaves_the_active_adapter_untouched(env, adapter_version):
    settings, store, active = adapter_version(env)
    reg = Registry(settings)
    before = (reg.versions(), reg.active(), (reg.root / "ACTIVE").read_text())
    pid = {}

    def kill_at_first_step(e):
        if e["event"] == "started":
            pid["pid"] = e["pid"]
        if e["event"] == "step" and "killed" not in pid:
            pid["killed"] = True
            os.kill(pid["pid"], signal.SIGKILL)

    r = S.run_once(settings, store=store, force=True, progress=kill_at_first_step, **FAST)
    assert pid.get("killed") and r["status"] == "failed" and "signal 9" in r["error"]
    assert (reg.versions(), reg.active(), (reg.root / "ACTIVE").read_text()) == before
    assert reg.get(active)["state"] == "active" and not list(reg.root.glob(".tmp-*"))
    assert S.read_state(settings)["last_status"] == "failed"


@pytest.mark.slow
def test_scheduler_thread_runs_on_trigger_and_stop_kills_a_run_in_progress(env, adapter_version):
    import threading

    settings, store, active = adapter_version(env)
    reg = Registry(settings)
    promoted, training = [], threading.Event()
    slow = {**FAST, "recipe": recipe_for("sft", steps=500, batch_size=2, max_length=128)}
    sched = S.Scheduler(settings, on_promote=lambda v, f: promoted.append(v), store=store, interval_s=3600,
                        on_progress=lambda e: training.set() if e["event"] == "step" else None, **slow)
    sched.start()
    deadline = time.time() + 60
    while sched.status["last"] is None and time.time() < deadline:  # the first check: nothing new -> skipped
        time.sleep(0.1)
    assert sched.status["last"]["status"] == "skipped"
    assert sched.trigger("sft")
    assert training.wait(300)
    assert sched.status["running"] and not sched.trigger()  # one run at a time
    sched.stop(timeout=60)
    assert not sched.status["alive"]
    assert sched.status["last"]["status"] == "failed" and "stopped" in sched.status["last"]["error"]
    assert reg.active() == active and len(reg.versions()) == 1 and promoted == []
    assert not list(reg.root.glob(".tmp-*"))


@pytest.fixture
def adapter_version(base):
    """A registry with one active version (registered directly, no training) for the runs to leave alone."""
    def make(env):
        import shutil

        from tests.train_support import random_lora

        settings, store = env
        fill_store_with_edits(store, 12)
        S._save_state(settings, {"last_run": S.now_iso()})  # as if a run just saw them: nothing new after this
        root = settings.data_dir / "prep"
        reg = Registry(settings)
        v = reg.promote(reg.register(random_lora(base, root / "out"), {"method": "sft"}))
        shutil.rmtree(root)
        return settings, store, v
    return make


def test_automatic_runs_try_the_next_method_in_order():
    assert S.auto_methods({"sft": 10, "dpo": 10, "kto": 10}) == ["sft", "dpo", "kto"]
    assert S.auto_methods({"sft": 84, "dpo": 129, "kto": 70}) == ["dpo", "sft", "kto"]  # mostly picks and votes
    assert S.auto_methods({"sft": 2, "dpo": 10, "kto": 10}) == ["dpo", "kto"]
    assert S.auto_methods({"sft": 3}) == []


@pytest.mark.slow
def test_a_refused_sft_candidate_is_followed_by_a_dpo_attempt(env):
    """A margin nothing can reach: the SFT candidate is refused, DPO is tried next and refused too; both are
    registered (retired), the active version is unchanged, and the result lists both attempts."""
    settings, store = env
    fill_store_with_edits(store, 24)
    r = S.run_once(settings, store=store, **{**FAST, "margin": 5.0})
    assert r["status"] == "refused" and [a["method"] for a in r["attempts"]] == ["sft", "dpo"], r
    reg = Registry(settings)
    assert [a["version"] for a in r["attempts"]] == ["v0001-sft", "v0002-dpo"] == reg.versions()
    assert all(reg.get(v)["state"] == "retired" for v in reg.versions()) and reg.active() is None
    assert r["version"] == "v0002-dpo" and r["method"] == "dpo" and not list(reg.root.glob(".tmp-*"))
