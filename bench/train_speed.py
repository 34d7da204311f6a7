"""SFT LoRA training speed: the project's trainer set-up vs TRL's SFTTrainer with default settings.

Same model (the bundled SmolLM2-135M, or --base), same LoRA config, same rows (real oasst first turns, rows
longer than --max-length left out so nothing is truncated differently), one epoch each, interleaved rounds with
the order alternated; tokens/s counts real tokens (padding excluded). Prints JSON; --out also writes it.

    python bench/train_speed.py [--rows 16] [--rounds 2] [--max-length 384] [--threads 2] [--out FILE]

TRL defaults (SFTConfig(output_dir), plus use_cpu on a machine without a GPU, which TRL's bf16 default requires):
gradient checkpointing on, bf16 autocast, batch 8 padded to the longest row, loss on every token. The project (adapters.train.trainer_args with recipes/sft.yaml): no gradient
checkpointing, best-fit packing of rows into `max_length` (no padding computed), loss on the answer, fp32 weights
with bf16 autocast on CPUs with native bf16 (KAIZEN_TRAIN_PRECISION; `kaizen_fp32` measures it without).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.settings import Settings  # noqa: E402  (sets the offline environment first)

SHARED = ROOT.parent / "shared" / "data" / "oasst_en_100" / "en_100_tree.jsonl"


def oasst_rows(tok, limit: int, max_length: int) -> list[dict]:
    """SFT rows (prompt + best reply) from the oasst trees, each at most max_length tokens."""
    rows = []
    for line in SHARED.read_text(encoding="utf-8").splitlines():
        t = json.loads(line)["prompt"]
        replies = [r for r in t.get("replies") or [] if r.get("text")]
        if not replies:
            continue
        best = min(replies, key=lambda r: r["rank"] if isinstance(r.get("rank"), int) else 99)
        msgs = [{"role": "user", "content": t["text"]}, {"role": "assistant", "content": best["text"]}]
        n = len(tok.apply_chat_template(msgs, tokenize=True, return_dict=False))
        if n <= max_length:
            rows.append({"messages": msgs, "n_tokens": n})
        if len(rows) == limit:
            break
    return rows


def padded_tokens(lengths: list[int], batch: int) -> int:
    """Tokens computed by a padded sequential batching (pad to the longest of each batch)."""
    return sum(max(lengths[i:i + batch]) * len(lengths[i:i + batch]) for i in range(0, len(lengths), batch))


def run_one(kind: str, base: str, tok, rows: list[dict], recipe, work: Path, threads: int, precision: str) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from adapters.train import lora_config, trainer_args, training_rows, use_bf16

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="sdpa")
    out = work / kind
    shutil.rmtree(out, ignore_errors=True)
    if kind == "trl_default":
        # TRL's defaults; use_cpu is required on a machine without a GPU (bf16 on CPU is refused otherwise)
        args = SFTConfig(output_dir=str(out), report_to=[], save_strategy="no", disable_tqdm=True, num_train_epochs=1,
                         learning_rate=recipe.lr, use_cpu=not torch.cuda.is_available())
        data = Dataset.from_list([{"messages": r["messages"]} for r in rows])
    else:
        bf16 = use_bf16("cpu", "fp32" if kind == "kaizen_fp32" else precision)
        args = trainer_args("sft", recipe, out, "cpu", len(rows), bf16=bf16)
        args.num_train_epochs, args.max_steps = 1, -1
        data = Dataset.from_list(training_rows("sft", rows))
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok,
                         peft_config=lora_config(recipe))
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    tokens = sum(r["n_tokens"] for r in rows)
    return {"seconds": round(seconds, 2), "tokens": tokens, "tokens_per_s": round(tokens / seconds, 2),
            "steps": trainer.state.global_step, "gradient_checkpointing": bool(args.gradient_checkpointing),
            "bf16": bool(args.bf16), "packing": bool(getattr(args, "packing", False)),
            "batch_size": args.per_device_train_batch_size, "max_length": args.max_length}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max-length", type=int, default=384)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", default="kaizen,trl_default",
                   help="comma list of kaizen, trl_default, kaizen_fp32 (the project's set-up without bf16 autocast)")
    p.add_argument("--base", help="base model folder (default: the bundled SmolLM2-135M, converted once)")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)
    if not SHARED.exists():
        print(json.dumps({"error": f"{SHARED} not found (../shared/data)"}))
        return 1
    import datasets
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from adapters.train import cpu_has_bf16, recipe_for
    from agent.model import resolve_base

    datasets.disable_progress_bars()
    hf_logging.set_verbosity_error()
    settings = Settings.from_env(threads=args.threads)
    base = args.base or resolve_base(settings.base_model, settings.models_dir)
    tok = AutoTokenizer.from_pretrained(base)
    rows = oasst_rows(tok, args.rows, args.max_length)
    recipe = recipe_for("sft", max_length=args.max_length)
    lengths = [r["n_tokens"] for r in rows]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not {"kaizen", "trl_default"} <= set(variants) or set(variants) - {"kaizen", "trl_default", "kaizen_fp32"}:
        p.error("--variants: kaizen and trl_default, optionally kaizen_fp32")
    results: dict[str, list[dict]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="train-speed-") as tmp:
        for i in range(args.rounds):
            order = variants if i % 2 == 0 else variants[::-1]
            for kind in order:
                r = run_one(kind, base, tok, rows, recipe, Path(tmp), args.threads, settings.train_precision)
                results[kind].append(r)
                print(f"round {i + 1} {kind}: {r['tokens_per_s']} tok/s ({r['seconds']} s)", file=sys.stderr,
                      flush=True)
    med = {k: statistics.median(r["tokens_per_s"] for r in v) for k, v in results.items()}
    report = {
        "bench": "train_speed", "model": str(base), "rows": len(rows), "tokens_per_epoch": sum(lengths),
        "row_tokens": {"min": min(lengths), "median": statistics.median(lengths), "max": max(lengths)},
        "trl_default_padding_share": round(1 - sum(lengths) / padded_tokens(lengths, 8), 3),
        "threads": args.threads, "rounds": args.rounds, "cpu_native_bf16": cpu_has_bf16(),
        "median_tokens_per_s": med, "ratio": round(med["kaizen"] / med["trl_default"], 2), "goal_ratio": 1.5,
        "runs": results,
        "config": {k: {a: b for a, b in v[0].items() if a not in ("seconds", "tokens", "tokens_per_s")}
                   for k, v in results.items()},
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
