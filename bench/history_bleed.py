"""Does an earlier topic bleed into the answer to a new one, and what would answering without the history cost?

Noticed in a browser walk: after three questions about a night train, "Write one sentence about the colour blue."
was answered "The night train from Vienna to Rome is a beautiful sight. ..." The app gives the model the whole
conversation (the `plain` template's history). Two sets, both real:

- changes of subject: an OpenAssistant conversation (../shared/data/oasst_en_100: a tree's first prompt and, where the
  tree goes on, its next one or two prompter turns, each answered by the served model with the history so far, as
  the chat would), then a real prompt from the prompt lottery (indices < 100) as the new question. The new question
  is answered (served engine, the app's decoding) with the whole history ("full"), only the last exchange ("last")
  and none ("none"). Bleed: the answer's MiniLM embedding is closer to the earlier user turns than to its own
  question. Also the loop rate (the gate's) and the share of new questions `agent.routing.is_follow_up` takes for
  a follow-up.
- real follow-ups: every later prompter turn of the trees (the human conversation as it was, the best-ranked reply as
  the assistant's), with its best-ranked reply teacher-forced in transformers fp32 (`adapters.evaluate.
  sequence_logps`, the gate's scorer): the reply's mean token log-probability after the full history, the last
  exchange and none, and the share `is_follow_up` recognises. The drop from "full" to "none" is what dropping the
  history would cost a question that needs it.

  .venv/bin/python bench/history_bleed.py [--trees 100] [--tokens 120] [--data-dir D]

Prints JSON. Results: RESULTS below, from a run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# the offline environment first; the OpenAssistant trees and the prompt lottery's first 100 (the rest is held out)
from system_prompts import TREES, lottery_prompts, no_trees  # noqa: E402

from adapters.collapse import loop_rate  # noqa: E402
from adapters.evaluate import sequence_logps  # noqa: E402
from agent.embeddings import cosine  # noqa: E402
from agent.routing import is_follow_up, previous_question  # noqa: E402
from agent.settings import Settings  # noqa: E402
from feedback.replay import ROLES, read_trees  # noqa: E402

POLICIES = ("full", "last", "none")

RESULTS = """
2026-12-07, two runs on 2 cores (llama.cpp, 4 slots, greedy with the app's loop rule, 120 tokens an answer; 100
conversations of 1 / 2 / 3 exchanges: 14 / 54 / 32). "app" is KAIZEN_HISTORY=topic (Answerer.context): the whole
conversation where it keeps it, none where it does not (second run only).

  given to the model        changes of subject: closer to the old topic   loops      real follow-ups (85):
                            (after 3 exchanges)                                       best reply, nats a token
  the whole conversation    13% / 13%  (19% / 16%)                         11% / 7%   -2.064
  the last exchange          9% /  8%  (13% /  9%)                         13% / 7%   -2.060
  nothing                    0% /  0%                                       0% / 0%   -2.265
  app (shipped)                    3%  (6%)                                      1%   -2.073

The rule keeps the history for 15% of the changes of subject and 92% of the real follow-ups; the 8% it drops lose
0.12 nats a token. is_follow_up alone recognises 14% of the real follow-ups (they are long sentences). Similarity
of a question to the previous user message, at 0.1 / 0.15 / 0.2 / 0.3: real follow-ups at or above 87 / 77 / 68 /
51%, changes of subject below 88 / 96 / 99 / 99%: 0.1 leans towards keeping a conversation a question needs.
"""


def deepest_path(node, limit: int = 3) -> list[dict]:
    """The prompter turns and their best-ranked replies along the path that goes deepest (ties: better rank),
    as role/content messages ending with a reply; at most `limit` prompter turns. Pure."""
    def walk(n) -> list[dict]:
        here = [{"role": ROLES[n["role"]], "content": n["text"]}]
        replies = sorted(n.get("replies", []), key=lambda r: (r.get("rank") is None, r.get("rank") or 0))
        best = max((walk(r) for r in replies), key=len, default=[])  # max keeps the first (best-ranked) of equals
        return here + best

    path = walk(node)
    users = [i for i, m in enumerate(path) if m["role"] == "user"][:limit]
    end = users[-1] + 2 if len(path) > users[-1] + 1 else users[-1] + 1
    return path[:end]


def keep(history: list[dict], policy: str) -> list[dict]:
    """The history a policy gives the model: all of it, the last exchange, or none. Pure."""
    if policy == "full":
        return history
    if policy == "last":
        return history[-2:]
    return []


def subject_changes(engine, template, trees, prompts, tokens, decoding, embedder, kept_by_app) -> dict:
    """Conversations from the trees answered by the model, then a lottery prompt under each policy."""
    def reply(messages) -> str | None:
        try:
            return engine.stream(messages, max_new_tokens=tokens, decoding=decoding).collect()
        except ValueError:  # a turn longer than the context: the chat refuses it too
            return None

    def converse(tree) -> list[dict]:
        history = []
        for m in deepest_path(tree["prompt"]):
            if m["role"] == "user":
                answer = reply(template.render(m["content"], history))
                if answer is None:
                    break
                history += [m, {"role": "assistant", "content": answer}]
        return history

    with ThreadPoolExecutor(4) as pool:  # the engine's four shared slots
        histories = [h for h in pool.map(converse, trees) if h]
        cases = [(h, q, p) for h, q in zip(histories, prompts) for p in POLICIES]
        answers = [a or "" for a in pool.map(lambda c: reply(template.render(c[1], keep(c[0], c[2]))), cases)]
    by = {p: [] for p in POLICIES}
    for (history, question, policy), answer in zip(cases, answers):
        by[policy].append((history, question, answer))
    kept = [bool(kept_by_app(q, h)) for h, q, _ in by["full"]]  # the app's rule: the full or no history
    by["app"] = [f if k else n for f, n, k in zip(by["full"], by["none"], kept)]
    out = {"conversations": len(histories),
           "exchanges": dict(sorted({n: sum(len(h) // 2 == n for h in histories)
                                     for n in {len(h) // 2 for h in histories}}.items())),
           "new_questions_taken_for_follow_ups": round(sum(map(is_follow_up, prompts)) / len(prompts), 3),
           "history_kept_by_the_app": round(sum(kept) / len(kept), 3)}
    for policy, rows in by.items():
        earlier = embedder.embed([" ".join(m["content"] for m in h if m["role"] == "user") for h, _, _ in rows])
        own = embedder.embed([q for _, q, _ in rows])
        ans = embedder.embed([a for _, _, a in rows])
        closer = [cosine(x, e) > cosine(x, o) for x, e, o in zip(ans, earlier, own)]
        deep = [c for (h, _, _), c in zip(rows, closer) if len(h) >= 6]
        out[policy] = {
            "bleed": round(sum(closer) / len(closer), 3),
            "bleed_after_3_exchanges": round(sum(deep) / len(deep), 3) if deep else None,
            "similarity_to_earlier_topic": round(statistics.mean(cosine(x, e) for x, e in zip(ans, earlier)), 3),
            "similarity_to_question": round(statistics.mean(cosine(x, o) for x, o in zip(ans, own)), 3),
            "loop_rate": round(loop_rate([a for _, _, a in rows]), 3),
            "mean_words": round(statistics.mean(len(a.split()) for _, _, a in rows), 1),
            "examples": [{"earlier": h[0]["content"][:60], "question": q[:60], "answer": a[:140]}
                         for h, q, a in rows[:4]],
        }
    return out


def real_follow_ups(trees, template, model, tok, kept_by_app) -> dict:
    """Later prompter turns of the human conversations: their best reply's mean log-probability per policy."""
    cases = []
    for tree in trees:
        path = deepest_path(tree["prompt"])
        for i, m in enumerate(path):
            if m["role"] == "user" and i > 0 and i + 1 < len(path):
                cases.append((path[:i], m["content"], path[i + 1]["content"]))
    out = {"follow_ups": len(cases),
           "recognised_by_is_follow_up": round(sum(is_follow_up(q) for _, q, _ in cases) / len(cases), 3),
           "examples": [q[:80] for _, q, _ in cases[:6]]}
    means = {}
    for policy in POLICIES:
        rows = [(template.render(q, keep(h, policy)), [{"role": "assistant", "content": r}]) for h, q, r in cases]
        means[policy] = [t / max(n, 1) for t, n in sequence_logps(model, tok, rows, "cpu", max_length=1024)]
        out[policy] = {"reply_mean_logprob": round(statistics.mean(means[policy]), 4)}
    kept = [bool(kept_by_app(q, h)) for h, q, _ in cases]
    means["app"] = [f if k else n for f, n, k in zip(means["full"], means["none"], kept)]
    out["app"] = {"reply_mean_logprob": round(statistics.mean(means["app"]), 4), "history_kept": round(
        sum(kept) / len(kept), 3), "dropped_lose": round(statistics.mean(
            [f - n for f, n, k in zip(means["full"], means["none"], kept) if not k] or [0.0]), 4)}
    out["full_over_none"] = round(sum(f > n for f, n in zip(means["full"], means["none"])) / len(cases), 3)
    deep = [i for i, (h, _, _) in enumerate(cases) if len(h) >= 4]
    if deep:
        out["after_2_exchanges"] = {
            "cases": len(deep), **{p: round(statistics.mean(means[p][i] for i in deep), 4) for p in means}}
    return out


def previous_turn_similarity(embedder, cases) -> list[float]:
    """Cosine between each new question and the user turn before it ((history, question) cases)."""
    before = embedder.embed([previous_question(h) for h, _ in cases])
    return [cosine(a, b) for a, b in zip(before, embedder.embed([q for _, q in cases]))]


def separability(embedder, trees, prompts) -> dict:
    """Could the new question's similarity to the previous user turn tell a change of subject from a real follow-up?
    For thresholds: the share of real follow-ups at or above it (their history kept) and of changes of subject
    below it (theirs dropped)."""
    paths = [deepest_path(t["prompt"]) for t in trees]
    follow = [(p[:i], m["content"]) for p in paths for i, m in enumerate(p) if m["role"] == "user" and i > 0]
    change = [(p, q) for p, q in zip(paths, prompts)]
    f, c = previous_turn_similarity(embedder, follow), previous_turn_similarity(embedder, change)
    return {str(t): {"follow_ups_kept": round(sum(x >= t for x in f) / len(f), 3),
                     "changes_detected": round(sum(x < t for x in c) / len(c), 3)} for t in (0.1, 0.15, 0.2, 0.3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trees", type=int, default=100)
    ap.add_argument("--tokens", type=int, default=120)
    ap.add_argument("--no-teacher-forcing", action="store_true", help="skip the real follow-ups' log-probabilities")
    ap.add_argument("--data-dir", type=Path, help="a data dir whose converted base model to reuse (default: a new one)")
    args = ap.parse_args(argv)
    if no_trees():
        return 0
    t0 = time.perf_counter()
    trees = read_trees(TREES, limit=args.trees)
    prompts = [p.strip() for p in lottery_prompts()]
    prompts = (prompts * (len(trees) // len(prompts) + 1))[:len(trees)]
    from agent.chat import Answerer
    from agent.engine import open_engine
    from agent.model import resolve_base
    from agent.retrieval import KnowledgeBase

    with tempfile.TemporaryDirectory(prefix="history_bleed_") as tmp:
        settings = Settings.from_env(data_dir=args.data_dir or Path(tmp), chroma_url="")
        folder = resolve_base(settings.base_model, settings.models_dir)
        kb = KnowledgeBase.from_settings(settings)  # an empty store: its embedder, for the app's history rule
        engine, embedder = open_engine(settings), kb.embedder
        answerer = Answerer(engine, settings, kb)
        kept_by_app = answerer.context  # (question, history) -> the history the app gives the model
        template = answerer.template("plain")
        report = {"engine": type(engine).__name__, "decoding": str(answerer.decoding()), "tokens": args.tokens,
                  "changes_of_subject": subject_changes(engine, template, trees, prompts, args.tokens,
                                                        answerer.decoding(), embedder, kept_by_app),
                  "similarity_to_previous_turn": separability(embedder, trees, prompts)}
        engine.close()
        print(json.dumps(report["changes_of_subject"]), file=sys.stderr, flush=True)
        if not args.no_teacher_forcing:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tok = AutoTokenizer.from_pretrained(folder)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
            report["real_follow_ups"] = real_follow_ups(trees, template, model, tok, kept_by_app)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
