"""A deliberately collapsed adapter, trained by the real loop on the real default model, is refused by the gate
with reasons a person understands, and the active version stays served.

The scripted users "correct" every answer into one fixed line, so the candidate learns to emit that line whatever
is asked. On its own held-out feedback it looks excellent (it reproduces the edits, and prefers them in every
pair); only the checks of whether it still answers can see what it has become."""
from __future__ import annotations

import json

import pytest

from lab.tasks import oasst_first_turns, style_events
from adapters.registry import Registry
from adapters.scheduler import run_once
from adapters.train import recipe_for
from agent.settings import Settings
from feedback.store import Store

pytestmark = pytest.mark.slow
FIXED = "Thank you for contacting Kaizen support. Your request has been logged and we will reply soon."


def identity_lora(settings: Settings, folder) -> None:
    """A real LoRA adapter whose B matrices are zero (peft's initialisation): it serves exactly the base."""
    from peft import LoraConfig, get_peft_model

    from agent.model import load_base

    model, _, _ = load_base(settings)
    get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")).save_pretrained(folder)


def test_a_collapsed_candidate_is_refused_and_the_active_version_stays(shared_data, base_model_dir, tmp_path):
    settings = Settings(data_dir=tmp_path / "data", base_model=str(base_model_dir))
    reg = Registry(settings)
    identity_lora(settings, tmp_path / "identity")
    active = reg.promote(reg.register(tmp_path / "identity", {"method": "sft"}))

    trees = [json.loads(line) for line in (shared_data / "oasst_en_100" / "en_100_tree.jsonl").open()]
    store = Store.from_settings(settings)
    try:
        assert style_events(store, oasst_first_turns(trees)[:40], edit=lambda answer: FIXED) == 40
    finally:
        store.close()

    result = run_once(settings, force=True, method="sft", recipe=recipe_for("sft", lr=2e-3, epochs=3),
                      timeout=3600)
    assert result["status"] == "refused", result
    reasons = result["gate"]["reasons"]
    text = "\n".join(reasons)
    print(text)
    assert "collapse:" in text and "same answer to different questions" in text
    # it won on its own metrics: only the answer checks stand between it and the users
    assert "similarity to edits" in text and ": better" in text
    candidate = result["version"]
    assert reg.active() == active and reg.serving() == active
    meta = reg.get(candidate)
    assert meta["state"] == "retired" and meta["gate"]["promote"] is False
    examples = meta["eval"]["candidate"]["examples"]
    assert sum(e["answer"].startswith("Thank you for contacting Kaizen support") for e in examples) \
        >= len(examples) // 2, examples
