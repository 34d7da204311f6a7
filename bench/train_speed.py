"""SFT LoRA training speed: the project's trainer set-up vs TRL's SFTTrainer with default settings.

Same model (the bundled SmolLM2-135M, or --base), same LoRA config, same rows (real oasst first turns; rows longer
than --max-length are left out so nothing is truncated differently), the same number of epochs. Both trainers run
their real `trainer.train()` in one process, interleaved step by step (a turnstile lets one optimizer step run at a
time, always the set-up that is further behind), so load from other processes hits both alike. A step's time runs
from `on_step_begin` to `on_step_end` (forward, backward, optimizer). tokens/s counts real tokens (no padding).
Prints JSON; --out also writes it.

    python bench/train_speed.py [--rows 24] [--epochs 2] [--max-length 384] [--threads 2] [--out FILE]
    python bench/train_speed.py --loop-events 200     # the loop from threshold to promotion, timed by stage

TRL defaults (SFTConfig(output_dir), plus use_cpu on a machine without a GPU, which TRL's bf16 default requires):
gradient checkpointing on, bf16 autocast, batch 8 padded to the longest row, loss on every token. The project
(adapters.train.trainer_args with recipes/sft.yaml): no gradient checkpointing, best-fit packing of rows into
`max_length` (no padding computed), loss on the answer, fp32 weights with bf16 autocast on CPUs with native bf16
(KAIZEN_TRAIN_PRECISION; the `kaizen_fp32` variant measures it without).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.offline import silence  # noqa: E402

silence()  # the offline, no-telemetry environment, before gradio and the model libraries load

from agent.settings import Settings  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "oasst_en_100" / "en_100_tree.jsonl"
VARIANTS = ("kaizen", "trl_default", "kaizen_fp32", "kaizen_nopack")


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
    """Tokens computed by sequential batches padded to their longest row."""
    return sum(max(lengths[i:i + batch]) * len(lengths[i:i + batch]) for i in range(0, len(lengths), batch))


class Turnstile:
    """One optimizer step at a time across trainers; the next step goes to the one least far along."""

    def __init__(self, names):
        self.cond = threading.Condition()
        self.frac = {n: 0.0 for n in names}
        self.done: set[str] = set()
        self.busy = False
        self.owner: str | None = None
        self.times: dict[str, list[float]] = {n: [] for n in names}
        self._t0 = 0.0

    def _next(self):
        live = [n for n in self.frac if n not in self.done]
        return min(live, key=lambda n: (self.frac[n], n)) if live else None

    def begin(self, name):
        with self.cond:
            self.cond.wait_for(lambda: not self.busy and self._next() == name)
            self.busy, self.owner = True, name
            self._t0 = time.perf_counter()

    def end(self, name, frac):
        with self.cond:
            self.times[name].append(time.perf_counter() - self._t0)
            self.frac[name] = frac
            self.busy, self.owner = False, None
            self.cond.notify_all()

    def finish(self, name):
        with self.cond:
            self.done.add(name)
            if self.owner == name:  # it failed inside a step
                self.busy, self.owner = False, None
            self.cond.notify_all()


def make_trainer(kind: str, base: str, tok, rows: list[dict], recipe, work: Path, epochs: int, precision: str,
                 gate: Turnstile):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from adapters.train import lora_config, trainer_args, training_rows, use_bf16

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="sdpa")
    if kind == "trl_default":
        args = SFTConfig(output_dir=str(work / kind), report_to=[], save_strategy="no", disable_tqdm=True,
                         num_train_epochs=epochs, learning_rate=recipe.lr, use_cpu=not torch.cuda.is_available())
        data = Dataset.from_list([{"messages": r["messages"]} for r in rows])
    else:
        bf16 = use_bf16("cpu", "fp32" if kind == "kaizen_fp32" else precision)
        if kind == "kaizen_nopack":
            import dataclasses

            recipe = dataclasses.replace(recipe, packing=False)
        args = trainer_args("sft", recipe, work / kind, "cpu", len(rows), bf16=bf16)
        args.num_train_epochs, args.max_steps = epochs, -1
        data = Dataset.from_list(training_rows("sft", rows))

    class Gate(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            gate.begin(kind)

        def on_step_end(self, a, state, control, **kw):
            gate.end(kind, state.global_step / max(state.max_steps, 1))

        def on_train_end(self, a, state, control, **kw):
            gate.finish(kind)

    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok,
                         peft_config=lora_config(recipe), callbacks=[Gate()])
    info = {"gradient_checkpointing": bool(args.gradient_checkpointing), "bf16_autocast": bool(args.bf16),
            "packing": bool(getattr(args, "packing", False)), "batch_size": args.per_device_train_batch_size,
            "max_length": args.max_length, "grad_accum": args.gradient_accumulation_steps,
            "completion_only_loss": bool(trainer.completion_only_loss)}
    return trainer, info


def loop_time(settings: Settings, events: int) -> dict:
    """Threshold to promotion: replay oasst trees as feedback through the Store until `events` events, then one
    `run_once` (datasets, training, evaluation, gate) with adapt_min_events = events. Times each stage."""
    import dataclasses

    from adapters.scheduler import run_once
    from feedback.replay import read_trees, replay_tree
    from feedback.store import Store

    settings = dataclasses.replace(settings, adapt_min_events=events)
    store = Store.from_settings(settings)
    from collections import Counter

    counts: Counter = Counter()
    for tree in read_trees(SHARED):
        if store.event_count() >= events:
            break
        replay_tree(store, tree, counts)
    n = store.event_count()
    marks: list[tuple[str, float]] = []
    t0 = time.perf_counter()

    def progress(e):
        if e.get("event") in ("datasets", "training", "evaluating", "promoted", "refused"):
            marks.append((e["event"], time.perf_counter() - t0))

    r = run_once(settings, store=store, progress=progress)
    total = time.perf_counter() - t0
    store.close()
    stages = []  # one entry per attempt: training start, evaluation start, gate decision
    for name, t in marks:
        if name == "training":
            stages.append({"train_start": t})
        elif stages and name == "evaluating":
            stages[-1]["eval_start"] = t
        elif stages and name in ("promoted", "refused"):
            stages[-1]["decided"] = t
    attempts = [{**a, "train_s": round(st.get("eval_start", total) - st["train_start"], 1),
                 "eval_s": round(st.get("decided", total) - st.get("eval_start", total), 1),
                 "decided_at_s": round(st.get("decided", total), 1)}
                for a, st in zip(r.get("attempts") or [{}] * len(stages), stages)]
    first_promotion = next((a["decided_at_s"] for a in attempts if a.get("status") == "promoted"), None)
    return {"events": n, "status": r["status"], "version": r.get("version"), "method": r.get("method"),
            "rows": r.get("rows"), "seconds": round(total, 1), "threshold_to_promotion_s": first_promotion,
            "attempts": attempts, "gate": r.get("gate"), "goal_s": 600, "error": r.get("error")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=24)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-length", type=int, default=384)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", default="kaizen,trl_default",
                   help="comma list of kaizen, trl_default, and the diagnostics kaizen_fp32 (the project's set-up "
                        "without bf16 autocast), kaizen_nopack (without packing)")
    p.add_argument("--base", help="base model folder (default: the bundled SmolLM2-135M, converted once)")
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--loop-events", type=int, default=0,
                   help="instead: time the loop from threshold to promotion for this many replayed oasst events "
                        "(a fresh data dir under /tmp; KAIZEN_* settings otherwise)")
    args = p.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not {"kaizen", "trl_default"} <= set(variants) or set(variants) - set(VARIANTS):
        p.error("--variants: kaizen and trl_default, optionally kaizen_fp32, kaizen_nopack")
    if not SHARED.exists():
        print(json.dumps({"error": f"{SHARED} not found (../shared/data)"}))
        return 1
    import datasets
    import torch
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from adapters.train import cpu_has_bf16, recipe_for
    from agent.model import resolve_base

    datasets.disable_progress_bars()
    hf_logging.set_verbosity_error()
    settings = Settings.from_env(threads=args.threads)
    if args.loop_events:
        with tempfile.TemporaryDirectory(prefix="loop-time-") as tmp:
            import dataclasses

            # the converted base model stays where it is; the feedback store and registry are fresh
            local = dataclasses.replace(settings, data_dir=Path(tmp),
                                        base_model=args.base or resolve_base(settings.base_model,
                                                                             settings.models_dir))
            report = {"bench": "loop_time", **loop_time(local, args.loop_events)}
        text = json.dumps(report, indent=2)
        print(text)
        if args.out:
            Path(args.out).write_text(text + "\n", encoding="utf-8")
        return 0 if report["status"] in ("promoted", "refused") else 1
    torch.set_num_threads(args.threads)
    base = args.base or resolve_base(settings.base_model, settings.models_dir)
    tok = AutoTokenizer.from_pretrained(base)
    rows = oasst_rows(tok, args.rows, args.max_length)
    recipe = recipe_for("sft", max_length=args.max_length)
    lengths = [r["n_tokens"] for r in rows]
    gate = Turnstile(variants)
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="train-speed-") as tmp:
        built = {v: make_trainer(v, base, tok, rows, recipe, Path(tmp), args.epochs, settings.train_precision, gate)
                 for v in variants}

        def run(v):
            try:
                built[v][0].train()
            except Exception as e:  # report, and let the other set-ups finish
                errors[v] = repr(e)
                gate.finish(v)

        threads = [threading.Thread(target=run, args=(v,)) for v in variants]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    tokens = sum(lengths) * args.epochs
    tps = {v: round(tokens / sum(gate.times[v]), 2) if gate.times[v] and v not in errors else None
           for v in variants}
    report = {
        "bench": "train_speed", "model": str(base), "rows": len(rows), "epochs": args.epochs,
        "real_tokens": tokens, "row_tokens": {"min": min(lengths), "median": statistics.median(lengths),
                                              "max": max(lengths)},
        "trl_default_padding_share": round(1 - sum(lengths) / padded_tokens(lengths, 8), 3),
        "threads": args.threads, "cpu_native_bf16": cpu_has_bf16(), "wall_s": round(wall, 1),
        "tokens_per_s": tps,
        "ratio": round(tps["kaizen"] / tps["trl_default"], 2) if tps["kaizen"] and tps["trl_default"] else None,
        "goal_ratio": 1.5,
        "steps": {v: len(gate.times[v]) for v in variants},
        "step_seconds": {v: {"sum": round(sum(gate.times[v]), 1),
                             "median": round(statistics.median(gate.times[v]), 2) if gate.times[v] else None}
                         for v in variants},
        "config": {v: built[v][1] for v in variants},
        "errors": errors,
    }
    if "kaizen_fp32" in tps and tps["kaizen_fp32"] and tps["trl_default"]:
        report["ratio_fp32"] = round(tps["kaizen_fp32"] / tps["trl_default"], 2)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
