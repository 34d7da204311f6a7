"""Parity: does the GGUF LoRA that llama.cpp serves reproduce the peft adapter that passed the gate?

A promotion measures it out of process (`measure_apart`, `python -m adapters.parity`), like training and evaluation:
llama.cpp's C code cannot take the app down with it, a hung check times out, and the child runs at the background
priority, so the chat does not crawl while a version is promoted.

Both read the same answers teacher-forced (the transformers fp32 + peft reference answers a few fixed prompts
greedily; then each model scores every answer token given the prompt and the answer so far). Figures: top-1
agreement and mean KL(reference || llama.cpp) over the answer positions. Measured on the default model (Q4_1 base +
f16 LoRA vs fp32 + peft): top-1 96-99%, KL 0.002-0.004; the floors leave room for the Q4_1 base's own rounding.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adapters.regression import GENERAL, OPEN
from agent.settings import Settings


@dataclass(frozen=True)
class Floors:
    top1: float = 0.90  # at least this share of answer tokens has the same most likely next token
    kl: float = 0.05  # mean KL(reference || served) per answer token, in nats, at most


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def compare(reference: np.ndarray, served: np.ndarray) -> dict:
    """Top-1 agreement and mean KL(reference || served) between two [positions, vocab] logit arrays. Pure."""
    if reference.shape != served.shape:
        raise ValueError(f"logit shapes differ: {reference.shape} vs {served.shape}")
    p, q = log_softmax(reference.astype(np.float64)), log_softmax(served.astype(np.float64))
    kl = (np.exp(p) * (p - q)).sum(axis=-1)
    return {"positions": int(reference.shape[0]),
            "top1": float((reference.argmax(-1) == served.argmax(-1)).mean()),
            "kl": float(kl.mean()), "kl_max": float(kl.max())}


def verdict(figures: dict, floors: Floors = Floors()) -> tuple[bool, list[str]]:
    """(passes, reasons in words). Pure."""
    ok = figures["top1"] >= floors.top1 and figures["kl"] <= floors.kl
    reasons = []
    if figures["top1"] < floors.top1:
        reasons.append(f"llama.cpp parity: top-1 agreement {figures['top1']:.0%} < {floors.top1:.0%} with the "
                       "peft adapter")
    if figures["kl"] > floors.kl:
        reasons.append(f"llama.cpp parity: mean KL {figures['kl']:.4f} > {floors.kl} against the peft adapter")
    if not reasons:
        reasons.append(f"llama.cpp parity: top-1 {figures['top1']:.0%}, mean KL {figures['kl']:.4f} over "
                       f"{figures['positions']} answer tokens")
    return ok, reasons


def prompts(n: int = 6) -> list[str]:
    return [p for p, _, _ in GENERAL[: n // 2]] + OPEN[: n - n // 2]


def measure(base_folder: Path, adapter_folder: Path, gguf_base: Path, gguf_lora: Path, *, n_prompts: int = 6,
            new_tokens: int = 32, threads: int = 2) -> dict:
    """Teacher-forced figures of the served GGUF LoRA against the peft adapter (both on CPU)."""
    import llama_cpp
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(base_folder)
    model = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(adapter_folder)).eval()
    llm = llama_cpp.Llama(str(gguf_base), lora_path=str(gguf_lora), logits_all=True, n_ctx=1024, n_threads=threads,
                          n_threads_batch=threads, verbose=False)
    refs, served = [], []
    try:
        for prompt in prompts(n_prompts):
            ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True)["input_ids"]
            with torch.inference_mode():
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                     do_sample=False, pad_token_id=tok.pad_token_id or tok.eos_token_id)
                full = out[0].tolist()
                logits = model(input_ids=out).logits[0].float().numpy()
            start, end = ids.shape[1] - 1, len(full) - 1  # positions that predict the answer's tokens
            if end <= start:
                continue
            llm.reset()
            llm.eval(full)
            refs.append(logits[start:end])
            served.append(np.array(llm.scores[start:end], dtype=np.float32))
    finally:
        llm.close()
    return compare(np.concatenate(refs), np.concatenate(served))


def measure_apart(settings: Settings, base_folder: Path, adapter_folder: Path, gguf_base: Path, gguf_lora: Path,
                  log_path: Path, timeout: float = 900) -> dict:
    """`measure` in a child process at the background priority (adapters.train.run_module). Raises
    adapters.train.TrainingError when the child fails, is killed or runs past `timeout` seconds."""
    from adapters.train import run_module

    argv = ["--base", str(base_folder), "--adapter", str(adapter_folder), "--gguf-base", str(gguf_base),
            "--gguf-lora", str(gguf_lora), "--threads", str(settings.threads)]
    return run_module("adapters.parity", argv, settings, Path(log_path), timeout=timeout)["figures"]


def main(argv: list[str] | None = None) -> int:
    from adapters.train import emit

    p = argparse.ArgumentParser(prog="python -m adapters.parity",
                                description="Teacher-forced parity of a GGUF LoRA with its peft adapter (JSON).")
    p.add_argument("--base", required=True, help="the base model's folder (transformers)")
    p.add_argument("--adapter", required=True, help="the peft adapter's folder")
    p.add_argument("--gguf-base", required=True, help="the GGUF base llama.cpp serves")
    p.add_argument("--gguf-lora", required=True, help="the adapter's GGUF LoRA")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    figures = measure(Path(args.base), Path(args.adapter), Path(args.gguf_base), Path(args.gguf_lora),
                      threads=args.threads)
    emit({"event": "done", "figures": figures})
    return 0


if __name__ == "__main__":
    sys.exit(main())
