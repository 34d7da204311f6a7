"""Chatting while the app learns: the llama.cpp engine's time to first token and decode speed while a real SFT LoRA
training run (`adapters.train` in its child process, started as the scheduler starts it) works on the same cores,
with the child at niceness +0, +10 and +19 (KAIZEN_BACKGROUND_NICE: 19 by default), against the chat with nothing
else running; and the training's seconds a step while the chat runs (when a step ends within the questions). One
run, the conditions interleaved round by round, medians. Prints JSON; --out also writes it.

    python bench/chat_while_training.py [--data-dir DIR] [--rounds 2] [--questions 6] [--new-tokens 64]
                                        [--nice 0,10,19] [--threads 2] [--out FILE]

The questions are real prompts of the lottery (its first 100), one at a time, each right after the last: the
busiest a single visitor can make the chat. Training rows: the oasst trees' first turns with their best replies.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chat_speed import engine_once, med, pct  # noqa: E402
from system_prompts import TREES, lottery_prompts  # noqa: E402

from agent.offline import silence  # noqa: E402

silence()  # the offline, no-telemetry environment, before gradio and the model libraries load

from agent.settings import Settings  # noqa: E402


def training_rows(limit: int = 48) -> list[dict]:
    from lab.tasks import oasst_first_turns

    trees = [json.loads(line) for line in TREES.read_text().splitlines() if line.strip()]
    return [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]}
            for p, a in oasst_first_turns(trees)[:limit]]


def chat_beside_args(doc: str, questions: int, nice: str) -> argparse.ArgumentParser:
    """The arguments of the benches that chat beside background work (this one, chat_while_ingesting.py)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--data-dir", help="the app's data dir (its converted model is reused)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--questions", type=int, default=questions)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--nice", default=nice, help="the background work's added niceness, each a condition")
    return ap


def condition(rows: list[dict], idle_ttft: float, idle_decode: float) -> dict:
    """One condition's answers: median and p95 first token, median decode, each against the idle chat's."""
    ttft, decode = med(rows, "ttft_s"), med(rows, "decode_tok_s")
    return {"ttft_s": ttft, "ttft_p95_s": pct([r["ttft_s"] for r in rows], 0.95), "decode_tok_s": decode,
            "answers": len(rows), "ttft_vs_idle": round(ttft / idle_ttft, 2),
            "decode_vs_idle": round(decode / idle_decode, 2)}


def chat(engine, questions: list[str], new_tokens: int) -> list[dict]:
    return [engine_once(engine, [{"role": "user", "content": q}], new_tokens) for q in questions]


def while_training(engine, settings: Settings, data: Path, work: Path, questions, new_tokens: int) -> dict:
    """The questions asked while a training child runs; its seconds a step meanwhile. The run is stopped after."""
    from adapters.train import TrainingError, recipe_for, run_training

    steps: list[float] = []
    started = threading.Event()
    stop = threading.Event()

    def progress(event: dict) -> None:
        if event.get("event") == "step":
            steps.append(time.perf_counter())
            if len(steps) >= 2:  # the model is loaded and a first step is behind it
                started.set()

    def train() -> None:
        try:
            run_training("sft", data, work, settings, recipe_for("sft", steps=10_000), progress=progress, stop=stop)
        except TrainingError:
            pass  # stopped
        finally:
            started.set()

    worker = threading.Thread(target=train, daemon=True)
    worker.start()
    started.wait(600)
    t0 = time.perf_counter()
    rows = chat(engine, questions, new_tokens)
    t1 = time.perf_counter()
    stop.set()
    worker.join(60)
    inside = [t for t in steps if t0 <= t <= t1]
    gaps = [b - a for a, b in zip(steps, steps[1:]) if t0 <= b <= t1]
    return {"rows": rows, "steps_meanwhile": len(inside), "s_per_step": statistics.median(gaps) if gaps else None,
            "window_s": round(t1 - t0, 2)}


def main() -> None:
    ap = chat_beside_args(__doc__, questions=6, nice="0,10,19")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out")
    args = ap.parse_args()
    from agent.engine import open_engine

    over = {"data_dir": Path(args.data_dir)} if args.data_dir else {}
    settings = Settings.from_env(engine="llamacpp", threads=args.threads, **over)
    engine = open_engine(settings)
    prompts = lottery_prompts(100)
    nices = [int(n) for n in args.nice.split(",")]
    results: dict[str, list] = {"idle": [], **{f"training_nice_{n}": [] for n in nices}}
    training: dict[str, list] = {f"training_nice_{n}": [] for n in nices}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        (data / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in training_rows()))
        chat(engine, prompts[:2], 8)  # warm-up
        asked = 0
        for r in range(args.rounds):
            for name in results:
                questions = prompts[asked: asked + args.questions]
                asked += args.questions
                if name == "idle":
                    results[name] += chat(engine, questions, args.new_tokens)
                    continue
                nice = int(name.rsplit("_", 1)[1])
                got = while_training(engine, dataclasses.replace(settings, background_nice=nice), data,
                                     Path(tmp) / f"run-{name}-{r}", questions, args.new_tokens)
                results[name] += got["rows"]
                training[name].append({k: v for k, v in got.items() if k != "rows"})
                print(name, r, training[name][-1], file=sys.stderr, flush=True)
    idle_ttft, idle_decode = med(results["idle"], "ttft_s"), med(results["idle"], "decode_tok_s")
    out = {"bench": "chat_while_training", "rounds": args.rounds, "questions": args.questions,
           "new_tokens": args.new_tokens, "threads": args.threads, "conditions": {}}
    for name, rows in results.items():
        cond = condition(rows, idle_ttft, idle_decode)
        if name in training:
            per = [t["s_per_step"] for t in training[name] if t["s_per_step"]]
            cond["training_s_per_step"] = round(statistics.median(per), 2) if per else None
            cond["training_steps_meanwhile"] = sum(t["steps_meanwhile"] for t in training[name])
        out["conditions"][name] = cond
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
