"""Shared helpers for the adapters tests (imported by test_train*, test_registry*, test_gate*, test_scheduler*):
a tiny random Llama saved as a base-model folder with the real SmolLM2 tokenizer, hand-made rows in the TRL
schemas of feedback.datasets, and feedback events written through the real Store."""
from __future__ import annotations

import json
import random
from pathlib import Path

from agent.settings import Settings

WORDS = ("apple river stone cloud garden music paper window light engine forest bridge candle orbit violin "
         "harbor meadow pencil rocket lantern").split()


def save_tiny_base(folder: Path, tokenizer, seed: int = 0, hidden: int = 64) -> Path:
    """A tiny random LlamaForCausalLM (2 layers) + the real tokenizer, saved as safetensors in `folder`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=1024, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def random_lora(base: Path, out: Path, seed: int = 0) -> Path:
    """A LoRA adapter of `base` as training exports it (the trainer's LoRA config for the SFT recipe, saved by peft)
    but with random weights, without a training run: it changes the base's output as a trained adapter does, and
    registers and validates like one. For tests of what happens to adapters, not of how they are trained."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from adapters.train import recipe_for
    from adapters.trainers import lora_config

    torch.manual_seed(seed)
    config = lora_config(recipe_for("sft"))
    config.init_lora_weights = False  # A and B random: not the identity a fresh LoRA starts as
    get_peft_model(AutoModelForCausalLM.from_pretrained(base), config).save_pretrained(out)
    return out


def tiny_settings(data_dir: Path, base: Path, **kw) -> Settings:
    """Settings for a tiny random model: the transformers engine's plumbing (llama.cpp is tested on the real one)."""
    kw.setdefault("engine", "transformers")
    return Settings(data_dir=data_dir, base_model=str(base), threads=2, max_new_tokens=8, **kw)


def phrase(rng: random.Random, n: int) -> str:
    return " ".join(rng.sample(WORDS, n))


def sft_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"messages": [{"role": "user", "content": f"Tell me about the {phrase(rng, 3)}."},
                          {"role": "assistant", "content": f"Kaizen says: the {phrase(rng, 4)}."}],
             "source": [f"edit:{i}"]} for i in range(n)]


def dpo_rows(n: int, seed: int = 0, swap: bool = False) -> list[dict]:
    """Chosen answers say yes, rejected ones say no (swap=True: the other way round: a deliberately bad set)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        good = [{"role": "assistant", "content": f"Yes, gladly: {phrase(rng, 3)}."}]
        bad = [{"role": "assistant", "content": f"No. {phrase(rng, 3)}!"}]
        chosen, rejected = (bad, good) if swap else (good, bad)
        rows.append({"prompt": [{"role": "user", "content": f"Could you help with the {phrase(rng, 2)}?"}],
                     "chosen": chosen, "rejected": rejected, "source": [f"choice:{i}"]})
    return rows


def kto_rows(n: int, seed: int = 0) -> list[dict]:
    return [{"prompt": r["prompt"], "completion": r["chosen"] if i % 2 == 0 else r["rejected"],
             "label": i % 2 == 0, "source": r["source"]} for i, r in enumerate(dpo_rows(n, seed))]


def write_data(folder: Path, **files: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in files.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return folder


def fill_store_with_edits(store, n: int, users: int = 4, seed: int = 0) -> int:
    """Users ask, the assistant answers, the user edits the answer into the house style (`Kaizen says: ...`)."""
    rng = random.Random(seed)
    ids = [store.ensure_user(f"editor-{i}") for i in range(users)]
    for i in range(n):
        uid = ids[i % users]
        conv = store.new_conversation(uid)
        store.add_message(conv, "user", f"Tell me about the {phrase(rng, 4)}?", user_id=uid)
        mid = store.add_message(conv, "assistant", f"Well, {phrase(rng, 7)}.", user_id=uid)
        store.edit(mid, uid, f"Kaizen says: {phrase(rng, 6)}.")
    return n
