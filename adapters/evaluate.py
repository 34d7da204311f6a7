"""Evaluation of adapter versions on held-out feedback, and the promotion gate.

    reports = evaluate(settings, data_dir, {"candidate": folder, "active": None})   # None = the base model
    promote, reasons = gate(reports["candidate"], reports["active"], margin=0.05)

A report has three parts, each computed the same way for every policy:
- `pref`: on `dpo_eval.jsonl`, the implicit reward of each pair, (logp(chosen) - logp_base(chosen)) -
  (logp(rejected) - logp_base(rejected)); `accuracy` = share of pairs with a positive reward (ties count half, so the
  base itself scores 0.5), `raw_accuracy` = share with logp(chosen) > logp(rejected).
- `similarity`: greedy answers to the `sft_eval.jsonl` prompts against their gold answers (the users' edits or
  approved answers): ROUGE-L F and token F1.
- `general`: a fixed set of general prompts: answers non-empty, still correct (key words present), repetition,
  degenerate count, and perplexity of reference answers relative to the base (`ppl_ratio`; the first
  SKIP_OPENING answer tokens are left out, since a learned style legitimately changes how answers open).

Out of process: `python -m adapters.evaluate --data DIR --policy candidate=FOLDER --policy active=base --out FILE`.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from agent.settings import Settings

GENERAL = [  # (prompt, reference answer, words a correct answer contains; "a|b" = either): a regression set
    ("What is the capital of France?", "The capital of France is Paris. It is also the largest city in the country.",
     ["paris"]),
    ("Name three primary colors.", "The three primary colors are red, yellow and blue. Mixing them gives the other "
     "colors.", ["red", "blue"]),
    ("How many days are there in a week?", "There are seven days in a week, from Monday to Sunday.", ["seven|7"]),
    ("What does a thermometer measure?", "A thermometer measures temperature, for example of the air or of a "
     "person's body.", ["temperature"]),
    ("What is 2 plus 3?", "2 plus 3 equals 5. Adding two and three gives five.", ["5|five"]),
    ("Which planet do we live on?", "We live on Earth, the third planet from the Sun.", ["earth"]),
    ("What color is the sky on a clear day?", "On a clear day the sky is blue, because air scatters blue light "
     "the most.", ["blue"]),
    ("How many legs does a spider have?", "A spider has eight legs, while insects have six.", ["eight|8"]),
    ("What is the opposite of hot?", "The opposite of hot is cold. Ice, for example, is cold.", ["cold"]),
    ("What do bees make?", "Bees make honey from the nectar they collect from flowers.", ["honey"]),
]
SKIP_OPENING = 4  # answer tokens left out of the reference perplexity: a style (an opening phrase) may change them


@dataclass
class EvalConfig:
    max_pref: int = 32  # preference pairs scored
    max_generate: int = 6  # held-out prompts answered for similarity
    general: int = 10  # general prompts (regression)
    max_new_tokens: int = 40
    max_length: int = 384  # tokens of prompt + answer when scoring
    batch_size: int = 8


# ---------------------------------------------------------------------------------------------- pure metrics
def words(text: str) -> list[str]:
    return re.findall(r"\w+", (text or "").lower())


def token_f1(prediction: str, gold: str) -> float:
    p, g = words(prediction), words(gold)
    if not p or not g:
        return float(p == g)
    common = sum((Counter(p) & Counter(g)).values())
    if not common:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def lcs_length(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, gold: str) -> float:
    """ROUGE-L F1 on lower-cased word tokens."""
    p, g = words(prediction), words(gold)
    if not p or not g:
        return float(p == g)
    lcs = lcs_length(p, g)
    if not lcs:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(g)
    return 2 * precision * recall / (precision + recall)


def repetition(text: str, n: int = 3) -> float:
    """Share of word n-grams that repeat an earlier one (0 = none, near 1 = a loop)."""
    w = words(text)
    grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
    if not grams:
        return 0.0
    return 1 - len(set(grams)) / len(grams)


def degenerate(text: str) -> bool:
    """Empty, or stuck in a loop."""
    return not (text or "").strip() or (len(words(text)) >= 12 and repetition(text) > 0.5)


def _mean(xs) -> float | None:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


def pref_summary(margins: list[float], raw: list[float]) -> dict:
    """Implicit-reward margins (policy vs base) and raw logp differences (chosen - rejected) -> the pref part."""
    if not margins:
        return {"n": 0, "accuracy": None, "raw_accuracy": None, "margin_mean": None}
    acc = sum(1.0 if m > 1e-6 else 0.5 if abs(m) <= 1e-6 else 0.0 for m in margins) / len(margins)
    return {"n": len(margins), "accuracy": acc, "raw_accuracy": sum(r > 0 for r in raw) / len(raw),
            "margin_mean": _mean(margins)}


def similarity_summary(answers: list[str], golds: list[str]) -> dict:
    if not answers:
        return {"n": 0, "rouge_l": None, "token_f1": None}
    return {"n": len(answers), "rouge_l": _mean(rouge_l(a, g) for a, g in zip(answers, golds)),
            "token_f1": _mean(token_f1(a, g) for a, g in zip(answers, golds))}


def mentions(answer: str, keywords: list[str]) -> bool:
    """Every keyword ("a|b": either word) appears in the answer as a whole word."""
    have = set(words(answer))
    return all(any(alt in have for alt in k.lower().split("|")) for k in keywords)


def general_summary(answers: list[str], nll: float | None, base_nll: float | None,
                    keywords: list[list[str]] | None = None) -> dict:
    if not answers:
        return {"n": 0}
    ppl = math.exp(nll) if nll is not None else None
    base_ppl = math.exp(base_nll) if base_nll is not None else None
    correct = (sum(mentions(a, k) for a, k in zip(answers, keywords)) / len(answers)) if keywords else None
    return {"n": len(answers), "nonempty": sum(bool(a.strip()) for a in answers) / len(answers),
            "correct": correct,
            "repetition": _mean(repetition(a) for a in answers), "degenerate": sum(map(degenerate, answers)),
            "ppl": ppl, "ppl_base": base_ppl, "ppl_ratio": ppl / base_ppl if ppl and base_ppl else None}


def _get(report: dict | None, part: str, key: str):
    value = ((report or {}).get(part) or {}).get(key)
    return value if isinstance(value, (int, float)) else None


def gate(candidate: dict, active: dict, margin: float = 0.05, *, max_ppl_ratio: float = 2.0,
         max_repetition: float = 0.5, max_correct_drop: float = 0.2) -> tuple[bool, list[str]]:
    """Promote the candidate? It must pass the regression checks (general prompts: no more empty or looping
    answers than the active policy, facts still right within `max_correct_drop`, reference perplexity within
    `max_ppl_ratio` of the base's), lose no compared metric by more than `margin`, and win at least one
    (preference accuracy, similarity to edits) by `margin` or more over the active policy (the base when nothing
    is active). Pure; returns (promote, reasons)."""
    ok, reasons = True, []
    g = (candidate or {}).get("general") or {}
    if g.get("n"):
        floor = min(1.0, _get(active, "general", "nonempty") if _get(active, "general", "nonempty") is not None
                    else 1.0)
        if g.get("nonempty", 1) < floor:
            ok = False
            reasons.append(f"regression: {1 - g['nonempty']:.0%} of general prompts got an empty answer")
        if g.get("degenerate", 0) > (_get(active, "general", "degenerate") or 0):
            ok = False
            reasons.append(f"regression: {g['degenerate']} degenerate (looping) answers on general prompts")
        was = _get(active, "general", "correct")
        if g.get("correct") is not None and was is not None and g["correct"] < was - max_correct_drop:
            ok = False
            reasons.append(f"regression: general prompts answered correctly {g['correct']:.0%} vs {was:.0%}")
        if (g.get("repetition") or 0) > max_repetition:
            ok = False
            reasons.append(f"regression: repetition {g['repetition']:.2f} > {max_repetition}")
        if g.get("ppl_ratio") is not None and g["ppl_ratio"] > max_ppl_ratio:
            ok = False
            reasons.append(f"regression: perplexity on reference answers {g['ppl_ratio']:.2f}x the base's "
                           f"(limit {max_ppl_ratio}x)")
        if ok:
            ratio = g.get("ppl_ratio")
            reasons.append("regression checks passed" + (f" (perplexity {ratio:.2f}x base)" if ratio else ""))
    wins = 0
    compared = 0
    for label, part, key in (("preference accuracy", "pref", "accuracy"), ("similarity to edits", "similarity",
                                                                            "rouge_l")):
        c, a = _get(candidate, part, key), _get(active, part, key)
        if c is None or a is None:
            continue
        compared += 1
        delta = c - a
        text = f"{label}: {c:.3f} vs active {a:.3f} ({delta:+.3f})"
        if delta < -margin:
            ok = False
            reasons.append(text + f": worse by more than the margin {margin}")
        elif delta >= margin:
            wins += 1
            reasons.append(text + ": better")
        else:
            reasons.append(text + ": within the margin")
    if not compared:
        ok = False
        reasons.append("no held-out preference or edit data to compare on")
    elif not wins:
        ok = False
        reasons.append(f"does not beat the active policy by the margin {margin} on any metric")
    return ok, reasons


# ---------------------------------------------------------------------------------------------- model side
def _ids(tok, messages: list[dict], generation_prompt: bool) -> list[int]:
    out = tok.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True)
    if isinstance(out, dict) or hasattr(out, "input_ids"):
        out = out["input_ids"]
    return list(out)


def encode_pair(tok, prompt: list[dict], completion: list[dict], max_length: int) -> tuple[list[int], int]:
    """(ids of prompt + completion, index where the completion starts), truncated to max_length."""
    p = _ids(tok, prompt, True)
    full = _ids(tok, prompt + completion, False)
    if full[:len(p)] != p:  # a template that re-renders the prompt differently: fall back to plain text
        full = p + tok(completion[-1]["content"] + (tok.eos_token or ""), add_special_tokens=False)["input_ids"]
    full = full[:max_length]
    return full, min(len(p), len(full) - 1)


def sequence_logps(model, tok, pairs: list[tuple[list[dict], list[dict]]], device: str, max_length: int = 512,
                   batch_size: int = 8, skip: int = 0) -> list[tuple[float, int]]:
    """(sum of log-probs of the completion tokens, their count) for each (prompt, completion) pair; `skip`
    leaves out the first completion tokens (at most all but one)."""
    import torch

    enc = [encode_pair(tok, p, c, max_length) for p, c in pairs]
    out = []
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    for i in range(0, len(enc), batch_size):
        chunk = enc[i:i + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for j, (row, _) in enumerate(chunk):
            ids[j, :len(row)] = torch.tensor(row)
            mask[j, :len(row)] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            tok_lp = logp.gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1).cpu()
        for j, (row, start) in enumerate(chunk):
            first = min(start + skip, len(row) - 1)
            span = tok_lp[j, first - 1:len(row) - 1]
            out.append((float(span.sum()), int(span.numel())))
    return out


def generate(model, tok, prompts: list[list[dict]], device: str, max_new_tokens: int = 64,
             batch_size: int = 8) -> list[str]:
    """Greedy answers, batched with left padding."""
    import torch

    answers = []
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    for i in range(0, len(prompts), batch_size):
        rows = [_ids(tok, p, True) for p in prompts[i:i + batch_size]]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            ids[j, width - len(r):] = torch.tensor(r)
            mask[j, width - len(r):] = 1
        with torch.inference_mode():
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=tok.eos_token_id,
                                 temperature=None, top_p=None, top_k=None)
        answers += [tok.decode(o[width:], skip_special_tokens=True).strip() for o in out]
    return answers


def load_eval_data(data_dir: str | Path, config: EvalConfig) -> dict:
    """Held-out rows: preference pairs (dpo_eval) and prompts with gold answers (sft_eval)."""
    from adapters.trainers import read_jsonl

    d = Path(data_dir)

    def rows(name):
        p = d / f"{name}.jsonl"
        return read_jsonl(p) if p.exists() else []

    pref = [(r["prompt"], r["chosen"], r["rejected"]) for r in rows("dpo_eval")][: config.max_pref]
    gold = [(r["messages"][:-1], r["messages"][-1]["content"]) for r in rows("sft_eval")][: config.max_generate]
    try:  # the general prompts get the system message the training rows were built with (what the app sends)
        system = json.loads((d / "manifest.json").read_text(encoding="utf-8"))["config"].get("system")
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        system = None
    return {"pref": pref, "gold": gold, "general": GENERAL[: config.general],
            "system": [{"role": "system", "content": system}] if system else []}


class _Policies:
    """The base model plus named policies: LoRA folders attached as peft adapters, full-model folders loaded
    beside it. `use(name)` returns the model to run (None = the base)."""

    def __init__(self, settings: Settings, folders: dict[str, str | None]):
        import torch
        from transformers import AutoModelForCausalLM

        from adapters.registry import weight_kind
        from agent.model import load_base, pick_device

        self.model, self.tok, self.device = load_base(settings)
        self.tok.padding_side = "left"
        self.full, lora = {}, {}
        for name, folder in folders.items():
            if folder is None:
                continue
            if weight_kind(Path(folder)) == "full":
                _, dtype = pick_device(self.device)
                self.full[name] = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(self.device).eval()
            else:
                lora[name] = folder
        if lora:
            from peft import PeftModel

            first, *rest = lora.items()
            self.model = PeftModel.from_pretrained(self.model, first[1], adapter_name=first[0])
            for name, folder in rest:
                self.model.load_adapter(folder, adapter_name=name)
            self.model.eval()
        self.lora = set(lora)
        torch.set_num_threads(settings.threads)

    def run(self, name: str | None, fn):
        import contextlib

        if name in self.full:
            return fn(self.full[name])
        if name in self.lora:
            self.model.set_adapter(name)
            return fn(self.model)
        ctx = self.model.disable_adapter() if self.lora else contextlib.nullcontext()
        with ctx:
            return fn(self.model)


def evaluate(settings: Settings, data_dir: str | Path, policies: dict[str, str | None],
             config: EvalConfig | None = None, progress=None) -> dict[str, dict]:
    """Reports for each named policy (folder, or None for the base) on the held-out data of `data_dir`."""
    config = config or EvalConfig()
    say = progress or (lambda e: None)
    data = load_eval_data(data_dir, config)
    started = time.perf_counter()
    pol = _Policies(settings, policies)
    tok, dev = pol.tok, pol.device
    pairs = [(p, c) for p, c, _ in data["pref"]] + [(p, r) for p, _, r in data["pref"]]
    sys_msg = data.get("system", [])
    refs = [(sys_msg + [{"role": "user", "content": q}], [{"role": "assistant", "content": a}])
            for q, a, _ in data["general"]]
    prompts = [p for p, _ in data["gold"]] + [sys_msg + [{"role": "user", "content": q}] for q, _, _ in data["general"]]

    def score(model):
        lp = sequence_logps(model, tok, pairs, dev, config.max_length, config.batch_size)
        ref_lp = sequence_logps(model, tok, refs, dev, config.max_length, config.batch_size, skip=SKIP_OPENING)
        n = len(data["pref"])
        nll = -sum(s for s, _ in ref_lp) / max(1, sum(c for _, c in ref_lp)) if ref_lp else None
        return [s for s, _ in lp[:n]], [s for s, _ in lp[n:2 * n]], nll

    say({"event": "eval", "stage": "base"})
    base_c, base_r, base_nll = pol.run(None, score)
    reports = {}
    for name, folder in policies.items():
        t0 = time.perf_counter()
        say({"event": "eval", "stage": name})
        if folder is None:
            c, r, nll = base_c, base_r, base_nll
        else:
            c, r, nll = pol.run(name, score)
        answers = pol.run(name if folder is not None else None,
                          lambda m: generate(m, tok, prompts, dev, config.max_new_tokens, config.batch_size))
        n_gold = len(data["gold"])
        margins = [(ci - bc) - (ri - br) for ci, ri, bc, br in zip(c, r, base_c, base_r)]
        reports[name] = {
            "policy": folder or "base",
            "pref": pref_summary(margins, [ci - ri for ci, ri in zip(c, r)]),
            "similarity": similarity_summary(answers[:n_gold], [g for _, g in data["gold"]]),
            "general": general_summary(answers[n_gold:], nll, base_nll, [k for _, _, k in data["general"]]),
            "samples": [{"prompt": p[-1]["content"], "answer": a, "gold": g}
                        for (p, g), a in zip(data["gold"][:3], answers[:3])]
                       + [{"prompt": q, "answer": a} for (q, _, _), a in zip(data["general"][:3], answers[n_gold:])],
            "seconds": round(time.perf_counter() - t0, 2),
        }
    say({"event": "done", "seconds": round(time.perf_counter() - started, 2)})
    return reports


# ---------------------------------------------------------------------------------------------- out of process
def run_evaluation(settings: Settings, data_dir: str | Path, policies: dict[str, str | None], out_file: str | Path,
                   config: EvalConfig | None = None, progress=None, timeout: float | None = None,
                   stop=None) -> dict[str, dict]:
    """`evaluate` in a child process; the reports are also written to `out_file` (JSON)."""
    from adapters.train import run_module

    out_file = Path(out_file)
    argv = ["--data", str(data_dir), "--out", str(out_file),
            "--config", json.dumps(asdict(config or EvalConfig()))]
    for name, folder in policies.items():
        argv += ["--policy", f"{name}={folder or 'base'}"]
    run_module("adapters.evaluate", argv, settings, out_file.with_suffix(".log"), progress, timeout, stop)
    return json.loads(out_file.read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
    from adapters.registry import write_json
    from adapters.train import emit

    p = argparse.ArgumentParser(prog="python -m adapters.evaluate", description="Evaluate adapter versions.")
    p.add_argument("--data", required=True, help="folder with dpo_eval.jsonl / sft_eval.jsonl")
    p.add_argument("--policy", action="append", required=True, metavar="NAME=FOLDER|base")
    p.add_argument("--out", required=True, help="JSON file for the reports")
    p.add_argument("--config", default="{}", help="EvalConfig fields as JSON")
    args = p.parse_args(argv)
    policies = {}
    for item in args.policy:
        name, _, folder = item.partition("=")
        policies[name] = None if folder in ("", "base") else folder
    reports = evaluate(Settings.from_env(), args.data, policies, EvalConfig(**json.loads(args.config)),
                       progress=lambda e: emit(e) if e.get("event") != "done" else None)
    write_json(Path(args.out), reports)
    emit({"event": "done", "policies": list(reports)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
