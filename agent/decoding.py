"""How an answer is decoded (`Decoding`), and the two rules that keep a small model from looping, as each engine
enforces KAIZEN_NO_REPEAT_NGRAM_SIZE: the transformers engine's answer-only n-gram ban (`AnswerNoRepeatNGram`) and
llama.cpp's DRY, ported so the transformers side (the gate, the benchmarks) can decode as llama-server does
(`dry_penalties`, `DRYPenalty`). `served_decoding` is the one owner of how the app decodes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def banned_next(tokens: list[int], n: int) -> set[int]:
    """Tokens that would complete an n-gram already present in `tokens` (the answer so far). Pure."""
    if n < 1 or len(tokens) < n - 1:
        return set()
    if n == 1:
        return set(tokens)
    head = tuple(tokens[len(tokens) - n + 1:])
    return {tokens[i + n - 1] for i in range(len(tokens) - n + 1) if tuple(tokens[i:i + n - 1]) == head}


class AnswerNoRepeatNGram:
    """LogitsProcessor: the answer never repeats one of its own n-grams of `n` tokens. Unlike transformers'
    `no_repeat_ngram_size` it ignores the prompt (the first `prompt_len` tokens), so a grounded answer may still
    quote its sources word for word."""

    def __init__(self, n: int, prompt_len: int):
        self.n, self.prompt_len = n, prompt_len

    def __call__(self, input_ids, scores):
        for row, ids in enumerate(input_ids[:, self.prompt_len:].tolist()):
            banned = banned_next(ids, self.n)
            if banned:
                scores[row, list(banned)] = -float("inf")
        return scores


# llama.cpp's DRY sampler ("don't repeat yourself", src/llama-sampler.cpp `llama_sampler_dry_apply`), in Python, so
# the gate can read answers decoded as llama-server decodes them. Upstream llama-server feeds the prompt's tokens to
# its samplers too (tools/server `init_sampler`), so DRY would punish an answer for quoting its prompt (a RAG answer
# copying "leaves at 07:45" from its sources came out as "leaves at 9:15"); the server the Makefile builds carries
# a patch (scripts/llama-server-samplers-see-the-answer-only.patch): DRY's window is the answer's last `last_n`.
FLOAT_MAX_LOG = 88.7228391
LLAMA_SERVER_BREAKERS = ("\n", ":", "\"", "*")  # llama-server's default DRY sequence breakers (not ours: `DRY`)


@dataclass(frozen=True)
class DRY:
    """DRY's settings: a token that would extend a sequence already seen (longer than `allowed_length` tokens,
    counted back to the latest sequence breaker) loses `multiplier * base ** (length - allowed_length)` from its
    logit. `last_n`: the window, the last tokens of prompt + answer, the same for every request whatever its token
    cap (the app's default cap), so the gate's short answers and the app's long ones are decoded alike; loops
    longer than it are not seen. `breakers`: none in effect. llama-server's defaults (newline, `:`, `"`, `*`)
    end a repeat at every list item and bold label, and list-shaped loops got through: 10% of 48 lottery answers
    looped with them, 0% without, SQuAD with RAG 23% both (bench/answer_quality.py, 2026-12-04). llama-server
    wants a non-empty list, so the one breaker is a control byte no answer writes."""

    multiplier: float = 2.0
    base: float = 1.75
    allowed_length: int = 3
    last_n: int = 256
    breakers: tuple[str, ...] = ("\x01",)

    def body(self) -> dict:
        """The llama-server request fields."""
        return {"dry_multiplier": self.multiplier, "dry_base": self.base, "dry_allowed_length": self.allowed_length,
                "dry_penalty_last_n": self.last_n, "dry_sequence_breakers": list(self.breakers)}


def dry_penalties(tokens: list[int], dry: DRY, breakers: frozenset[int] | set[int]) -> dict[int, float]:
    """{token: logit penalty} that llama.cpp's DRY applies after `tokens` (prompt + answer so far). `breakers`: the
    token ids whose text contains one of `dry.breakers` (`breaker_ids`). A line-by-line port of
    `llama_sampler_dry_apply` for single-token breakers (all of the defaults are one character). Pure."""
    if dry.multiplier == 0 or dry.base < 1 or dry.last_n == 0:
        return {}
    window = tokens[-dry.last_n:] if dry.last_n > 0 else tokens
    n = len(window)
    if n <= dry.allowed_length:
        return {}
    rat = window[::-1]  # rat[i]: the i-th token from the end
    # Step 1: the latest breaker limits how long a repeat can be
    rep_limit = next((i for i in range(n) if rat[i] in breakers), n)
    if rep_limit < dry.allowed_length:
        return {}
    # Step 2: Z-algorithm over the reversed window: count[last - k] = length of the suffix that also ends k back
    count = [0] * n
    last, lt, rt = n - 1, 0, 0
    for k in range(1, n):
        if k > rt:
            m = 0
            while m + k < n and rat[m] == rat[m + k]:
                m += 1
            count[last - k] = min(m, rep_limit)
            if m > 0:
                lt, rt = k, k + m - 1
        else:
            p, right = k - lt, rt - k + 1
            if count[last - p] < right:
                count[last - k] = min(count[last - p], rep_limit)
            else:
                i = rt + 1
                while i < n and rat[i] == rat[i - k]:
                    i += 1
                count[last - k] = min(i - k, rep_limit)
                lt, rt = k, i - 1
    # Step 3: the token after each repeat would extend it
    longest: dict[int, int] = {}
    for i in range(n - 1):
        if count[i] >= dry.allowed_length:
            token = rat[n - 2 - i]
            longest[token] = max(longest.get(token, 0), count[i])
    # Step 4: penalties (a breaker itself is never penalized)
    max_exp = int(FLOAT_MAX_LOG / math.log(dry.base)) if dry.base > 1.000001 else 0
    out = {}
    for token, length in longest.items():
        if token in breakers:
            continue
        e = length - dry.allowed_length
        out[token] = dry.multiplier * dry.base ** (min(e, max_exp) if max_exp > 0 else e)
    return out


_BREAKERS: dict[tuple, frozenset[int]] = {}


def breaker_ids(tokenizer, breakers: tuple[str, ...]) -> frozenset[int]:
    """The ids of the tokens whose text (special tokens rendered) contains one of `breakers`, as llama.cpp's
    `get_overlapping_token_sequences` finds them for one-character breakers. Cached per tokenizer."""
    key = (getattr(tokenizer, "name_or_path", ""), len(tokenizer), breakers)
    if key not in _BREAKERS:
        if any(len(b) != 1 for b in breakers):
            raise ValueError(f"only one-character DRY sequence breakers are mirrored, not {breakers!r}")
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], skip_special_tokens=False,
                                       clean_up_tokenization_spaces=False)
        _BREAKERS[key] = frozenset(i for i, t in enumerate(texts) if any(b in t for b in breakers))
    return _BREAKERS[key]


class DRYPenalty:
    """LogitsProcessor: llama.cpp's DRY over each row's answer (the tokens from `prompt_len` on: in a left-padded
    batch every row's answer starts there), as the patched llama-server applies it."""

    def __init__(self, dry: DRY, breakers: frozenset[int], prompt_len: int = 0):
        self.dry, self.breakers, self.prompt_len = dry, breakers, prompt_len

    def __call__(self, input_ids, scores):
        for row, ids in enumerate(input_ids[:, self.prompt_len:].tolist()):
            penalties = dry_penalties(ids, self.dry, self.breakers)
            if penalties:
                idx = torch.tensor(list(penalties), device=scores.device)
                scores[row, idx] -= torch.tensor(list(penalties.values()), dtype=scores.dtype, device=scores.device)
        return scores


LOOP_RULES = ("ban", "dry")


@dataclass(frozen=True)
class Decoding:
    """How an answer is decoded. temperature 0 = greedy. repetition_penalty > 1 and no_repeat_ngram_size > 0
    keep a small model from looping (chosen by bench/answer_quality.py). seed: the sampling seed (None: torch's
    generator as it stands). loop_rule says how no_repeat_ngram_size is enforced:
        ban  the transformers engine's: the answer never repeats one of its own n-grams (the prompt is exempt, so a
             grounded answer can repeat its sources' words); the repetition penalty looks at the answer only too
        dry  llama.cpp's DRY, allowed length n - 1, over the last 256 tokens of prompt + answer (`DRY`): what
             llama-server applies (it has no n-gram ban); transformers mirrors it for the gate (`DRYPenalty`)"""

    temperature: float = 0.0
    top_p: float = 0.95
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    seed: int | None = None
    loop_rule: str = "ban"
    dry_config: DRY | None = None  # DRY's settings when not the defaults (bench/answer_quality.py tries others)

    def __post_init__(self):
        if self.loop_rule not in LOOP_RULES:
            raise ValueError(f"loop_rule must be one of {LOOP_RULES}, not {self.loop_rule!r}")

    def dry(self) -> DRY | None:
        """The DRY settings that stand for the n-gram rule on llama.cpp (None: no rule)."""
        if self.no_repeat_ngram_size <= 0:
            return None
        return self.dry_config or DRY(allowed_length=max(1, self.no_repeat_ngram_size - 1))

    def generate_kwargs(self, prompt_len: int, *, tokenizer=None) -> dict:
        """Keyword arguments for `model.generate` with a prompt of `prompt_len` tokens (a left-padded batch: its
        width). The "dry" rule also needs the `tokenizer` (its breakers). Every rule looks at the answer only."""
        from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

        kw: dict = {}
        if self.temperature > 0:
            kw.update(do_sample=True, temperature=self.temperature, top_p=self.top_p)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        processors = []
        if self.repetition_penalty and self.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(float(self.repetition_penalty),
                                                               prompt_ignore_length=int(prompt_len)))
        if self.no_repeat_ngram_size > 0 and self.loop_rule == "dry":
            if tokenizer is None:
                raise ValueError("the dry loop rule needs the tokenizer")
            dry = self.dry()
            processors.append(DRYPenalty(dry, breaker_ids(tokenizer, dry.breakers), int(prompt_len)))
        elif self.no_repeat_ngram_size > 0:
            processors.append(AnswerNoRepeatNGram(int(self.no_repeat_ngram_size), int(prompt_len)))
        if processors:
            kw["logits_processor"] = LogitsProcessorList(processors)
        return kw


_FROM_SETTINGS = object()


def served_decoding(settings, rule=_FROM_SETTINGS, **overrides) -> Decoding:
    """How the app decodes an answer: the settings' KAIZEN_TEMPERATURE, _TOP_P, _REPETITION_PENALTY and
    _NO_REPEAT_NGRAM_SIZE, with the n-gram rule enforced as the engine that serves enforces it: `rule` is the
    engine's `loop_rule` ("ban", "dry", or None: no n-gram rule reaches it), by default that of the engine the
    settings pick (agent/engine.py `loop_rule`: the gate has no engine open). `overrides`: a retry's temperature and
    seed; the gate's temperature 0."""
    if rule is _FROM_SETTINGS:
        from agent.engine import loop_rule

        rule = loop_rule(settings)
    s = settings
    how = {"temperature": s.temperature, "top_p": s.top_p, "repetition_penalty": s.repetition_penalty,
           "no_repeat_ngram_size": s.no_repeat_ngram_size if rule else 0, "loop_rule": rule or "ban"}
    return Decoding(**{**how, **overrides})
