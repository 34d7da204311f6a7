"""A chat's own settings (temperature, max tokens), checked on the server, and the "Answer details" text of a
stored answer. Pure: no gradio, no store."""
from __future__ import annotations

from agent.files import last_part

MAX_TEMPERATURE = 1.5  # past this a 135M model writes noise


def max_tokens_limit(settings) -> int:
    """The most new tokens a chat may ask for: KAIZEN_MAX_NEW_TOKENS or 1,024, whichever is more."""
    return max(int(settings.max_new_tokens), 1024)


def temperature_limit(settings) -> float:
    """The highest temperature a chat may ask for: MAX_TEMPERATURE, or the server's own default when that is higher
    (so the page's starting value is always allowed)."""
    return max(MAX_TEMPERATURE, float(settings.temperature))


def chat_options(settings, temperature=None, max_tokens=None) -> dict:
    """The chat's own settings, checked on the server (a client can send anything): temperature in
    [0, temperature_limit] (0: greedy), max_tokens in [1, max_tokens_limit]; None or '' keeps the server's default.
    ValueError in words otherwise."""
    out = {}
    if temperature not in (None, ""):
        if isinstance(temperature, bool):
            raise ValueError("temperature must be a number")
        try:
            t = float(temperature)
        except (TypeError, ValueError):
            raise ValueError(f"temperature must be a number, got {str(temperature)[:40]!r}") from None
        if not 0 <= t <= temperature_limit(settings):
            raise ValueError(f"temperature must be between 0 and {temperature_limit(settings):g}, got {t:g}")
        out["temperature"] = t
    if max_tokens not in (None, ""):
        limit = max_tokens_limit(settings)
        try:
            n = float(max_tokens)
        except (TypeError, ValueError):
            raise ValueError(f"max tokens must be a whole number, got {str(max_tokens)[:40]!r}") from None
        if isinstance(max_tokens, bool) or n != int(n) or not 1 <= n <= limit:
            raise ValueError(f"max tokens must be a whole number from 1 to {limit:,}, got {max_tokens!r}")
        out["max_tokens"] = int(n)
    return out


def conversation_options(shown: list[dict], settings) -> tuple[float, int]:
    """The chat settings a reopened conversation had (temperature, max tokens), from the stored decoding of its
    latest answer that was not a retry (a retry samples with its own seed and temperature), held within the
    sliders' bounds; the server's defaults when no answer recorded them."""
    for m in reversed(shown):
        dec = m.get("decoding") or {}
        if m.get("role") == "assistant" and dec and dec.get("seed") is None:
            t = dec.get("temperature")
            n = dec.get("max_new_tokens")
            t = float(settings.temperature) if t is None else min(max(float(t), 0.0), temperature_limit(settings))
            n = int(settings.max_new_tokens) if not n else min(max(int(n), 1), max_tokens_limit(settings))
            return t, n
    return float(settings.temperature), int(settings.max_new_tokens)


def details_text(row: dict | None, name: str = "the latest answer", earlier: int = 0) -> str:
    """Markdown: how an answer was made (its stored row): time, tokens, template, adapter, model, decoding, and how
    much of the conversation the model was given (`earlier`: messages on screen before its question)."""
    if not row:
        return "No answer yet."
    dec = row.get("decoding") or {}
    temp = dec.get("temperature")
    how = "greedy" if temp == 0 else (f"temperature {temp:g}" if temp is not None else "not recorded")
    if temp and dec.get("seed") is not None:
        how += f", seed {dec['seed']}"
    model = last_part(row.get("model") or "?")  # a name, never a server path
    lines = [f"**{name[:1].upper() + name[1:]}**",
             f"- time: {row['latency_ms'] / 1000:.1f} s" if row.get("latency_ms") is not None else "- time: ?",
             f"- tokens: {row.get('prompt_tokens') or 0:,} in, {row.get('completion_tokens') or 0:,} out"
             + (f" (cap {dec['max_new_tokens']:,})" if dec.get("max_new_tokens") else ""),
             f"- template: {row.get('template') or '?'}",
             f"- adapter: {row.get('adapter') or 'base'}",
             f"- model: {model}",
             f"- decoding: {how}"]
    if row.get("sources"):
        lines.append(f"- sources: {len(row['sources'])} passage{'s' if len(row['sources']) != 1 else ''}")
    given = row.get("context_messages")
    if given == 0 and earlier:
        lines.append("- conversation: not given (a new subject: answered on its own)")
    elif given:
        lines.append(f"- conversation: the {given} earlier message{'s' * (given != 1)}")
    return "\n".join(lines)
