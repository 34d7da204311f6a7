"""Which system prompt should the `plain` template give the default model? Candidates side by side, in one run.

SmolLM2-135M-Instruct was tuned with "You are a helpful AI assistant named SmolLM, trained by Hugging Face" (its chat
template adds that when a conversation has no system message); the `plain` template says "You are Kaizen, a helpful
AI assistant." Measured per candidate:
- preference: OpenAssistant (../shared/data/oasst_en_100) prompts with ranked human replies, teacher-forced through
  transformers fp32 (the reference the gate uses): how often the best-ranked reply gets a higher mean token
  log-probability than the worst-ranked one, and the best reply's mean log-probability.
- facts: 30 closed-book questions a 135M model can know, in everyday phrasings (capitals, simple science, "Name the
  capital of France." and "What is the capital of France?"), answered greedily on the served engine (llama.cpp,
  the app's decoding): the share whose answer contains the expected word.
- chat: the first N real prompts of the OpenAssistant prompt lottery (indices < 100: the rest is held out), the
  same way: loop rate (the gate's measure), share answered in English (stop words), mean words.

  .venv/bin/python bench/system_prompts.py [--prompts 60] [--tokens 160] [--pairs 150]

Prints JSON. Results: RESULTS below, from a run.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from agent.offline import silence  # noqa: E402

silence()

import agent.settings  # noqa: E402,F401  (offline env first)
from adapters.collapse import loop_rate  # noqa: E402
from adapters.evaluate import sequence_logps  # noqa: E402
from feedback.replay import ROLES, read_trees  # noqa: E402
from agent.settings import Settings  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
TREES = DATA / "oasst_en_100" / "en_100_tree.jsonl"
LOTTERY = DATA / "oasst_en_100" / "prompt_lottery_en_250_text.jsonl"
RESERVED_FROM = 100

RESULTS = """
2026-12-07, three runs on 2 cores (llama.cpp, 4 slots, greedy with the app's loop rule; 48 tokens for facts, 160
for chat). Four answers decode at once, and llama.cpp's kernels are not batch-invariant, so a run's fact score moves
by a question or so between runs of the same prompt.

  system prompt                                       facts right (3 runs)  chat loops: lottery 60 / lottery 100 /
                                                                             OpenAssistant trees 100   preference
  You are Kaizen, a helpful AI assistant. (before)     70% / 70% / 70%       15% / 11% / 14%             0.700
  You are a helpful AI assistant named Kaizen. (now)   80% / 77% / 80%        7% /  3% / 11%             0.707
  You are a helpful AI assistant named SmolLM, ...     67%                   13%                         0.707
  You are a helpful AI assistant named Kaizen (no .)   77%                        10%
  You are a helpful assistant named Kaizen.            67%                         6%
  You are Kaizen, a helpful assistant.                 67%                        10%
  You are Kaizen, ... Answer in English unless ...     67%                    7%                         0.707

English answers 97-100% for all; mean length 93-111 words. Pooled over the three chat sets the loop rate is 13.1%
(34 of 260) before and 6.9% (18 of 260) with the tuned form. "What is the capital of France?" answers "The capital
of France is Paris." with it (the model's own SmolLM prompt and "You are Kaizen, a helpful assistant." answer
"L'Etoile, la Cite, ..." / "L'Alma, la France, ..."), and its first token leads by 0.49 nats in transformers fp32
(0.11 before); "Name the capital of France." 1.42 (0.48). The preference column (best over worst OpenAssistant reply,
teacher-forced, 150 pairs) barely moves: the system prompt shifts near-ties, not what the model knows. (That column
was measured with the bench's own teacher forcing, replies cut at 256 tokens; it now uses the gate's
`adapters.evaluate.sequence_logps`, prompt + reply cut at 1,024 tokens, which gives 0.687 for "before"; the other
rows were not rerun with it.)
"""

CANDIDATES = {
    "kaizen (before)": "You are Kaizen, a helpful AI assistant.",
    "smollm (as tuned)": "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
    "kaizen, tuned form (shipped)": "You are a helpful AI assistant named Kaizen.",
    "kaizen, english": "You are Kaizen, a helpful AI assistant. Answer in English unless asked otherwise.",
    "kaizen, tuned form, no stop": "You are a helpful AI assistant named Kaizen",
    "kaizen, assistant": "You are a helpful assistant named Kaizen.",
    "kaizen, short": "You are Kaizen, a helpful assistant.",
}

FACTS = [
    ("What is the capital of France?", "paris"), ("Name the capital of France.", "paris"),
    ("Which city is the capital of France?", "paris"), ("The capital of France is which city?", "paris"),
    ("What is the capital of Japan?", "tokyo"), ("What's the capital city of Germany?", "berlin"),
    ("What is the capital of Italy?", "rome"), ("What is the capital of Spain?", "madrid"),
    ("Which city is the capital of the United Kingdom?", "london"), ("What is the capital of Russia?", "moscow"),
    ("Which planet is known as the Red Planet?", "mars"), ("What is the largest planet in our solar system?",
                                                             "jupiter"),
    ("Who wrote Romeo and Juliet?", "shakespeare"), ("Who painted the Mona Lisa?", "leonardo"),
    ("What is the chemical symbol for water?", "h2o"), ("What gas do plants take in for photosynthesis?", "carbon"),
    ("How many days are there in a week?", "seven|7"), ("How many legs does a spider have?", "eight|8"),
    ("How many continents are there?", "seven|7"), ("What is the largest ocean on Earth?", "pacific"),
    ("What is the freezing point of water in degrees Celsius?", "0|zero"),
    ("At what temperature in Celsius does water boil at sea level?", "100"),
    ("What is the opposite of hot?", "cold"), ("What colour is the sky on a clear day?", "blue"),
    ("Which animal is known as the king of the jungle?", "lion"), ("What do bees make?", "honey"),
    ("What language is spoken in Brazil?", "portuguese"), ("In which country are the pyramids of Giza?", "egypt"),
    ("Who was the first person to walk on the Moon?", "armstrong"), ("What is 12 times 12?", "144"),
]

STOP = {
    "en": set("the and is are of to in that it for you with this on as be can or your an by not have".split()),
    "fr": set("le la les et est des une un du que pour dans pas sur vous avec ce qui au".split()),
    "es": set("el la los las y es de que en un una por para con no se del".split()),
    "de": set("der die das und ist nicht ein eine zu den mit sich auf für von".split()),
}
_WORDS = re.compile(r"[a-zà-ÿ]+")


def language(text: str) -> str:
    words = _WORDS.findall(text.lower())
    counts = {lang: sum(w in stop for w in words) for lang, stop in STOP.items()}
    return max(counts, key=counts.get) if any(counts.values()) else "?"


def no_trees() -> bool:
    """True (and the skip printed as JSON) when ../shared's OpenAssistant trees are not there."""
    if not TREES.exists():
        print(json.dumps({"skipped": f"{TREES} not found"}))
    return not TREES.exists()


def lottery_prompts(limit: int = RESERVED_FROM) -> list[str]:
    """The prompt lottery's first `limit` real prompts, from its indices < RESERVED_FROM only."""
    prompts = [p for p in (json.loads(line) for line in LOTTERY.read_text().splitlines() if line.strip())
               if isinstance(p, str) and p.strip()]
    return prompts[:min(limit, RESERVED_FROM)]


def ranked_pairs(limit: int) -> list[tuple[list[dict], str, str]]:
    """(conversation so far, best reply, worst reply) for each prompter message with 2+ ranked replies."""
    out = []

    def walk(node, path):
        convo = path + [{"role": ROLES[node["role"]], "content": node["text"]}]
        if node["role"] == "prompter":
            ranked = sorted((r for r in node.get("replies", []) if r.get("rank") is not None), key=lambda r: r["rank"])
            if len(ranked) >= 2:
                out.append((convo, ranked[0]["text"], ranked[-1]["text"]))
        for r in node.get("replies", []):
            walk(r, convo)

    for tree in read_trees(TREES):
        walk(tree["prompt"], [])
    return out[:limit]


def preference(model, tok, pairs, system: str) -> dict:
    """Best over worst reply by mean token log-probability (adapters.evaluate.sequence_logps, the gate's)."""
    def mean_logps(which: int) -> list[float]:
        rows = [([{"role": "system", "content": system}] + convo, [{"role": "assistant", "content": pair[which]}])
                for convo, *pair in pairs]
        return [total / max(n, 1) for total, n in sequence_logps(model, tok, rows, "cpu", max_length=1024)]

    good, bad = mean_logps(0), mean_logps(1)
    return {"pairs": len(pairs), "best_over_worst": round(sum(g > b for g, b in zip(good, bad)) / len(pairs), 3),
            "best_mean_logprob": round(statistics.mean(good), 4)}


def answers(engine, system: str, questions: list[str], tokens: int, decoding) -> list[str]:
    def one(q):
        return engine.stream([{"role": "system", "content": system}, {"role": "user", "content": q}],
                             max_new_tokens=tokens, decoding=decoding).collect()

    with ThreadPoolExecutor(4) as pool:  # the engine's four shared slots
        return list(pool.map(one, questions))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=60)
    ap.add_argument("--tokens", type=int, default=160)
    ap.add_argument("--pairs", type=int, default=150)
    ap.add_argument("--chat-source", choices=("lottery", "trees"), default="lottery",
                    help="the chat prompts: the prompt lottery's first N, or the N OpenAssistant trees' first prompts")
    ap.add_argument("--only", default="", help="candidate names separated by | (default: all)")
    ap.add_argument("--data-dir", type=Path, help="a data dir whose converted base model to reuse (default: a new one)")
    args = ap.parse_args(argv)
    if no_trees():
        return 0
    t0 = time.perf_counter()
    if args.chat_source == "lottery":
        prompts = lottery_prompts(args.prompts)
    else:  # the first prompt of each OpenAssistant tree: another 100 real prompts
        prompts = [tree["prompt"]["text"] for tree in read_trees(TREES, limit=args.prompts)]
    pairs = ranked_pairs(args.pairs)
    from agent.chat import Answerer
    from agent.engine import open_engine
    from agent.model import resolve_base

    with tempfile.TemporaryDirectory(prefix="system_prompts_") as tmp:
        settings = Settings.from_env(data_dir=args.data_dir or Path(tmp), chroma_url="")
        folder = resolve_base(settings.base_model, settings.models_dir)
        engine = open_engine(settings)
        decoding = Answerer(engine, settings).decoding()
        if pairs:  # the transformers reference, for the teacher-forced preference
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tok = AutoTokenizer.from_pretrained(folder)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        report = {"engine": type(engine).__name__, "decoding": str(decoding), "candidates": {}}
        names = [n.strip() for n in args.only.split("|") if n.strip()] or list(CANDIDATES)
        for name in names:
            system = CANDIDATES[name]
            facts = answers(engine, system, [q for q, _ in FACTS], 48, decoding)
            right = [bool(re.search(rf"\b({want})\b", a.lower())) for (_, want), a in zip(FACTS, facts)]
            chat = answers(engine, system, prompts, args.tokens, decoding)
            langs = [language(a) for a in chat]
            report["candidates"][name] = {
                "system": system,
                "facts_right": round(sum(right) / len(right), 3),
                "facts_wrong": [q for (q, _), ok in zip(FACTS, right) if not ok],
                "paris": facts[0][:100],
                "chat_loop_rate": round(loop_rate(chat), 3),
                "chat_english": round(sum(lang == "en" for lang in langs) / len(langs), 3),
                "chat_not_english": [a[:80] for a, lang in zip(chat, langs) if lang not in ("en", "?")][:5],
                "chat_mean_words": round(statistics.mean(len(a.split()) for a in chat), 1),
                **(preference(model, tok, pairs, system) if pairs else {}),
            }
            print(json.dumps({name: report["candidates"][name]}), file=sys.stderr, flush=True)
        engine.close()
    report["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
