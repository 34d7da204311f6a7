"""Chat speed: time to first token and decode tokens/s of the serving path (ChatModel.stream) against a plain
`model.generate` baseline, measured interleaved in the same run (medians), for a short and a ~1,000-token prompt.

Also tries the cheap wins side by side: bf16 vs fp32 weights, a static KV cache, and the thread count.
Prints JSON. Usage: python bench/chat_speed.py [--rounds 5] [--new-tokens 64] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from agent.model import ChatModel, load_base  # noqa: E402
from agent.settings import Settings  # noqa: E402

SHORT = [{"role": "user", "content": "What is the capital of France?"}]
LONG_TEXT = " ".join(
    f"Paragraph {i}: the history of the city involves trade, rivers, bridges, markets and many families." for i in range(60)
)


def long_prompt(model: ChatModel, target: int = 1000) -> list[dict]:
    text = LONG_TEXT
    while model.count([{"role": "user", "content": text + " Summarise."}]) < target:
        text += " " + LONG_TEXT
    words = text.split()
    while model.count([{"role": "user", "content": " ".join(words) + " Summarise."}]) > target:
        words = words[:-5]
    return [{"role": "user", "content": " ".join(words) + " Summarise."}]


def serve_once(model: ChatModel, messages, new_tokens: int) -> dict:
    gen = model.stream(messages, max_new_tokens=new_tokens, adapter=None)
    stamps = []
    for _ in gen:
        stamps.append(time.perf_counter())
    n = gen.completion_tokens
    decode = (n - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and n > 1 else float("nan")
    return {"ttft_s": gen.first_token_s, "decode_tok_s": decode, "tokens": n}


def in_thread(fn, *args, **kw):
    """Run fn in a fresh thread, as the serving path does: on a busy machine, generate() in the main thread was
    measured 7-20x slower than in a worker thread (OpenMP spin-waits under contention), which would flatter the
    serving path. Both sides run in worker threads so the comparison is fair."""
    import threading

    box = {}
    t = threading.Thread(target=lambda: box.setdefault("r", fn(*args, **kw)))
    t.start()
    t.join()
    return box["r"]


def generate_once(model, tok, messages, new_tokens: int, **extra) -> dict:
    return in_thread(_generate_once, model, tok, messages, new_tokens, **extra)


def _generate_once(model, tok, messages, new_tokens: int, **extra) -> dict:
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    kw = dict(do_sample=False, pad_token_id=tok.pad_token_id, **extra)
    with torch.inference_mode():
        t0 = time.perf_counter()
        model.generate(**ids, max_new_tokens=1, min_new_tokens=1, **kw)
        ttft = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = model.generate(**ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kw)
        total = time.perf_counter() - t0
    n = out.shape[1] - ids["input_ids"].shape[1]
    return {"ttft_s": ttft, "decode_tok_s": (n - 1) / max(total - ttft, 1e-9), "tokens": int(n)}


def med(rows, key):
    vals = [r[key] for r in rows if r[key] == r[key]]
    return round(statistics.median(vals), 4) if vals else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    settings = Settings.from_env(threads=args.threads)
    model, tok, dev = load_base(settings)
    serving = ChatModel(model, tok, dev, name=settings.base_model)
    bf16_model, _, _ = load_base(settings)
    bf16_model = bf16_model.to(torch.bfloat16)
    bf16 = ChatModel(bf16_model, tok, dev, name="bf16")
    prompts = {"short": SHORT, "long": long_prompt(serving)}
    variants = {
        "baseline_generate": lambda m: generate_once(model, tok, m, args.new_tokens),
        "serving_stream": lambda m: serve_once(serving, m, args.new_tokens),
        "serving_bf16": lambda m: serve_once(bf16, m, args.new_tokens),
        "generate_static_cache": lambda m: generate_once(model, tok, m, args.new_tokens, cache_implementation="static"),
    }
    results: dict = {}
    for pname, messages in prompts.items():
        rows = {v: [] for v in variants}
        for name, fn in variants.items():  # warm-up (compiles, allocates) outside the measurement
            fn(messages)
        for _ in range(args.rounds):  # interleaved: each round runs every variant once
            for name, fn in variants.items():
                rows[name].append(fn(messages))
        results[pname] = {
            "prompt_tokens": serving.count(messages),
            **{name: {"ttft_s": med(r, "ttft_s"), "decode_tok_s": med(r, "decode_tok_s")} for name, r in rows.items()},
        }
        base = results[pname]["baseline_generate"]
        for name in variants:
            v = results[pname][name]
            v["ttft_ratio_vs_baseline"] = round(v["ttft_s"] / base["ttft_s"], 3)
            v["decode_ratio_vs_baseline"] = round(v["decode_tok_s"] / base["decode_tok_s"], 3)
    # Thread count: the serving path on the short prompt with 1 thread vs the configured count.
    threads = {}
    for n in sorted({1, args.threads}):
        torch.set_num_threads(n)
        rs = [serve_once(serving, SHORT, args.new_tokens) for _ in range(args.rounds)]
        threads[str(n)] = {"ttft_s": med(rs, "ttft_s"), "decode_tok_s": med(rs, "decode_tok_s")}
    torch.set_num_threads(args.threads)
    print(json.dumps({"bench": "chat_speed", "model": settings.base_model, "device": dev, "threads": args.threads,
                      "new_tokens": args.new_tokens, "rounds": args.rounds, "results": results,
                      "threads_sweep": threads}, indent=2))


if __name__ == "__main__":
    main()
