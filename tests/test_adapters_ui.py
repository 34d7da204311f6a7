"""The Adapters tab's pure parts and its handlers on a real registry (tiny random base + an untrained LoRA): progress
in words, "not enough data" in words, numeric curves, a per-session view of the registry, and promotion of a
version the gate refused only after a confirmation the server checks."""
from __future__ import annotations

import json

import gradio as gr
import pytest

from adapters import ab
from adapters import scheduler as S
from ui import adapters as ui
from adapters.registry import Registry
from tests.train_support import fill_store_with_edits, tiny_settings

INTERNAL = ("datasets", "training", "loaded", "started", "step", "log", "eval", "evaluating", "saving", "event")


# ---------------------------------------------------------------------------------------------- pure
def test_progress_shows_step_loss_and_time_left_never_event_names():
    p = None
    for t, e in [(0, {"event": "datasets", "new_events": 12}), (1, {"event": "training", "method": "sft"}),
                 (2, {"event": "started", "pid": 1, "module": "adapters.train"}),
                 (10, {"event": "loaded", "method": "sft"}), (12, {"event": "step", "step": 1, "max_steps": 20}),
                 (13, {"event": "log", "step": 1, "loss": 2.5, "max_steps": 20}),
                 (22, {"event": "step", "step": 6, "max_steps": 20}),
                 (22.1, {"event": "log", "step": 6, "loss": 1.25, "max_steps": 20})]:
        p = S.merge_progress(p, e, t)
        text = ui.progress_text(p, t)
        words = {w.strip(".,:;…·").lower() for w in text.split()}
        assert not words & {"started", "loaded", "log", "eval", "event"}, text
        if t == 0:
            assert text == "⏳ Building the training data (12 new feedback events)…"
        if t == 10:
            assert text == "⏳ Training SFT: loading the model…"
        if t == 12:  # one step seen: no rate yet
            assert text == "⏳ Training SFT: step 1/20 · estimating the time left…"
    # 5 steps in 10 s -> 14 steps left take 28 s; 0.1 s have passed since the last step
    assert ui.time_left(p, 22.1) == pytest.approx(27.9)
    assert ui.progress_text(p, 22.1) == "⏳ Training SFT: step 6/20 · loss 1.250 · about 28 s left"
    p = S.merge_progress(p, {"event": "evaluating", "against": "v0001-sft"}, 60)
    p = S.merge_progress(p, {"event": "eval", "stage": "candidate"}, 61)
    assert ui.progress_text(p, 61) == "⏳ Evaluating the new SFT version against v0001-sft: answering with the new version…"
    p = S.merge_progress(p, {"event": "training", "method": "dpo"}, 90)  # the next attempt starts afresh
    assert p["step"] is None and p["loss"] is None and ui.progress_text(p, 90) == "⏳ Training DPO: loading the model…"
    assert ui._duration(125) == "2 min 05 s" and ui._duration(7300) == "2 h 01 min"


def test_not_enough_data_is_said_in_words_per_method():
    counts = {"sft": 2, "sft_eval": 0, "dpo": 0, "dpo_eval": 0, "kto": 1, "kto_eval": 0}
    text = S.data_needs(counts)
    assert "{" not in text and "sft_eval" not in text
    assert "SFT needs at least 4 gold answers (corrected answers and 👍 answers); there are 2 gold answers." in text
    assert "DPO needs at least 4 preference pairs" in text and "there are none yet" in text
    assert "KTO needs at least 4 rated answers (👍 or 👎 on answers that were not corrected); there is 1 rated " \
           "answer." in text
    assert S.data_needs(counts, "dpo").startswith("Not enough feedback to train DPO: it needs at least one "
                                                  "preference pair")
    assert "there are 2 gold answers" in S.data_needs(counts, "full")


def test_a_forced_run_with_little_data_explains_what_each_method_needs(tmp_path):
    from feedback.store import Store

    settings = tiny_settings(tmp_path / "data", tmp_path / "no-model-needed")
    store = Store.from_settings(settings)
    try:
        fill_store_with_edits(store, 2)
        r = S.run_once(settings, store=store, force=True)
    finally:
        store.close()
    assert r["status"] == "skipped" and "{" not in r["reason"], r
    assert "SFT needs at least 4 gold answers" in r["reason"] and "there are 2 gold answers" in r["reason"]
    level, text = ui.outcome_text({**r, "finished": S.now_iso(), "manual": True})
    assert level == "warning" and text.startswith("Nothing was trained. Not enough feedback to train yet.")


def test_curves_are_numbers_even_when_written_as_strings(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(d) for d in [
        {"step": 1, "loss": 2.0}, {"step": "2", "loss": "1.5"}, {"step": 3, "loss": None}, {"step": 4, "loss": 10.25},
        {"step": 5, "loss": "nan"}, "not a dict", {"loss": 1.0}]) + "\nnot json\n")
    f = ui.curves_frame(tmp_path)
    assert list(f["step"]) == [1, 2, 4] and list(f["value"]) == [2.0, 1.5, 10.25]
    for frame in (f, ui.curves_frame(None)):
        data = gr.LinePlot(x="step", y="value", color="metric").postprocess(frame)
        assert data.datatypes == {"step": "quantitative", "value": "quantitative", "metric": "nominal"}


def test_outcome_notices():
    assert ui.outcome_text({"status": "promoted", "version": "v0002-sft", "method": "sft"}) == (
        "info", "Training finished: v0002-sft (SFT) passed the gate and is now active.")
    level, text = ui.outcome_text({"status": "refused", "version": "v0003-dpo", "method": "dpo",
                                   "reason": "preference accuracy 0.40 < active 0.50 + 0.05"})
    assert level == "warning" and "refused v0003-dpo (DPO)" in text and "0.40 < active" in text
    assert ui.outcome_text({"status": "failed", "error": "boom"})[1] == "The adaptation run failed: boom"


# ---------------------------------------------------------------------------------------------- on a registry
def untrained_lora(base, out):
    """A LoRA adapter of `base` as peft saves it before any training (registers and validates like a trained one)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                   LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def lora(tmp_path_factory, tiny_base):
    return untrained_lora(tiny_base, tmp_path_factory.mktemp("ui-lora") / "lora")


def register(reg, lora, tmp_path, promote: bool | None, name="x"):
    import shutil

    folder = shutil.copytree(lora, tmp_path / f"copy-{name}")
    gate = None if promote is None else {"promote": promote, "reasons": ["similarity 0.10 < active 0.30"]}
    return reg.register(folder, {"method": "sft", **({"gate": gate} if gate else {})})


def handler(demo, component, event="click"):
    fns = [f for f in demo.fns.values() if (component._id, event) in f.targets]
    assert len(fns) == 1
    return fns[0].fn


def test_signature_sees_changes_made_by_another_registry_object(tmp_path, tiny_base, lora):
    mine, theirs = (Registry(tiny_settings(tmp_path / "data", tiny_base)) for _ in range(2))
    before = ui.registry_signature(mine)
    v = register(theirs, lora, tmp_path, True)
    after = ui.registry_signature(mine)
    assert after != before and after[0][-1][0] == v
    for change in (lambda: theirs.promote(v), lambda: theirs.pin("base"), lambda: ab.start(theirs, v, 0.3),
                   lambda: theirs.update_meta(v, note="x")):
        change()
        assert ui.registry_signature(mine) != after
        after = ui.registry_signature(mine)
    assert ui.registry_signature(mine) == after  # nothing changed: the same signature


def test_a_refused_version_is_promoted_only_after_a_confirmation(tmp_path, tiny_base, lora):
    reg = Registry(tiny_settings(tmp_path / "data", tiny_base))
    good = reg.promote(register(reg, lora, tmp_path, True, "good"))
    bad = register(reg, lora, tmp_path, False, "bad")
    with pytest.raises(ui.NeedsConfirmation, match="The gate refused"):
        ui.promote_checked(reg, bad)
    assert reg.active() == good

    with gr.Blocks() as demo:
        parts = ui.build_adapters_tab(reg, None)
    promote, confirm = handler(demo, parts["promote"]), handler(demo, parts["confirm"])
    rollback = handler(demo, parts["rollback"])
    out = promote(bad, None)  # the Promote button: a question, no change
    row, question, button, pending = out[-4:]
    assert button["value"] == f"Yes, promote {bad}" and row["visible"] is True and "The gate refused" in question and f"Promote {bad} anyway?" in question
    assert pending == {**pending, "action": "promote", "version": bad} and reg.active() == good
    out = confirm(bad, None, None)  # the confirm endpoint called without having asked: refused, nothing done
    assert out[-1] is None and reg.active() == good
    stale = {**pending, "active": "v0099-sft"}  # asked when another version was active: refused
    assert confirm(bad, None, stale)[-1] is None and reg.active() == good
    out = confirm(bad, None, pending)
    assert reg.active() == bad and out[-4]["visible"] is False and out[-1] is None
    assert "passed" not in reg.get(bad)["gate"] and reg.get(good)["state"] == "retired"

    out = rollback(bad, None)  # a roll-back asks first too
    assert out[-1]["action"] == "rollback" and f"retire {bad} and make {good} active" in out[-3]
    assert reg.active() == bad
    confirm(bad, None, out[-1])
    assert reg.active() == good
    out = promote(good, None)  # the gate passed it: one click (it is active already: nothing to ask)
    assert out[-1] is None and reg.active() == good


def test_tick_refreshes_a_session_when_the_registry_changes_and_skips_otherwise(tmp_path, tiny_base, lora):
    reg = Registry(tiny_settings(tmp_path / "data", tiny_base))
    with gr.Blocks() as demo:
        parts = ui.build_adapters_tab(reg, None)
    tick = handler(demo, parts["timer"], "tick")
    first = tick(None, None)  # a fresh session: everything is filled
    seen = first[-1]
    assert first[0].startswith("**Serving:** base model") and seen["sig"] == ui.registry_signature(reg)
    again = tick(None, seen)
    assert all(isinstance(x, dict) and x.get("__type__") == "update" and len(x) == 1 for x in again[:-1])
    v = register(Registry(reg.settings), lora, tmp_path, True)  # another registry object (another process alike)
    out = tick(None, again[-1])
    assert v in list(out[2]["version"]) and out[3]["choices"] == [v] and out[3]["value"] == v
    other = tick(None, None)  # another session is its own: it gets the whole tab too
    assert v in list(other[2]["version"])
