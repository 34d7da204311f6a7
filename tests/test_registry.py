"""The registry: versions with metadata, safetensors-only validation (pickles, corrupted files, base mismatch
refused), atomic promotion, rollback, pin, serving glue, and the standard peft format of exported versions."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from adapters.registry import Registry, RegistryError, sync_model
from tests.train_support import random_lora, save_tiny_base, tiny_settings


@pytest.fixture(scope="session")
def other_base(tmp_path_factory, tokenizer):
    return save_tiny_base(tmp_path_factory.mktemp("other-base"), tokenizer, seed=1)


@pytest.fixture(scope="session")
def adapter(tmp_path_factory, tiny_base):
    """One LoRA adapter folder of the tiny base as training exports it (the trainer's own LoRA config for the SFT
    recipe, saved by peft), copied by each test that registers it. Its weights are random, not trained: they change
    the base's output as a trained adapter's do, and no training run is needed (training: tests/test_train.py)."""
    return random_lora(tiny_base, tmp_path_factory.mktemp("adapter") / "out")


@pytest.fixture
def reg(tmp_path, tiny_base):
    return Registry(tiny_settings(tmp_path / "data", tiny_base))


def copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_register_writes_meta_and_lists_versions(reg, adapter, tmp_path):
    v1 = reg.register(adapter, {"method": "sft", "metrics": {"final_loss": 1.0}, "recipe": {"lr": 1e-3}})
    v2 = reg.register(adapter, {"method": "dpo"})
    assert (v1, v2) == ("v0001-sft", "v0002-dpo") and reg.versions() == [v1, v2]
    meta = reg.get(v1)
    assert meta["state"] == "candidate" and meta["kind"] == "lora" and meta["metrics"] == {"final_loss": 1.0}
    assert meta["base_model"] == reg.settings.base_model and len(meta["base_hash"]) == 64
    assert set(meta["files"]) == {"adapter_model.safetensors"} and meta["created"]
    assert adapter.exists()  # a folder outside the registry is copied, not moved
    assert reg.active() is None and reg.serving() is None
    assert [r["version"] for r in reg.list()] == [v1, v2]
    assert not list(reg.root.glob(".tmp-*")) and not list(reg.root.rglob("*.tmp"))


def test_a_folder_inside_the_registry_is_moved_in(reg, adapter):
    tmp = reg.tmp_folder("run-sft")
    copy(adapter, tmp / "adapter")
    v = reg.register(tmp / "adapter", {"method": "sft"})
    assert not (tmp / "adapter").exists() and (reg.root / v / "adapter_model.safetensors").exists()
    assert reg.clean_tmp("run-") == 1 and not tmp.exists()


@pytest.mark.parametrize("name", ["extra.bin", "optimizer.pt", "rng_state.pth", "data.pkl", "last.ckpt",
                                  "nested/x.pickle"])
def test_a_pickle_capable_file_is_refused(reg, adapter, tmp_path, name):
    bad = copy(adapter, tmp_path / "bad")
    (bad / name).parent.mkdir(parents=True, exist_ok=True)
    (bad / name).write_bytes(b"\x80\x04K\x01.")  # a tiny pickle
    with pytest.raises(RegistryError, match="pickle-capable"):
        reg.register(bad)
    assert reg.versions() == []


def test_corrupted_safetensors_are_refused(reg, adapter, tmp_path):
    trunc = copy(adapter, tmp_path / "trunc")
    w = trunc / "adapter_model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    with pytest.raises(RegistryError, match="not a valid safetensors"):
        reg.register(trunc)
    garbage = copy(adapter, tmp_path / "garbage")
    (garbage / "adapter_model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(RegistryError, match="not a valid safetensors"):
        reg.register(garbage)
    empty = copy(adapter, tmp_path / "noweights")
    (empty / "adapter_model.safetensors").unlink()
    with pytest.raises(RegistryError, match="adapter_model.safetensors is missing"):
        reg.register(empty)
    nan = copy(adapter, tmp_path / "nan")
    from safetensors.torch import load_file, save_file

    tensors = load_file(nan / "adapter_model.safetensors")
    k = next(iter(tensors))
    tensors[k] = torch.full_like(tensors[k], float("nan"))
    save_file(tensors, nan / "adapter_model.safetensors")
    with pytest.raises(RegistryError, match="NaN"):
        reg.register(nan)
    assert reg.versions() == []


def test_weights_changed_after_registration_are_refused_and_serving_continues(reg, adapter):
    good = reg.promote(reg.register(adapter, {"method": "sft"}))
    bad = reg.register(adapter, {"method": "sft"})
    w = reg.root / bad / "adapter_model.safetensors"
    data = bytearray(w.read_bytes())
    data[-8:] = b"\x00\x00\x80\x3f" * 2  # same length, still parses: only the sha256 notices
    w.write_bytes(bytes(data))
    with pytest.raises(RegistryError, match="sha256 mismatch"):
        reg.promote(bad)
    with pytest.raises(RegistryError, match="sha256 mismatch"):
        reg.pin(bad)
    assert reg.active() == good and reg.serving() == good and reg.get(good)["state"] == "active"


def test_a_version_for_another_base_is_refused(tmp_path, tiny_base, other_base, adapter):
    reg_a = Registry(tiny_settings(tmp_path / "data", tiny_base))
    v = reg_a.register(adapter, {"method": "sft"})
    reg_b = Registry(tiny_settings(tmp_path / "data", other_base))  # same folder, the serving base changed
    with pytest.raises(RegistryError, match="built for base model"):
        reg_b.promote(v)
    with pytest.raises(RegistryError, match="built for base model"):
        reg_b.register(adapter, {"base_model": "x", "base_hash": reg_a.fingerprint()["base_hash"]})
    assert reg_b.active() is None
    assert reg_a.fingerprint()["base_hash"] != reg_b.fingerprint()["base_hash"]


def test_promote_rollback_and_history(reg, adapter):
    v1, v2, v3 = (reg.register(adapter, {"method": "sft"}) for _ in range(3))
    reg.promote(v1)
    reg.promote(v2)
    reg.promote(v3)
    assert reg.active() == v3 and reg.history() == [v1, v2]
    assert [reg.get(v)["state"] for v in (v1, v2, v3)] == ["retired", "retired", "active"]
    assert (reg.root / "ACTIVE").read_text().strip() == v3
    assert reg.rollback() == v2 and reg.active() == v2
    assert reg.get(v3)["state"] == "retired" and reg.get(v2)["state"] == "active"
    assert reg.rollback() == v1
    assert reg.rollback() is None and reg.active() is None and reg.serving() is None  # back to the base
    assert reg.rollback() is None
    with pytest.raises(RegistryError, match="unknown version"):
        reg.promote("v0099-sft")
    with pytest.raises(RegistryError, match="not a version name"):
        reg.promote("../etc")


def test_rollback_skips_a_broken_previous_version(reg, adapter):
    v1, v2 = reg.register(adapter, {"method": "sft"}), reg.register(adapter, {"method": "sft"})
    reg.promote(v1)
    reg.promote(v2)
    (reg.root / v1 / "adapter_model.safetensors").write_bytes(b"broken")
    assert reg.rollback() is None and reg.active() is None


def test_pin_overrides_what_is_active(reg, adapter):
    v1, v2 = reg.register(adapter, {"method": "sft"}), reg.register(adapter, {"method": "sft"})
    reg.promote(v1)
    assert reg.pin(v2) == v2 and reg.serving() == v2 and reg.active() == v1
    assert reg.pin("base") is None and reg.serving() is None and reg.pinned() == "base"
    reg.promote(v2)  # a promotion does not move a pin
    assert reg.serving() is None
    assert reg.pin(None) == v2 and reg.pinned() is None
    flags = {r["version"]: (r["serving"], r["pinned"]) for r in reg.list()}
    assert flags == {v1: (False, False), v2: (True, False)}


def test_exported_version_loads_with_plain_peft(reg, adapter, tiny_base):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    v = reg.promote(reg.register(adapter, {"method": "sft"}))
    folder = reg.get(v)["folder"]
    base = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    ids = torch.tensor([[1, 400, 500, 600]])
    plain = base(input_ids=ids).logits
    model = PeftModel.from_pretrained(base, folder).eval()
    assert not torch.allclose(model(input_ids=ids).logits, plain)
    cfg = json.loads((reg.root / v / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 16


def test_sync_model_hot_swaps_the_chat_model_and_refuses_broken_versions(reg, adapter, tiny_base):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agent.model import ChatModel

    chat = ChatModel(AutoModelForCausalLM.from_pretrained(tiny_base).eval(), AutoTokenizer.from_pretrained(tiny_base))
    assert sync_model(reg, chat) is None and chat.active is None
    v1 = reg.promote(reg.register(adapter, {"method": "sft"}))
    assert sync_model(reg, chat) == v1 and chat.active == v1 and v1 in chat.adapters
    v2 = reg.register(adapter, {"method": "sft"})
    (reg.root / v2 / "extra.bin").write_bytes(b"x")
    (reg.root / "PIN").write_text(v2)  # as if pinned by hand, bypassing validation
    with pytest.raises(RegistryError, match="pickle-capable"):
        sync_model(reg, chat)
    assert chat.active == v1 and v2 not in chat.adapters  # serving continues
    reg.pin("base")
    assert sync_model(reg, chat) is None and chat.active is None


@pytest.mark.slow
def test_promotion_is_atomic_for_concurrent_readers(reg, adapter, tmp_path):
    """Two processes promote back and forth while this one reads: every read sees a complete pointer and
    parseable metadata, and afterwards exactly one version is active."""
    v1, v2 = reg.register(adapter, {"method": "sft"}), reg.register(adapter, {"method": "sft"})
    script = textwrap.dedent(f"""
        import sys
        from adapters.registry import Registry
        from agent.settings import Settings
        reg = Registry(Settings(data_dir={str(reg.settings.data_dir)!r}, base_model={reg.settings.base_model!r}))
        for i in range(15):
            reg.promote(sys.argv[1] if i % 2 == 0 else sys.argv[2])
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, a, b]) for a, b in ((v1, v2), (v2, v1))]
    seen = set()
    while any(p.poll() is None for p in procs):
        seen.add(reg.active())
        for v in (v1, v2):
            assert reg.get(v)["state"] in ("candidate", "active", "retired")
    assert all(p.wait() == 0 for p in procs)
    assert seen <= {None, v1, v2}
    states = [reg.get(v)["state"] for v in (v1, v2)]
    assert states.count("active") == 1 and reg.get(reg.active())["state"] == "active"
    assert not list(reg.root.glob(".*.tmp"))


def test_full_model_versions_register_but_are_not_hot_swapped(reg, tiny_base, tmp_path):
    full = tmp_path / "full"
    shutil.copytree(tiny_base, full)
    v = reg.promote(reg.register(full, {"method": "full"}))
    assert reg.get(v)["kind"] == "full" and "model.safetensors" in reg.get(v)["files"]

    class Model:  # sync_model refuses before touching the model
        adapters: dict = {}

    with pytest.raises(RegistryError, match="full model"):
        sync_model(reg, Model())


def test_cli_list_promote_rollback_pin(reg, adapter, monkeypatch, capsys):
    from cli.main import main

    monkeypatch.setenv("KAIZEN_DATA_DIR", str(reg.settings.data_dir))
    monkeypatch.setenv("KAIZEN_BASE_MODEL", reg.settings.base_model)
    v1 = reg.register(adapter, {"method": "sft", "metrics": {"rows": 8, "final_loss": 0.5}})
    assert main(["adapters", "promote", v1]) == 0
    assert main(["adapters", "list"]) == 0
    out = capsys.readouterr().out
    assert f"* {v1}" in out and "active" in out
    assert main(["adapters", "pin", "base"]) == 0 and reg.serving() is None
    assert main(["adapters", "unpin"]) == 0 and reg.serving() == v1
    assert main(["adapters", "rollback"]) == 0 and reg.active() is None
    assert main(["adapters", "promote", "v0042-sft"]) == 2
    assert "unknown version" in capsys.readouterr().err
    assert main(["adapters", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["versions"][0]["version"] == v1
