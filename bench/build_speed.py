"""Two llama.cpp builds side by side (e.g. the portable AVX2 one and one for this CPU's AVX-512 / VNNI), served the
way the app serves them (`agent/llama_server.server_command`, the build's thread settings): one answer alone, eight
at once, and a ~1,000-token prompt, in interleaved rounds so the machine's drift falls on both.

Each build folder holds `llama-server` and its libraries (a copy of `$KAIZEN_LLAMA_DIR/bin` with another
`libggml-cpu.so` dropped in is enough). Prints JSON, ratios b/a. Usage:
    python bench/build_speed.py A_BIN B_BIN [--rounds 3] [--new-tokens 200] [--streams 8]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.llama_build import server_args  # noqa: E402
from agent.llama_server import ServerProcess, free_port, server_command  # noqa: E402

PARA = "The history of the city involves trade, rivers, bridges, markets and many families who lived there."
ASKS = ["Tell me about the sea.", "Write a short story about a lighthouse keeper.", "Explain how rain forms.",
        "Describe a busy market in the morning.", "What makes a good friend?", "Tell me about the history of tea.",
        "Describe the life of a honeybee.", "How do trains work?"]


def post(port: int, body: dict) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=600))


def answer(port: int, text: str, new_tokens: int) -> dict:
    return post(port, {"messages": [{"role": "user", "content": text}], "max_tokens": new_tokens, "temperature": 0,
                       "cache_prompt": False, "ignore_eos": True})["usage"]


def round_for(bin_dir: Path, gguf: Path, args, long_prompt: str) -> dict:
    port = free_port()
    server = ServerProcess(server_command(bin_dir / "llama-server", gguf, [], port=port, parallel=args.streams,
                                          threads=args.threads, ctx_per_slot=2048, extra=server_args(bin_dir)),
                           f"http://127.0.0.1:{port}", ()).start()  # the build's own environment, healthy or raises
    try:
        answer(port, "Hello.", 8)  # warm-up
        t = time.perf_counter()
        one = answer(port, ASKS[0], args.new_tokens)["completion_tokens"]
        one_s = time.perf_counter() - t
        t = time.perf_counter()
        with ThreadPoolExecutor(args.streams) as pool:
            many = sum(u["completion_tokens"] for u in pool.map(lambda q: answer(port, q, args.new_tokens),
                                                                 ASKS[:args.streams]))
        many_s = time.perf_counter() - t
        t = time.perf_counter()
        prompt_tokens = answer(port, long_prompt, 1)["prompt_tokens"]
        ttft = time.perf_counter() - t
        return {"one_tok_s": one / one_s, "many_tok_s": many / many_s, "long_prompt_s": ttft,
                "long_prompt_tokens": prompt_tokens}
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--gguf", type=Path, default=None, help="default: the bundled model's Q8_0 serving copy")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    gguf = args.gguf
    if gguf is None:  # what the app serves for the default base
        from agent.gguf import base_gguf
        from agent.settings import Settings

        settings = Settings.from_env()
        gguf = base_gguf(settings.base_model, settings.models_dir)
    long_prompt = " ".join([PARA] * 48) + " Summarise."  # ~1,000 tokens with the chat template
    runs = {"a": [], "b": []}
    for i in range(args.rounds):
        for key in (("a", "b") if i % 2 == 0 else ("b", "a")):  # alternating, so neither always goes first
            runs[key].append(round_for(getattr(args, key), gguf, args, long_prompt))
    med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in runs.items()}
    print(json.dumps({"a": str(args.a), "b": str(args.b), "gguf": str(gguf), "rounds": runs, "median": med,
                      "b_over_a": {m: med["b"][m] / med["a"][m] for m in med["a"] if m != "long_prompt_tokens"},
                      "streams": args.streams, "new_tokens": args.new_tokens, "threads": args.threads}, indent=1))


if __name__ == "__main__":
    main()
