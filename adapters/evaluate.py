"""Evaluation of adapter versions on held-out feedback, and the promotion gate.

    reports = evaluate(settings, data_dir, {"candidate": folder, "active": None})   # None = the base model
    promote, reasons = gate(reports["candidate"], reports["active"], margin=0.05)

A report has these parts, each computed the same way for every policy:
- `pref`: on `dpo_eval.jsonl`, the implicit reward of each pair, (logp(chosen) - logp_base(chosen)) -
  (logp(rejected) - logp_base(rejected)); `accuracy` = share of pairs with a positive reward (ties count half, so the
  base itself scores 0.5), `raw_accuracy` = share with logp(chosen) > logp(rejected), `ci` its 95% interval.
- `similarity`: greedy answers to the `sft_eval.jsonl` prompts against their gold answers (the users' edits or
  approved answers): ROUGE-L F and token F1.
- `general`: a fixed set of general prompts (`adapters.regression.GENERAL`): answers non-empty, still correct (key
  words present), repetition, degenerate count, and perplexity of reference answers relative to the base
  (`ppl_ratio`; the first SKIP_OPENING answer tokens are left out, since a learned style legitimately changes how
  answers open).
- `answers`: every answer to the held-out feedback prompts, the general prompts and the open-ended regression set
  (`OPEN`): relevance to the prompt (MiniLM cosine, with the phrases most held-out edits add left out:
  `relevance_without`), distinct share, share made only of boilerplate, loop share,
  median length, share run to the token cap (`adapters.collapse`).
- `qa`: questions about an invented passage given in the prompt (`PASSAGES`): contains-gold, with its 95% CI.
- `examples`: held-out and open-ended prompts with this policy's answers, for a side-by-side view.

Out of process: `python -m adapters.evaluate --data DIR --policy candidate=FOLDER --policy active=base --out FILE`.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import re
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from adapters import collapse, edit_style
from adapters.gate import gate  # noqa: F401  (the gate's home is adapters.gate; callers import it from here too)
from adapters.regression import GENERAL, OPEN, PASSAGES, passage_prompt
from agent.settings import Settings

SKIP_OPENING = 4  # answer tokens left out of the reference perplexity: a style (an opening phrase) may change them


@dataclass
class EvalConfig:
    max_pref: int = 32  # preference pairs scored
    max_generate: int = 6  # held-out prompts answered for similarity
    general: int = 10  # general prompts (regression)
    open: int = 12  # open-ended regression prompts (collapse, relevance, loops, length), chatty turns included
    passages: int = 8  # reading checks with the passage in the prompt (contains-gold)
    max_new_tokens: int = 40
    open_new_tokens: int = 48  # open-ended answers need room to show a loop or a runaway length
    passage_new_tokens: int = 24  # the gold answer is a name or a number: it comes first or not at all
    max_length: int = 384  # tokens of prompt + answer when scoring
    batch_size: int = 8
    # answers decoded as the app serves them (greedy, with the settings' repetition penalty and n-gram ban): the
    # gate judges what users would read; False: plain greedy, as before
    served_decoding: bool = True


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


class _Words:
    """rouge-score's tokenizer seam: our word tokens (any script, not only a-z0-9), so scores match `token_f1`'s."""

    @staticmethod
    def tokenize(text: str) -> list[str]:
        return words(text)


@functools.cache
def _rouge():
    """rouge-score's scorer, made on first use: importing it imports nltk (~2 s), which every process that imports
    this module (the app, each `kaizen` command) would pay at start for a score only the gate computes."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=_Words())


def rouge_l(prediction: str, gold: str) -> float:
    """ROUGE-L F1 on lower-cased word tokens (Google's rouge-score)."""
    p, g = words(prediction), words(gold)
    if not p or not g:
        return float(p == g)
    return _rouge().score(gold, prediction)["rougeL"].fmeasure


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
            "margin_mean": _mean(margins), "ci": collapse.wilson(acc * len(margins), len(margins))}


def similarity_summary(answers: list[str], golds: list[str], replaced: list[str | None] | None = None) -> dict:
    """ROUGE-L F and token F1 of the answers against their gold answers; where a gold answer is a user's edit and
    the answer it replaced is known (`replaced[i]`), `toward_edits`: the mean of ROUGE-L(answer, edit) -
    ROUGE-L(answer, original) over those, i.e. whether the answers read more like what users changed answers into
    than like what they changed them from (the content the two share cancels out)."""
    if not answers:
        return {"n": 0, "rouge_l": None, "token_f1": None}
    out = {"n": len(answers), "rouge_l": _mean(rouge_l(a, g) for a, g in zip(answers, golds)),
           "token_f1": _mean(token_f1(a, g) for a, g in zip(answers, golds))}
    moved = [rouge_l(a, g) - rouge_l(a, r) for a, g, r in zip(answers, golds, replaced or []) if r is not None]
    if moved:
        out.update(toward_edits=_mean(moved), toward_edits_n=len(moved))
    return out


def replaced_answers(gold: list[tuple[list, str]], pref: list[tuple]) -> list[str | None]:
    """For each held-out (prompt, gold answer): the answer the user replaced with it, when a held-out preference
    pair has the same prompt and the gold answer as its chosen side (an edit's pair), else None. Pure."""
    originals = {(_text(p), _text(c)): _text(r) for p, c, r in pref}
    return [originals.get((_text(p), g)) for p, g in gold]


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


def qa_summary(answers: list[str], golds: list[list[str]]) -> dict:
    """Questions about a passage given in the prompt: share of answers containing a gold answer, with its CI."""
    from adapters.scoring import contains_gold

    if not answers:
        return {"n": 0, "contains_gold": None}
    hits = sum(contains_gold(a, g) for a, g in zip(answers, golds))
    return {"n": len(answers), "contains_gold": hits / len(answers), "ci": collapse.wilson(hits, len(answers))}


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
             batch_size: int = 8, capped: list | None = None, decoding=None) -> list[str]:
    """Answers batched with left padding: greedy, or as `decoding` (agent.decoding.Decoding) says, its anti-loop
    rule as the serving engine applies it (`loop_rule`: the n-gram ban on the answer, or llama.cpp's DRY over
    prompt + answer, the padding left out); `capped` (a list) gets, per answer, whether it ran to `max_new_tokens`
    without ending."""
    import torch

    from agent.decoding import Decoding

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
        how = (decoding or Decoding()).generate_kwargs(width, tokenizer=tok)
        with torch.inference_mode():  # Decoding(): plain greedy
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=tok.eos_token_id, **how)
        answers += [tok.decode(o[width:], skip_special_tokens=True).strip() for o in out]
        if capped is not None:
            capped += [tok.eos_token_id not in o[width:].tolist() for o in out]
    return answers


def from_edit(row: dict) -> bool:
    """Was this dataset row made from a user's edit of an answer (its provenance names an edit event)?"""
    return any(str(s).startswith("edit:") for s in row.get("source") or [])


def load_eval_data(data_dir: str | Path, config: EvalConfig) -> dict:
    """Held-out rows: preference pairs (dpo_eval) and prompts with gold answers (sft_eval)."""
    from adapters.trainers import read_jsonl

    d = Path(data_dir)

    def rows(name):
        p = d / f"{name}.jsonl"
        return read_jsonl(p) if p.exists() else []

    dpo = rows("dpo_eval")[: config.max_pref]
    pref = [(r["prompt"], r["chosen"], r["rejected"]) for r in dpo]
    gold = [(r["messages"][:-1], r["messages"][-1]["content"]) for r in rows("sft_eval")][: config.max_generate]
    try:  # the general prompts get the system message the training rows were built with (what the app sends)
        system = json.loads((d / "manifest.json").read_text(encoding="utf-8"))["config"].get("system")
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        system = None
    edit_pairs = [(_text(r["rejected"]), _text(r["chosen"])) for r in dpo if from_edit(r)]  # (original, edited)
    return {"pref": pref, "pref_edits": len(edit_pairs), "edit_pairs": edit_pairs, "gold": gold,
            "general": GENERAL[: config.general],
            "open": OPEN[: config.open], "passages": PASSAGES[: config.passages],
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


def _text(turns) -> str:
    """The text of a TRL conversational field (a list of messages: its last one) or of a plain string."""
    if isinstance(turns, str):
        return turns
    return str((turns[-1] or {}).get("content") or "") if turns else ""


def relevance(prompts: list[str], answers: list[str]) -> list[float]:
    """Cosine of each prompt and its answer with the bundled MiniLM (an empty answer scores 0)."""
    from agent.embeddings import Embedder, cosine

    emb = Embedder()
    pv, av = emb.embed(prompts), emb.embed([a or " " for a in answers])
    return [cosine(p, q) if a.strip() else 0.0 for p, q, a in zip(pv, av, answers)]


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

    def user(q):
        return sys_msg + [{"role": "user", "content": q}]

    refs = [(user(q), [{"role": "assistant", "content": a}]) for q, a, _ in data["general"]]
    short = [p for p, _ in data["gold"]] + [user(q) for q, _, _ in data["general"]]
    passages = [user(passage_prompt(p, q)) for p, q, _ in data["passages"]]
    open_prompts = [user(q) for q in data["open"]]
    n_gold = len(data["gold"])

    def score(model):
        lp = sequence_logps(model, tok, pairs, dev, config.max_length, config.batch_size)
        ref_lp = sequence_logps(model, tok, refs, dev, config.max_length, config.batch_size, skip=SKIP_OPENING)
        n = len(data["pref"])
        nll = -sum(s for s, _ in ref_lp) / max(1, sum(c for _, c in ref_lp)) if ref_lp else None
        return [s for s, _ in lp[:n]], [s for s, _ in lp[n:2 * n]], nll

    from agent.decoding import served_decoding  # (torch and transformers: the child process has them already)

    how = served_decoding(settings, temperature=0.0) if config.served_decoding else None

    def answer(model):
        capped = []
        out = generate(model, tok, short, dev, config.max_new_tokens, config.batch_size, capped, how)
        out += generate(model, tok, open_prompts, dev, config.open_new_tokens, config.batch_size, capped, how)
        return out, capped, generate(model, tok, passages, dev, config.passage_new_tokens, config.batch_size,
                                     decoding=how)

    # how related to their questions the answers users preferred read (MiniLM), beside the answers they replaced
    # (an edit's original, a pick's other answer): a style can cost relevance by itself (a cut to the first
    # sentences), and the gate allows a candidate that much (adapters/gate.py style_shift). Relevance is measured on
    # what an answer says: the phrases most held-out edits add (an opening, a sign-off) are left out of it.
    sig = edit_style.signature(data.get("edit_pairs") or [])  # what most held-out edits changed the same way
    asked_pref = [_text(p) for p, _, _ in data["pref"]]
    chosen_rel = relevance(asked_pref, [edit_style.without_phrases(sig, _text(c)) for _, c, _ in data["pref"]]) \
        if asked_pref else []
    replaced_rel = relevance(asked_pref, [edit_style.without_phrases(sig, _text(r)) for _, _, r in data["pref"]]) \
        if asked_pref else []
    replaced = replaced_answers(data["gold"], data["pref"])  # the answer each held-out edit replaced, if known
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
        answers, capped, qa_a = pol.run(name if folder is not None else None, answer)
        gold_a, gen_a, open_a = answers[:n_gold], answers[n_gold:len(short)], answers[len(short):]
        # "does it still answer?": every answer but the passage checks (their prompts are mostly the passage)
        asked = [p[-1]["content"] for p in short + open_prompts]
        margins = [(ci - bc) - (ri - br) for ci, ri, bc, br in zip(c, r, base_c, base_r)]
        rel = relevance(asked, [edit_style.without_phrases(sig, a) for a in answers])
        answer_set = collapse.answer_set_summary(answers, rel, capped)
        if sig and sig["phrases"]:
            answer_set["relevance_without"] = list(sig["phrases"])
        if chosen_rel:  # the held-out pairs: the answers users preferred, and the ones they replaced
            answer_set["preferred_relevance"] = sum(chosen_rel) / len(chosen_rel)
            answer_set["replaced_relevance"] = sum(replaced_rel) / len(replaced_rel)
        reports[name] = {
            "policy": folder or "base",
            "pref": pref_summary(margins, [ci - ri for ci, ri in zip(c, r)]) | {"from_edits": data["pref_edits"]},
            "similarity": similarity_summary(gold_a, [g for _, g in data["gold"]], replaced),
            "general": general_summary(gen_a, nll, base_nll, [k for _, _, k in data["general"]]),
            "answers": answer_set,
            "qa": qa_summary(qa_a, [g for _, _, g in data["passages"]]),
            "edit_style": {"signature": sig, "shown": edit_style.follows(
                sig, gold_a + open_a, capped[:n_gold] + capped[len(short):])},
            "samples": [{"prompt": p[-1]["content"], "answer": a, "gold": g}
                        for (p, g), a in zip(data["gold"][:3], gold_a)]
                       + [{"prompt": q, "answer": a} for (q, _, _), a in zip(data["general"][:3], gen_a)],
            "examples": [{"prompt": q, "answer": a} for q, a in zip(asked[:n_gold] + data["open"],
                                                                   gold_a + open_a)],
            "decoding": asdict(how) if how is not None else "greedy",  # how its answers were decoded
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
