"""The pieces of a training run that need no process of their own: reading and checking rows in the TRL
schemas, the TRL config and LoRA config for a recipe, mixed precision, KTO weights, the run summary.
`adapters.train` puts them together (and re-exports them)."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from adapters.config import Recipe, check_method

DATA_FILE = {"sft": "sft.jsonl", "dpo": "dpo.jsonl", "kto": "kto.jsonl", "full": "sft.jsonl"}


# ---------------------------------------------------------------------------------------------- rows
def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file; a clear error names the bad line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from e
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object")
            rows.append(row)
    return rows


def _is_messages(value) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value)


def check_rows(method: str, rows: list[dict], where: str = "") -> None:
    """Refuse rows that are not in the method's TRL conversational schema (before any model is loaded)."""
    if not rows:
        raise ValueError(f"{where or method}: no training rows")
    for i, r in enumerate(rows):
        at = f"{where or method} row {i}"
        if method in ("sft", "full"):
            if not _is_messages(r.get("messages")) or r["messages"][-1]["role"] != "assistant" \
                    or len(r["messages"]) < 2:
                raise ValueError(f"{at}: expected 'messages' ending with an assistant turn")
        else:
            if not _is_messages(r.get("prompt")):
                raise ValueError(f"{at}: expected 'prompt' as a list of messages")
            keys = ("chosen", "rejected") if method == "dpo" else ("completion",)
            for k in keys:
                if not _is_messages(r.get(k)):
                    raise ValueError(f"{at}: expected {k!r} as a list of assistant messages")
            if method == "kto" and not isinstance(r.get("label"), bool):
                raise ValueError(f"{at}: expected 'label' true or false")


def rows_for_steps(rows: list[dict], recipe: Recipe, seed: int = 0) -> list[dict]:
    """With `max_steps` shorter than an epoch, the rows those steps will see (a seeded sample, original order):
    preference trainers then precompute reference log-probs for these only, not for the whole file."""
    need = recipe.max_steps * recipe.batch_size * recipe.grad_accum
    if not recipe.max_steps or need >= len(rows):
        return rows
    import random

    keep = sorted(random.Random(seed).sample(range(len(rows)), need))
    return [rows[i] for i in keep]


def to_prompt_completion(row: dict) -> dict:
    """SFT `messages` row -> conversational prompt/completion, so the loss covers the answer only."""
    return {"prompt": row["messages"][:-1], "completion": row["messages"][-1:]}


def training_rows(method: str, rows: list[dict]) -> list[dict]:
    """The columns each TRL trainer needs, nothing else (provenance columns such as `source` are dropped)."""
    if method in ("sft", "full"):
        return [to_prompt_completion(r) for r in rows]
    keys = ("prompt", "chosen", "rejected") if method == "dpo" else ("prompt", "completion", "label")
    return [{k: r[k] for k in keys} for r in rows]


def replay_rows(model, tok, device: str, rows: list[dict], share: float, max_new_tokens: int = 96,
                shape: dict | None = None) -> list[dict]:
    """SFT rows of the base's own answers (greedy, cut to their last full sentence) to `share` x len(rows) of the
    replay prompts (`adapters.regression.REPLAY`), plus as many questions about a passage (`REPLAY_PASSAGES`, at
    most 8; kept only where the base's answer holds the gold answer), with the system message of the feedback rows:
    mixed into the training data they keep an adapter answering, and reading what it is given, instead of
    collapsing onto what the edits have in common. (Edits that append a TL;DR taught an adapter to answer "Answer
    the question from the passage" with a TL;DR of the passage: 1 of 8 gold answers, the base 4 of 8.) Each replayed
    answer takes the shape the rows' answers share (`answer_shape`: their fixed opening or sign-off, their length),
    so replay keeps the content without teaching the opposite of the users' edits; pass `shape` when it is known."""
    from adapters.evaluate import generate
    from adapters.regression import REPLAY, REPLAY_PASSAGES, passage_prompt

    k = min(len(REPLAY), round(share * len(rows)))
    if not k:
        return []
    reading = REPLAY_PASSAGES[:k]
    system = [m for m in rows[0]["messages"][:1] if m["role"] == "system"] if rows else []
    questions = REPLAY[:k] + [passage_prompt(p, q) for p, q, _ in reading]
    golds = [None] * k + [g for _, _, g in reading]
    prompts = [system + [{"role": "user", "content": q}] for q in questions]
    side, tok.padding_side = tok.padding_side, "left"
    try:
        answers = generate(model, tok, prompts, device, max_new_tokens)
    finally:
        tok.padding_side = side
    if shape is None:
        shape = answer_shape([r["messages"][-1]["content"] for r in rows])
    return [{"messages": p + [{"role": "assistant", "content": in_shape(kept, shape)}], "source": ["replay"]}
            for p, a, gold in zip(prompts, answers, golds) if (kept := replay_answer(a, gold))]


def replay_answer(answer: str, gold: list[str] | None = None) -> str | None:
    """A base answer as a replay row keeps it: cut to its last full sentence; None when nothing is left or, for a
    question about a passage (`gold`), when it does not hold the gold answer (a misread is not worth keeping). Pure."""
    from adapters.scoring import contains_gold

    whole = re.match(r"(?s)(.*[.!?])", answer)
    kept = (whole.group(1) if whole else answer).strip()
    return kept if kept and (gold is None or contains_gold(kept, gold)) else None


SHAPE_SHARE = 0.6  # an opening or ending counts as the training answers' own when this share of them has it
SHAPE_WORDS = 12  # the longest fixed opening or ending looked for, in words


def _fixed(answers: list[str], end: bool) -> str:
    """The longest run of 2..SHAPE_WORDS words that at least SHAPE_SHARE of `answers` open (or, `end`, close) with,
    as the first such answer writes it (with the spacing before it, for an ending); "" when there is none. A run
    must stand on its own: an opening ends at punctuation ("Kaizen says:", not "Kaizen says: the"), an ending
    starts after a sentence or a line break."""
    words = [a.split() for a in answers]
    for k in range(SHAPE_WORDS, 1, -1):
        runs = [tuple(w[-k:] if end else w[:k]) for w in words if len(w) > k]  # a run must leave some answer
        if not runs:
            continue
        best, count = Counter(runs).most_common(1)[0]
        if count < SHAPE_SHARE * len(answers):
            continue
        a = next(a for a, w in zip(answers, words) if len(w) > k and tuple(w[-k:] if end else w[:k]) == best)
        pattern = r"\s+".join(map(re.escape, best))
        if end:
            m = re.search(r"\s*" + pattern + r"\s*$", a)
            if "\n" in m.group(0) or re.search(r"[.!?:]$", a[:m.start()]):
                return m.group(0).rstrip()
        elif re.search(r"[.!?:;,)\-]$", best[-1]):
            return re.search(r"^\s*" + pattern, a).group(0).strip()
    return ""


def answer_shape(answers: list[str]) -> dict:
    """What the training answers have in common that a replayed answer should not contradict. Pure.
    `opening` / `ending`: fixed text most of them open or close with (a house phrase, a sign-off);
    `max_words`: the upper quartile of their length without it.
    Replay rows are the base's own answers; unshaped, a quarter of the rows showed answers without the sign-off the
    users add and longer than they keep, which the adapter learned too (bench/style_suite.py: replay cut the styles'
    compliance from 94% to 78-88%)."""
    answers = [a for a in answers if (a or "").strip()]
    if not answers:
        return {"opening": "", "ending": "", "max_words": 0}
    opening, ending = _fixed(answers, end=False), _fixed(answers, end=True)
    skip = len(opening.split()) + len(ending.strip().split())
    lengths = sorted(max(len(a.split()) - skip, 0) for a in answers)
    return {"opening": opening, "ending": ending, "max_words": lengths[(3 * len(lengths)) // 4]}


def in_shape(answer: str, shape: dict) -> str:
    """`answer` cut to whole sentences within `max_words` (its first sentence at least), opening and closing with
    the shape's fixed text (once: an answer that has it already keeps one copy). Pure."""
    opening, ending = shape.get("opening") or "", (shape.get("ending") or "").strip()
    body = answer.strip()
    if opening and body.startswith(opening):
        body = body[len(opening):].lstrip()
    if ending and body.endswith(ending):
        body = body[:-len(ending)].rstrip()
    limit = shape.get("max_words") or 0
    if limit and len(body.split()) > limit:
        sentences = re.findall(r"(?s).*?[.!?](?=\s|$)", body)
        kept = ""
        for s in sentences:
            if kept and len((kept + s).split()) > limit:
                break
            kept += s
        body = kept.strip() or body
    if opening:
        body = f"{opening} {body}"
    if ending:
        spaced = shape["ending"]
        body += spaced if spaced[:1].isspace() else f" {spaced}"
    return body


def load_rows(method: str, data_dir: str | Path) -> list[dict]:
    path = Path(data_dir) / DATA_FILE[check_method(method)]
    if not path.exists():
        raise ValueError(f"{path} not found: build the datasets first (kaizen feedback export)")
    rows = read_jsonl(path)
    check_rows(method, rows, str(path))
    return rows


# ---------------------------------------------------------------------------------------------- TRL set-up
def trainer_args(method: str, recipe: Recipe, work_dir: Path, device: str, n_rows: int,
                 labels: list[bool] | None = None, bf16: bool = False):
    """The TRL config for `recipe` on `device` (bf16: mixed precision; no checkpoints, no reporting)."""
    from trl import DPOConfig, KTOConfig, SFTConfig

    common = dict(
        output_dir=str(work_dir), learning_rate=recipe.lr, num_train_epochs=recipe.epochs,
        max_steps=recipe.max_steps or -1, per_device_train_batch_size=min(recipe.batch_size, max(n_rows, 1)),
        gradient_accumulation_steps=recipe.grad_accum, warmup_steps=recipe.warmup_ratio,
        weight_decay=recipe.weight_decay, lr_scheduler_type=recipe.lr_scheduler, seed=recipe.seed,
        logging_steps=recipe.logging_steps, activation_checkpointing=recipe.gradient_checkpointing,
        bf16=bf16, fp16=False, use_cpu=device == "cpu", save_strategy="no", report_to=[],
        disable_tqdm=True, dataloader_num_workers=0, max_length=recipe.max_length, eval_strategy="no",
    )
    if method in ("sft", "full"):
        return SFTConfig(**common, packing=recipe.packing, completion_only_loss=True)
    if method == "dpo":
        return DPOConfig(**common, beta=recipe.beta, loss_type=[recipe.loss_type],
                         precompute_ref_log_probs=recipe.precompute_ref)
    dw, uw = kto_weights(labels or [], recipe.desirable_weight, recipe.undesirable_weight)
    return KTOConfig(**common, beta=recipe.beta, desirable_weight=dw, undesirable_weight=uw,
                     precompute_ref_log_probs=recipe.precompute_ref)


def kto_weights(labels: list[bool], desirable: float | None = None,
                undesirable: float | None = None) -> tuple[float, float]:
    """KTO loss weights. Given ones are kept; missing ones balance the counts so that weight x count is about
    equal for both sides (the range TRL recommends), e.g. 30 thumbs-up / 10 down -> (1.0, 3.0)."""
    n_up = max(sum(1 for x in labels if x), 1)
    n_down = max(len(labels) - sum(1 for x in labels if x), 1)
    if desirable is not None and undesirable is not None:
        return float(desirable), float(undesirable)
    if desirable is not None:
        return float(desirable), float(desirable) * n_up / n_down
    if undesirable is not None:
        return float(undesirable) * n_down / n_up, float(undesirable)
    return (n_down / n_up, 1.0) if n_down > n_up else (1.0, n_up / n_down)


def cpu_has_bf16() -> bool:
    """Native bf16 matmuls (AVX512-BF16 or AMX): there bf16 autocast trains ~1.5x faster than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def use_bf16(device: str, precision: str = "auto") -> bool:
    """Mixed precision for training: weights stay fp32 (CPU) and matmuls run in bf16 under autocast."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"KAIZEN_TRAIN_PRECISION={precision!r}: expected auto, bf16 or fp32")
    if precision != "auto":
        return precision == "bf16"
    if device == "cuda":
        import torch

        return torch.cuda.is_bf16_supported()
    return cpu_has_bf16()


def lora_config(recipe: Recipe):
    from peft import LoraConfig

    return LoraConfig(r=recipe.lora_r, lora_alpha=recipe.lora_alpha, lora_dropout=recipe.lora_dropout,
                      target_modules=recipe.target_modules, task_type="CAUSAL_LM", bias="none")


def summarize(method: str, history: list[dict], seconds: float, rows: int, trainable: int, total: int) -> dict:
    """The run's summary from the trainer's log history (pure)."""
    steps = [h for h in history if "loss" in h]
    final = history[-1] if history else {}
    tokens = max((h.get("num_tokens", 0) for h in history), default=0)
    out = {
        "method": method, "rows": rows, "steps": int(final.get("step", len(steps))),
        "train_loss": final.get("train_loss"), "first_loss": steps[0]["loss"] if steps else None,
        "final_loss": steps[-1]["loss"] if steps else None, "tokens": int(tokens), "seconds": round(seconds, 2),
        "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 and tokens else None,
        "trainable_params": trainable, "total_params": total,
    }
    for key in ("rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected", "kl"):
        vals = [h[key] for h in steps if key in h]
        if vals:
            out[key] = vals[-1]
    return out
