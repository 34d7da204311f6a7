"""Chat speed of the engines, one run, interleaved (medians): raw llama-cpp-python on the same GGUF (the ceiling),
the project's `llamacpp` engine (supervised llama-server, agent/engine_http.py) and the `transformers` engine
(agent/model.py, fp32), for ~37-, ~250- and ~1,000-token prompts: time to first token, decode tok/s; then the
aggregate tok/s and p50/p95 time to first token of 1, 4 and 8 concurrent streams; peak RSS of each.

Prints JSON. Usage: python bench/chat_speed.py [--rounds 3] [--new-tokens 64] [--threads 2] [--parallel 4]
Goals (issue 13): decode >= 0.95x raw llama.cpp and >= 2.5x transformers; 8 streams >= 2.5x one stream's
aggregate; TTFT at ~1,000 tokens no worse than transformers.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.offline import silence  # noqa: E402

silence()  # the offline, no-telemetry environment, before gradio and the model libraries load

from agent.settings import Settings  # noqa: E402

PARA = "The history of the city involves trade, rivers, bridges, markets and many families who lived there."
TOPICS = ["the sea", "a bicycle", "bread", "the moon", "rain", "a library", "chess", "coffee"]


def prompt_of(count, target: int) -> list[dict]:
    """A user message whose rendered prompt is about `target` tokens."""
    if target < 60:
        return [{"role": "user", "content": "What is the capital of France? Tell me one fact about it."}]
    words = (PARA + " ") * (target // 10)
    words = words.split()
    lo, hi = 1, len(words)
    while lo < hi:  # the longest prefix within the target
        mid = (lo + hi + 1) // 2
        if count([{"role": "user", "content": " ".join(words[:mid]) + " Summarise."}]) <= target:
            lo = mid
        else:
            hi = mid - 1
    return [{"role": "user", "content": " ".join(words[:lo]) + " Summarise."}]


def peak_rss_mb(pid: int | None = None) -> float:
    status = Path(f"/proc/{pid or 'self'}/status").read_text()
    return round(int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) / 1024, 1)


_CALLS = iter(range(10**9))


def fresh(messages: list[dict]) -> list[dict]:
    """The same request with a unique first line, so no engine reuses a cached prefill of an earlier call (the
    template's system prompt before it stays shared, as it is between real turns)."""
    *head, last = messages
    return [*head, {**last, "content": f"(request {next(_CALLS)})\n" + last["content"]}]


def engine_once(engine, messages, new_tokens: int) -> dict:
    messages = fresh(messages)
    gen = engine.stream(messages, max_new_tokens=new_tokens, adapter=None)
    stamps = [time.perf_counter() for _ in gen]
    n = gen.completion_tokens
    decode = (n - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and n > 1 else float("nan")
    return {"ttft_s": gen.first_token_s, "decode_tok_s": decode, "tokens": n}


def raw_once(llm, ids: list[int], new_tokens: int) -> dict:
    t0 = time.perf_counter()
    stamps = []
    for _ in llm.create_completion(ids, max_tokens=new_tokens, temperature=0.0, stream=True):
        stamps.append(time.perf_counter())
    n = len(stamps)
    return {"ttft_s": stamps[0] - t0, "decode_tok_s": (n - 1) / (stamps[-1] - stamps[0]) if n > 1 else float("nan"),
            "tokens": n}


def med(rows, key):
    vals = [r[key] for r in rows if r[key] == r[key]]
    return round(statistics.median(vals), 4) if vals else None


def pct(vals, q):
    vals = sorted(vals)
    return round(vals[min(len(vals) - 1, int(round(q * (len(vals) - 1))))], 3)


def concurrent(engine, n: int, new_tokens: int) -> dict:
    """n streams at once, each a different short prompt: aggregate tok/s and TTFT percentiles."""
    msgs = [[{"role": "user", "content": f"Write a few sentences about {TOPICS[i % len(TOPICS)]}."}] for i in range(n)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        rows = list(pool.map(lambda m: engine_once(engine, m, new_tokens), msgs))
    wall = time.perf_counter() - t0
    ttft = [r["ttft_s"] for r in rows]
    return {"streams": n, "aggregate_tok_s": round(sum(r["tokens"] for r in rows) / wall, 2),
            "ttft_p50_s": pct(ttft, 0.5), "ttft_p95_s": pct(ttft, 0.95), "wall_s": round(wall, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--sizes", default="37,250,1000")
    ap.add_argument("--no-transformers", action="store_true", help="skip the slow reference engine")
    ap.add_argument("--llama-args", default=os.environ.get("KAIZEN_LLAMA_ARGS", ""),
                    help="extra llama-server arguments for the engine, e.g. '-fa off'")
    args = ap.parse_args()
    import llama_cpp

    from agent.engine import open_engine
    from agent.gguf import base_gguf
    from agent.model import ChatModel

    settings = Settings.from_env(threads=args.threads, parallel=args.parallel, engine="llamacpp",
                                 llama_args=args.llama_args)
    fast = open_engine(settings)
    gguf = base_gguf(settings.base_model, settings.models_dir, settings.llama_quant)
    rss0 = peak_rss_mb()
    raw = llama_cpp.Llama(str(gguf), n_ctx=2048, n_threads=args.threads, n_threads_batch=args.threads,
                          verbose=False)
    rss_raw = peak_rss_mb()
    engines = {"raw_llama_cpp": lambda m: raw_once(raw, fast.render(fresh(m)), args.new_tokens),
               "llamacpp_engine": lambda m: engine_once(fast, m, args.new_tokens)}
    slow = None
    if not args.no_transformers:
        slow = ChatModel.from_settings(Settings.from_env(threads=args.threads, engine="transformers"))
        engines["transformers_engine"] = lambda m: engine_once(slow, m, args.new_tokens)
    rss_tf = peak_rss_mb()
    results = {}
    for size in [int(s) for s in args.sizes.split(",")]:
        messages = prompt_of(fast.count, size)
        rows = {name: [] for name in engines}
        for fn in engines.values():
            fn(messages)  # warm-up outside the measurement (every call gets a fresh prompt: cold prefill)
        for _ in range(args.rounds):  # interleaved: each round runs every engine once
            for name, fn in engines.items():
                rows[name].append(fn(messages))
        res = {"prompt_tokens": fast.count(messages)}
        for name, r in rows.items():
            res[name] = {"ttft_s": med(r, "ttft_s"), "decode_tok_s": med(r, "decode_tok_s")}
        eng, ceiling = res["llamacpp_engine"], res["raw_llama_cpp"]
        eng["decode_vs_raw"] = round(eng["decode_tok_s"] / ceiling["decode_tok_s"], 3)
        if slow is not None:
            ref = res["transformers_engine"]
            eng["decode_vs_transformers"] = round(eng["decode_tok_s"] / ref["decode_tok_s"], 3)
            eng["ttft_vs_transformers"] = round(eng["ttft_s"] / ref["ttft_s"], 3)
        results[str(size)] = res
        print(json.dumps({str(size): res}), file=sys.stderr, flush=True)  # progress
    conc = {}
    for n in (1, 4, 8):
        conc[str(n)] = concurrent(fast, n, args.new_tokens)
        print(json.dumps({"streams": conc[str(n)]}), file=sys.stderr, flush=True)
    conc["8_vs_1_aggregate"] = round(conc["8"]["aggregate_tok_s"] / conc["1"]["aggregate_tok_s"], 3)
    if slow is not None:
        conc["transformers_4"] = concurrent(slow, 4, args.new_tokens)
    out = {"bench": "chat_speed", "model": settings.base_model, "gguf": gguf.name, "threads": args.threads,
           "llama_args": args.llama_args,
           "parallel": args.parallel, "new_tokens": args.new_tokens, "rounds": args.rounds, "cpu_count": os.cpu_count(),
           "results": results, "concurrency": conc,
           "peak_rss_mb": {"llama_server": peak_rss_mb(fast.server.current.proc.pid),
                           "raw_llama_cpp_in_process": round(rss_raw - rss0, 1),
                           "transformers_in_process": round(rss_tf - rss_raw, 1) if slow is not None else None}}
    print(json.dumps(out, indent=2))
    fast.close()


if __name__ == "__main__":
    main()
