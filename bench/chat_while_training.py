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
from typing import Callable

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


def chat(engine, questions: list[str], new_tokens: int) -> list[dict]:
    return [engine_once(engine, [{"role": "user", "content": q}], new_tokens) for q in questions]


def interleaved(engine, prompts: list[str], args, prefix: str,
                beside: Callable[[int, int, list[str]], dict]) -> tuple[dict[str, list], dict[str, list]]:
    """The chat alone, then beside the background work at each niceness of `args.nice` (conditions named
    `{prefix}_{nice}`), in turn, round by round, each with its own next `args.questions` prompts (none asked twice).
    `beside(nice, round, questions)` asks them beside the work and returns {"rows": answers, ...its own figures}.
    Returns (answers by condition, the figures of each run by condition)."""
    nices = [int(n) for n in args.nice.split(",")]
    results: dict[str, list] = {"idle": [], **{f"{prefix}_{n}": [] for n in nices}}
    figures: dict[str, list] = {f"{prefix}_{n}": [] for n in nices}
    chat(engine, prompts[:2], 8)  # warm-up
    asked = 0
    for r in range(args.rounds):
        for name in results:
            questions = prompts[asked: asked + args.questions]
            asked += args.questions
            if name == "idle":
                results[name] += chat(engine, questions, args.new_tokens)
                continue
            got = beside(int(name.rsplit("_", 1)[1]), r, questions)
            results[name] += got.pop("rows")
            figures[name].append(got)
            print(name, r, got, file=sys.stderr, flush=True)
    return results, figures


def conditions(results: dict[str, list]) -> dict[str, dict]:
    """Each condition's answers: median and p95 first token, median decode, each against the idle chat's."""
    idle_ttft, idle_decode = med(results["idle"], "ttft_s"), med(results["idle"], "decode_tok_s")
    out = {}
    for name, rows in results.items():
        ttft, decode = med(rows, "ttft_s"), med(rows, "decode_tok_s")
        out[name] = {"ttft_s": ttft, "ttft_p95_s": pct([r["ttft_s"] for r in rows], 0.95), "decode_tok_s": decode,
                     "answers": len(rows), "ttft_vs_idle": round(ttft / idle_ttft, 2),
                     "decode_vs_idle": round(decode / idle_decode, 2)}
    return out


def report(out: dict, path: str | None) -> None:
    """Print the bench's JSON; write it to `path` too when given."""
    text = json.dumps(out, indent=1)
    print(text)
    if path:
        Path(path).write_text(text)


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
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        (data / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in training_rows()))

        def beside(nice: int, r: int, questions: list[str]) -> dict:
            return while_training(engine, dataclasses.replace(settings, background_nice=nice), data,
                                  Path(tmp) / f"run-training_nice_{nice}-{r}", questions, args.new_tokens)

        results, training = interleaved(engine, prompts, args, "training_nice", beside)
    out = {"bench": "chat_while_training", "rounds": args.rounds, "questions": args.questions,
           "new_tokens": args.new_tokens, "threads": args.threads, "conditions": conditions(results)}
    for name, runs in training.items():
        per = [t["s_per_step"] for t in runs if t["s_per_step"]]
        out["conditions"][name]["training_s_per_step"] = round(statistics.median(per), 2) if per else None
        out["conditions"][name]["training_steps_meanwhile"] = sum(t["steps_meanwhile"] for t in runs)
    report(out, args.out)


if __name__ == "__main__":
    main()
