"""RegistryWatcher, the one owner of what the model serves: a promote, pin or A/B test written to the registry is
applied by its thread; stop() ends the thread; one watcher (one kaizen-registry-sync thread) per model, also over
two build_app calls, and closing the app stops it. The model is a fake that records what the watcher does to it
(the real-model swaps are tested in test_registry.py and test_ab.py)."""
from __future__ import annotations

import json
import threading
import time

import pytest
import torch
from safetensors.torch import save_file

from adapters import ab
from adapters.registry import Registry
from adapters.watcher import THREAD_NAME, RegistryWatcher
from agent.settings import Settings


class RecordingModel:
    """The part of agent/engine.py's interface the watcher uses, recording each call."""

    def __init__(self):
        self.adapters: dict[str, str] = {}
        self.active: str | None = None
        self.calls: list[tuple[str, str | None]] = []

    def add_adapter(self, name, folder) -> None:
        self.calls.append(("add", name))
        self.adapters[name] = str(folder)

    def use(self, name) -> None:
        self.calls.append(("use", name))
        self.active = name


def lora_folder(path):
    """A minimal valid LoRA folder (what the registry checks: config, finite safetensors weights)."""
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 1}))
    save_file({"w": torch.zeros(2, 2)}, str(path / "adapter_model.safetensors"))
    return path


def fast_settings(tmp_path) -> Settings:
    """A base known by name only (its fingerprint is its id), served by transformers (no GGUF conversion)."""
    return Settings(data_dir=tmp_path / "data", base_model="kaizen-test/no-such-base", engine="transformers")


@pytest.fixture
def reg(tmp_path):
    return Registry(fast_settings(tmp_path))


def until(check, timeout=5.0):
    deadline = time.time() + timeout
    while not check() and time.time() < deadline:
        time.sleep(0.02)
    return check()


def sync_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


def test_a_promote_pin_and_ab_test_written_to_the_registry_are_applied_and_stop_ends_the_thread(reg, tmp_path):
    v1 = reg.register(lora_folder(tmp_path / "a1"), {"method": "sft"})
    v2 = reg.register(lora_folder(tmp_path / "a2"), {"method": "sft"})
    model, ab_state = RecordingModel(), {}
    watcher = RegistryWatcher(reg, model, ab_state, interval_s=0.05).start()
    assert watcher.alive and model.active is None and ab_state.get("experiment") is None
    reg.promote(v1)  # only the registry is written, as the scheduler and the Adapters tab do
    assert until(lambda: model.active == v1)
    assert model.calls == [("add", v1), ("use", v1)]
    ab.start(reg, v2, 0.5)
    assert until(lambda: (ab_state.get("experiment") or {}).get("version") == v2)
    assert v2 in model.adapters and model.active == v1  # attached for its arm, the served version unchanged
    reg.pin("base")
    assert until(lambda: model.active is None)
    watcher.stop()
    assert not watcher.alive and watcher._thread not in sync_threads()
    reg.pin(None)
    time.sleep(0.2)
    assert model.active is None  # stopped: nothing polls any more
    assert watcher.sync_now() == v1 and model.active == v1  # sync_now applies at once, thread or not


def test_a_version_that_fails_validation_keeps_what_was_served(reg, tmp_path):
    v1 = reg.promote(reg.register(lora_folder(tmp_path / "a1"), {"method": "sft"}))
    v2 = reg.register(lora_folder(tmp_path / "a2"), {"method": "sft"})
    model = RecordingModel()
    watcher = RegistryWatcher(reg, model, interval_s=0.05).start()
    try:
        assert model.active == v1
        (reg.root / v2 / "adapter_model.safetensors").write_bytes(b"garbage")
        (reg.root / "PIN").write_text(v2 + "\n")  # as another process could leave it
        assert until(lambda: watcher.last_error is not None)
        assert model.active == v1 and v2 not in model.adapters and watcher.alive
        with pytest.raises(ValueError, match="safetensors"):
            watcher.sync_now()
    finally:
        watcher.stop()


def test_one_watcher_thread_per_model(reg):
    model, before = RecordingModel(), len(sync_threads())
    first = RegistryWatcher(reg, model, interval_s=0.05).start()
    second = RegistryWatcher(reg, model, interval_s=0.05).start()
    assert not first.alive and second.alive and len(sync_threads()) == before + 1
    second.stop()
    assert len(sync_threads()) == before


def test_two_build_app_calls_leave_one_watcher_and_closing_the_app_stops_it(tmp_path):
    from agent.chat import Answerer
    from app import build_app
    from feedback.store import Store
    from tests.api_fakes import FakeEngine

    settings = fast_settings(tmp_path)
    store = Store.from_settings(settings)
    answerer = Answerer(FakeEngine(), settings)
    before = len(sync_threads())
    try:
        first = build_app(settings, answerer=answerer, store=store)
        second = build_app(settings, answerer=answerer, store=store)
        assert not first.kaizen_watcher.alive and second.kaizen_watcher.alive
        assert len(sync_threads()) == before + 1
        assert second.kaizen_api.watcher is second.kaizen_watcher  # the API attaches through it too
        second.close()
        assert not second.kaizen_watcher.alive and len(sync_threads()) == before
    finally:
        store.close()
