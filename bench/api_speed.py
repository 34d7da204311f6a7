"""API speed: time to first token and decode tokens/s through `/v1/chat/completions` (streaming SSE over a real
socket, the answer stored like a UI answer) against calling the Answerer directly, interleaved in the same run on
the same model (medians), and the p50/p99 latency of `POST /v1/feedback` (a rating: check, ownership, write).

Prints JSON (and writes it to --out). Usage:
    python bench/api_speed.py [--rounds 5] [--new-tokens 64] [--feedback 300] [--out api_speed.json]
The model and engine are the app's (KAIZEN_BASE_MODEL, KAIZEN_ENGINE, KAIZEN_THREADS); the data dir is a fresh
temporary one.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from agent.offline import silence  # noqa: E402

silence()  # the offline, no-telemetry environment, before gradio and the model libraries load

from agent.settings import Settings  # noqa: E402

QUESTION = "Write a short paragraph about the history of Paris."


def direct_once(answerer, new_tokens: int) -> dict:
    t0 = time.perf_counter()
    reply = answerer.answer([], QUESTION, template="plain", rag="off", adapter=None, max_new_tokens=new_tokens)
    stamps = [time.perf_counter() for piece in reply.generation if piece]
    n = reply.generation.completion_tokens
    return summary(t0, stamps, n)


def api_once(http, url: str, new_tokens: int) -> dict:
    t0 = time.perf_counter()
    stamps, n, cid = [], 0, None
    with http.stream("POST", url + "/v1/chat/completions", json={
            "model": "kaizen:base", "stream": True, "stream_options": {"include_usage": True}, "rag": "off",
            "template": "plain", "max_tokens": new_tokens,
            "messages": [{"role": "user", "content": QUESTION}]}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            cid = chunk["id"]
            if chunk.get("usage"):
                n = chunk["usage"]["completion_tokens"]
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                stamps.append(time.perf_counter())
    return {**summary(t0, stamps, n), "id": cid}


def summary(t0: float, stamps: list[float], n: int) -> dict:
    decode = (n - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and n > 1 else float("nan")
    return {"ttft_s": stamps[0] - t0 if stamps else float("nan"), "decode_tok_s": decode, "tokens": n}


def med(rows: list[dict], key: str) -> float:
    return round(statistics.median(r[key] for r in rows), 4)


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * len(values)) - 1))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--feedback", type=int, default=300, help="feedback POSTs to time")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args()

    import httpx

    from adapters.registry import Registry
    from web.routes import api_app, serve_in_thread
    from agent.chat import Answerer
    from feedback.store import Store

    data = Path(tempfile.mkdtemp(prefix="kaizen-api-bench-"))
    settings = Settings.from_env(data_dir=data, max_new_tokens=args.new_tokens, auth_file="")
    answerer = Answerer.from_settings(settings, with_retrieval=False)
    store = Store.from_settings(settings)
    app = api_app(settings, answerer=answerer, store=store, registry=Registry(settings), start_sync=False)
    direct, api, ids = [], [], []
    with serve_in_thread(app) as url, httpx.Client(timeout=300) as http:
        api_once(http, url, 4), direct_once(answerer, 4)  # warm-up: first-call costs on both sides
        for _ in range(args.rounds):  # interleaved, so load changes hit both sides alike
            direct.append(direct_once(answerer, args.new_tokens))
            got = api_once(http, url, args.new_tokens)
            ids.append(got.pop("id"))
            api.append(got)
        lat = []
        for i in range(args.feedback):
            t0 = time.perf_counter()
            r = http.post(url + "/v1/feedback", json={"id": ids[i % len(ids)], "rating": 1 if i % 2 else -1})
            lat.append((time.perf_counter() - t0) * 1000)
            r.raise_for_status()
    d_ttft, a_ttft = med(direct, "ttft_s"), med(api, "ttft_s")
    d_tps, a_tps = med(direct, "decode_tok_s"), med(api, "decode_tok_s")
    out = {
        "model": settings.base_model, "engine": type(answerer.model).__name__, "threads": settings.threads,
        "rounds": args.rounds, "new_tokens": args.new_tokens,
        "direct": {"ttft_s": d_ttft, "decode_tok_s": d_tps, "tokens": med(direct, "tokens")},
        "api": {"ttft_s": a_ttft, "decode_tok_s": a_tps, "tokens": med(api, "tokens")},
        "overhead": {"ttft_pct": round(100 * (a_ttft - d_ttft) / d_ttft, 1),
                     "ttft_ms": round(1000 * (a_ttft - d_ttft), 1),
                     # the fastest round of each side: less of the machine's noise than the medians
                     "ttft_ms_best": round(1000 * (min(r["ttft_s"] for r in api) - min(r["ttft_s"] for r in direct)),
                                           1),
                     "decode_tok_s_pct": round(100 * (d_tps - a_tps) / d_tps, 1)},
        "feedback_post_ms": {"n": len(lat), "p50": round(percentile(lat, 50), 2),
                             "p99": round(percentile(lat, 99), 2), "max": round(max(lat), 2)},
        "raw": {"direct": direct, "api": api},
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
