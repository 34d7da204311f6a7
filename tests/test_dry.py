"""llama.cpp's DRY sampler mirrored in Python (agent/decoding.py `dry_penalties`, `DRYPenalty`), so the gate reads
answers decoded as llama-server serves them. Pure: milliseconds. The real llama-server comparison is in
tests/test_engine_llamacpp.py (`test_the_gate_decodes_as_llama_server_does`)."""
from __future__ import annotations

import itertools

import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from agent.engine import loop_rule
from agent.decoding import DRY, LLAMA_SERVER_BREAKERS, Decoding, DRYPenalty, breaker_ids, dry_penalties, served_decoding
from agent.settings import Settings


def naive(tokens: list[int], dry: DRY, breakers: set[int]) -> dict[int, float]:
    """DRY by its definition, quadratically: for each earlier position, the longest run ending there that the
    end of the window repeats (no longer than the distance back to the latest breaker); the token after it would
    extend the repeat."""
    w = tokens[-dry.last_n:]
    n = len(w)
    if n <= dry.allowed_length:
        return {}
    limit = next((i for i in range(n) if w[n - 1 - i] in breakers), n)
    if limit < dry.allowed_length:
        return {}
    longest: dict[int, int] = {}
    for k in range(1, n):  # an earlier occurrence ending k tokens before the end
        m = 0
        while m < n - k and w[n - 1 - m] == w[n - 1 - k - m]:
            m += 1
        m = min(m, limit)
        if m >= dry.allowed_length:
            nxt = w[n - k]
            longest[nxt] = max(longest.get(nxt, 0), m)
    return {t: dry.multiplier * dry.base ** (m - dry.allowed_length) for t, m in longest.items() if t not in breakers}


def test_llama_cpp_s_own_example():
    """The example in llama.cpp's source: after `a b c c b c y a b c`, `c` would extend `a b c` (3 tokens) and
    `y` would extend `b c` (2); `b` extends only `c`, below the allowed length 2."""
    a, b, c, y = 1, 2, 3, 4
    got = dry_penalties([a, b, c, c, b, c, y, a, b, c], DRY(allowed_length=2, last_n=64), set())
    assert got == {c: 2.0 * 1.75, y: 2.0}


def test_a_breaker_limits_the_repeat_and_is_never_penalized():
    dry = DRY(allowed_length=2, last_n=64)
    seq = [5, 6, 7, 9, 5, 6, 7]  # `5 6 7` again: 9 followed it before, so 9 would extend a 3-token repeat
    assert dry_penalties(seq, dry, set()) == {9: 2.0 * 1.75}
    assert dry_penalties(seq, dry, {6}) == {}  # the latest breaker is 1 token back: no repeat of 2 can run past it
    assert dry_penalties(seq, dry, {9}) == {}  # 9 is a breaker: never penalized
    assert dry_penalties([1, 2, 3, 1, 2], DRY(allowed_length=2, last_n=3), set()) == {}  # outside the window


@settings(max_examples=500, deadline=None)
@given(st.lists(st.integers(0, 3), max_size=60), st.integers(1, 4), st.integers(1, 70),
       st.sets(st.integers(0, 3), max_size=2))
@example([3, 1, 2, 3, 1], 1, 64, {3})  # a repeat that runs past the latest breaker counts only up to it
def test_the_port_agrees_with_dry_s_definition(tokens, allowed, last_n, breakers):
    dry = DRY(allowed_length=allowed, last_n=last_n)
    assert dry_penalties(tokens, dry, breakers) == naive(tokens, dry, breakers)


def test_the_port_agrees_with_dry_s_definition_on_every_short_sequence():
    """Exhaustively: every sequence of up to 8 tokens over 3 symbols, with and without a breaker."""
    for n in range(9):
        for seq in itertools.product(range(3), repeat=n):
            for breakers in (set(), {0}):
                for allowed in (1, 2):
                    dry = DRY(allowed_length=allowed, last_n=64)
                    assert dry_penalties(list(seq), dry, breakers) == naive(list(seq), dry, breakers), seq


def test_the_processor_reads_each_row_s_answer_only():
    """Rows of a left-padded batch whose answers start at column 4: the prompt (and its padding) is never
    part of DRY's window, so an answer may quote its prompt (a RAG answer its sources)."""
    dry = DRY(allowed_length=2, last_n=64)
    ids = torch.tensor([[0, 5, 6, 7, 5, 6, 7, 9, 5, 6, 7],  # the answer repeats itself: penalized
                        [5, 6, 7, 9, 3, 3, 3, 3, 5, 6, 7]])  # the answer quotes the prompt's 5 6 7 9: free
    scores = DRYPenalty(dry, frozenset(), prompt_len=4)(ids, torch.zeros(2, 12))
    expected = torch.zeros(12)
    for t, p in dry_penalties([5, 6, 7, 9, 5, 6, 7], dry, set()).items():
        expected[t] = -p
    assert scores[0, 9] == -3.5 and torch.equal(scores[0], expected)
    assert torch.equal(scores[1], torch.zeros(12))
    assert dry_penalties(ids[1].tolist(), dry, set()) == {9: 3.5}  # over prompt + answer (upstream): the quote is


def test_the_served_rule_follows_the_engine():
    """The gate decodes as the engine that serves: the n-gram ban on transformers, DRY on llama-server (the app's
    or your own), no n-gram rule through the OpenAI API (it has none)."""
    assert loop_rule(Settings(engine="transformers")) == "ban"
    mine = dict(engine="openai", engine_url="http://127.0.0.1:9")
    assert loop_rule(Settings(**mine, engine_dialect="llama")) == "dry"
    assert loop_rule(Settings(**mine, engine_dialect="openai")) is None
    assert served_decoding(Settings(**mine, engine_dialect="llama")).loop_rule == "dry"
    plain = served_decoding(Settings(**mine, engine_dialect="openai"))
    assert plain.no_repeat_ngram_size == 0 and plain.dry() is None
    ban = served_decoding(Settings(engine="transformers"), temperature=0.0)
    assert ban == Decoding(no_repeat_ngram_size=4, loop_rule="ban")
    assert ban.dry() == DRY(allowed_length=3, last_n=256)  # what llama-server gets for it


def test_breaker_tokens_are_found_as_llama_cpp_finds_them(tokenizer):
    """Every token whose text contains a breaker: for llama-server's newline that is "\\n" itself and tokens like
    ".\\n\\n"; our one breaker, a control byte, is a single byte token no answer writes."""
    newline = breaker_ids(tokenizer, ("\n",))
    assert tokenizer.convert_tokens_to_ids("Ċ") in newline and len(newline) > 10
    assert all("\n" in tokenizer.decode([i]) for i in newline)
    assert len(breaker_ids(tokenizer, DRY().breakers)) == 1
    assert breaker_ids(tokenizer, LLAMA_SERVER_BREAKERS) >= newline
