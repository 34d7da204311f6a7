"""The pure part of the OpenAI-compatible API (web/api.py): request checks, model names, ids, conversation
threading and response shapes. No I/O, no model: every function here is tested in milliseconds
(tests/test_api_schema.py).

Requests are checked before anything is stored or generated; a refused request raises `ApiError` (a 4xx with an
OpenAI-style error body: {"error": {"message", "type", "param", "code"}}).
"""
from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, field

from feedback.store import REASONS

MODEL = "kaizen"  # the served version (what the registry serves; the A/B test included)
BASE_MODEL = "kaizen:base"
CLIENT_MODEL = "client"  # `model` of an assistant message that came in a client's history (not generated here)
ROLES = ("system", "developer", "user", "assistant")
RAG_MODES = ("auto", "on", "off")
MAX_MESSAGES = 500
MAX_ID_CHARS = 200
MAX_CHOICES = 16


class ApiError(Exception):
    """A refused request: HTTP `status` with an OpenAI-style error body."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


@dataclass
class ChatRequest:
    model: str
    adapter: str | None  # the Answerer's adapter argument: "default" (served, A/B), None (base) or a version
    turns: list[dict]  # user/assistant messages, text only, the question last
    system: list[str]  # system/developer messages (accepted; the template owns the system prompt)
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    decoding: dict = field(default_factory=dict)  # temperature / top_p / seed overrides
    template: str = "plain"
    rag: str = "auto"
    conversation_id: str | None = None  # the client's own conversation id (scoped to the caller)

    @property
    def question(self) -> str:
        return self.turns[-1]["content"]

    @property
    def history(self) -> list[dict]:
        return self.turns[:-1]


# ---------------------------------------------------------------------------------------------- models
def model_ids(versions: list[str]) -> list[str]:
    return [MODEL, BASE_MODEL] + [f"{MODEL}:{v}" for v in versions]


def parse_model(name, versions: list[str]) -> str | None:
    """The adapter argument for `model`: "kaizen" → "default", "kaizen:base" → None, "kaizen:<version>" → the
    version (one of `versions`). Anything else is a 404 model_not_found, as OpenAI answers."""
    if not isinstance(name, str) or not name:
        raise bad("`model` is required: kaizen, kaizen:base or kaizen:<version>", "model")
    if name == MODEL:
        return "default"
    if name == BASE_MODEL:
        return None
    if name.startswith(MODEL + ":") and name[len(MODEL) + 1:] in versions:
        return name[len(MODEL) + 1:]
    raise ApiError(404, f"the model {name!r} does not exist; available: {', '.join(model_ids(versions))}",
                   param="model", code="model_not_found")


# ---------------------------------------------------------------------------------------------- chat requests
def text_of(content, where: str) -> str:
    """A message's text: a string, or a list of {"type": "text", "text": ...} parts (joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for p in content:
            if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                kind = p.get("type") if isinstance(p, dict) else type(p).__name__
                raise bad(f"{where}: only text content is supported (got a {kind!r} part)", "messages")
            parts.append(p["text"])
        return "".join(parts)
    if content is None:
        return ""
    raise bad(f"{where}: content must be a string or a list of text parts", "messages")


def _number(body: dict, name: str, lo: float, hi: float, *, integer: bool = False, lo_open: bool = False):
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        raise bad(f"`{name}` must be {'an integer' if integer else 'a number'}, got {v!r}", name)
    if v < lo or v > hi or (lo_open and v == lo):
        raise bad(f"`{name}` must be {'>' if lo_open else '>='} {lo} and <= {hi}, got {v!r}", name)
    return v


def _header(headers, name: str):
    if headers is None:
        return None
    v = headers.get(name)
    return v if v not in (None, "") else None


def check_chat(body, *, versions: list[str], templates: list[str], default_template: str, max_input_chars: int,
               max_answer_chars: int, max_new_tokens: int, headers=None) -> ChatRequest:
    """A checked chat request. `headers` (a mapping, lower-case names): X-Kaizen-Template / -Rag / -Conversation
    stand in for the body's `template` / `rag` / `conversation_id` fields (the body wins)."""
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    adapter = parse_model(body.get("model"), versions)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("`messages` must be a non-empty list", "messages")
    if len(messages) > MAX_MESSAGES:
        raise bad(f"too many messages ({len(messages)}; the limit is {MAX_MESSAGES})", "messages")
    turns, system = [], []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad(f"{where} must be an object with role and content", "messages")
        role = m.get("role")
        if role not in ROLES:
            raise bad(f"{where}: role {role!r} is not supported; use one of {', '.join(ROLES)}", "messages")
        text = text_of(m.get("content"), where)
        limit = max_answer_chars if role == "assistant" else max_input_chars
        if len(text) > limit:
            raise bad(f"{where} is too long ({len(text):,} characters; the limit is {limit:,})", "messages",
                      "message_too_long")
        if role in ("system", "developer"):
            system.append(text)
            continue
        if role == "user" and not text.strip():
            raise bad(f"{where}: the user message is empty", "messages")
        if role == "assistant" and turns and turns[-1]["role"] == "assistant":  # one answer in two parts
            turns[-1] = {"role": "assistant", "content": turns[-1]["content"] + "\n\n" + text}
            continue
        turns.append({"role": role, "content": text.strip() if role == "user" else text})
    if not turns or turns[-1]["role"] != "user":
        raise bad("the last message must be the user's question", "messages")
    n = _number(body, "n", 1, 1, integer=True)
    del n  # one choice per request (ask again for another answer: it is stored as a sibling to pick between)
    max_tokens = _number(body, "max_completion_tokens", 1, 10**9, integer=True)
    if max_tokens is None:
        max_tokens = _number(body, "max_tokens", 1, 10**9, integer=True)
    decoding = {}
    for name, lo, hi, integer, lo_open in (("temperature", 0, 2, False, False), ("top_p", 0, 1, False, True),
                                           ("seed", -(2**63), 2**63 - 1, True, False)):
        v = _number(body, name, lo, hi, integer=integer, lo_open=lo_open)
        if v is not None:
            decoding[name] = v
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise bad("`stream` must be true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad("`stream_options` must be an object", "stream_options")
    template = body.get("template") or _header(headers, "x-kaizen-template") or default_template
    if template not in templates:
        raise bad(f"unknown template {template!r}; available: {', '.join(sorted(templates))}", "template",
                  "unknown_template")
    rag = body.get("rag") or _header(headers, "x-kaizen-rag") or "auto"
    if rag not in RAG_MODES:
        raise bad(f"`rag` must be one of {', '.join(RAG_MODES)}, got {rag!r}", "rag")
    conversation = body.get("conversation_id")
    if conversation is None:
        conversation = _header(headers, "x-kaizen-conversation")
    if conversation is not None:
        if isinstance(conversation, bool) or not isinstance(conversation, (str, int)) or not str(conversation):
            raise bad("`conversation_id` must be a non-empty string", "conversation_id")
        conversation = str(conversation)
        if len(conversation) > MAX_ID_CHARS:
            raise bad(f"`conversation_id` is longer than {MAX_ID_CHARS} characters", "conversation_id")
    return ChatRequest(model=body["model"], adapter=adapter, turns=turns, system=system, stream=bool(stream),
                       include_usage=bool(options.get("include_usage")),
                       max_tokens=min(max_tokens, max_new_tokens) if max_tokens else None,
                       decoding=decoding, template=template, rag=rag, conversation_id=conversation)


# ---------------------------------------------------------------------------------------------- ids & threads
def completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


def _norm(text: str | None) -> str:
    return " ".join((text or "").split())


def thread_key(turns: list[dict], conversation_id: str | None = None) -> str:
    """The stored conversation a request belongs to (per caller: the key is looked up with the user's id): the
    client's explicit `conversation_id`, else a hash of the first user message (whitespace-normalized), so a client
    that resends the whole history stays in one conversation."""
    if conversation_id is not None:
        return "cid:" + hashlib.sha256(conversation_id.encode("utf-8")).hexdigest()
    first = next(t["content"] for t in turns if t["role"] == "user")
    return "first:" + hashlib.sha256(_norm(first).encode("utf-8")).hexdigest()


def stored_turns(turns: list[dict]) -> list[dict]:
    """The turns that are stored: from the first user message on (a stored conversation starts with a question;
    an opening assistant greeting still reaches the model as history)."""
    first = next(i for i, t in enumerate(turns) if t["role"] == "user")
    return turns[first:]


def find_answer(rows: list[dict], text: str) -> int | None:
    """The latest assistant message among `rows` whose text (or latest correction) is `text`, whitespace-
    normalized; None when there is none."""
    want = _norm(text)
    found = [r["id"] for r in rows if r["role"] == "assistant" and r.get("model") != CLIENT_MODEL
             and (_norm(r["content"]) == want or (r.get("edited") is not None and _norm(r["edited"]) == want))]
    return max(found) if found else None


def match_path(rows: list[dict], turns: list[dict]) -> tuple[int | None, int]:
    """Walk the stored conversation (`rows`: id, parent_id, role, content, edited) along the client's `turns`
    from the root: (id of the last stored message on the path or None, how many turns are already stored).
    A turn matches a child of the current message with the same role and text (whitespace-normalized; an answer
    also matches its latest correction). When several match (a retry gave the same text), the latest wins."""
    children: dict[int | None, list[dict]] = {}
    for r in rows:
        if r["role"] in ("user", "assistant"):
            children.setdefault(r["parent_id"], []).append(r)
    current, matched = None, 0
    for t in turns:
        want = _norm(t["content"])
        found = [r for r in children.get(current, []) if r["role"] == t["role"]
                 and (_norm(r["content"]) == want or (r.get("edited") is not None and _norm(r["edited"]) == want))]
        if current is None:  # a root is a user message without a parent
            found = [r for r in found if r["role"] == "user"]
        if not found:
            break
        current = max(r["id"] for r in found)
        matched += 1
    return current, matched


# ---------------------------------------------------------------------------------------------- feedback
@dataclass
class FeedbackRequest:
    id: str | None  # the completion id; None: the answer is named by (conversation_id, answer)
    kind: str  # rating | correction | choice
    value: int | None = None
    reasons: list[str] = field(default_factory=list)
    comment: str = ""
    text: str = ""
    candidates: list[str] = field(default_factory=list)  # choice: every compared completion id, `id` included
    conversation_id: str | None = None  # with `answer`: the caller's latest answer of that text in that thread
    answer: str | None = None


def check_feedback(body, *, max_comment_chars: int, max_edit_chars: int) -> FeedbackRequest:
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    cid, thread, answer = body.get("id"), body.get("conversation_id"), body.get("answer")
    if cid is None and thread is not None and answer is not None:  # for clients that keep no completion id
        if isinstance(thread, bool) or not isinstance(thread, (str, int)) or not str(thread) \
                or len(str(thread)) > MAX_ID_CHARS:
            raise bad("`conversation_id` must be the conversation id the answer was asked under", "conversation_id")
        if not isinstance(answer, str) or not answer.strip() or len(answer) > max_edit_chars:
            raise bad("`answer` must be the answer's text, as the client shows it", "answer")
        thread = str(thread)
    elif not isinstance(cid, str) or not cid or len(cid) > MAX_ID_CHARS:
        raise bad("`id` must be the completion id (the `id` of a chat completion), or send `conversation_id` "
                  "and `answer`", "id")
    else:
        thread = answer = None
    kinds = [k for k in ("rating", "correction", "choice") if body.get(k) is not None]
    if len(kinds) != 1:
        raise bad("send exactly one of `rating`, `correction` or `choice`", kinds[1] if len(kinds) > 1 else None)
    kind = kinds[0]
    named = {"conversation_id": thread, "answer": answer}
    if kind == "rating":
        v = body["rating"]
        if isinstance(v, bool) or not isinstance(v, int) or v not in (1, -1, 0):
            raise bad(f"`rating` must be 1, -1 or 0 (0 takes a rating back), got {v!r}", "rating")
        reasons = body.get("reasons") or []
        if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
            raise bad("`reasons` must be a list of reason tags", "reasons")
        unknown = [r for r in reasons if r not in REASONS]
        if unknown:
            raise bad(f"unknown reason(s) {unknown}; known: {list(REASONS)}", "reasons")
        comment = body.get("comment") or ""
        if not isinstance(comment, str):
            raise bad("`comment` must be text", "comment")
        if len(comment) > max_comment_chars:
            raise bad(f"`comment` is too long ({len(comment):,} characters; the limit is {max_comment_chars:,})",
                      "comment")
        if v == 0 and (reasons or comment):
            raise bad("a retraction (rating 0) takes no reasons or comment", "rating")
        return FeedbackRequest(cid, kind, value=v, reasons=list(dict.fromkeys(reasons)), comment=comment, **named)
    if kind == "correction":
        text = body["correction"]
        if not isinstance(text, str) or not text.strip():
            raise bad("`correction` must be the corrected answer's text", "correction")
        if len(text) > max_edit_chars:
            raise bad(f"`correction` is too long ({len(text):,} characters; the limit is {max_edit_chars:,})",
                      "correction")
        return FeedbackRequest(cid, kind, text=text.strip(), **named)
    if cid is None:
        raise bad("a choice names completion ids: `id` (the picked one) and `choice`", "id")
    others = body["choice"]
    if not isinstance(others, list) or not all(isinstance(c, str) and c for c in others):
        raise bad("`choice` must be the list of compared completion ids (the picked `id` may be among them)",
                  "choice")
    candidates = list(dict.fromkeys([cid, *others]))
    if not 2 <= len(candidates) <= MAX_CHOICES:
        raise bad(f"a choice needs 2 to {MAX_CHOICES} different completion ids", "choice")
    return FeedbackRequest(cid, kind, candidates=candidates)


# ---------------------------------------------------------------------------------------------- responses
def usage(prompt_tokens: int | None, completion_tokens: int | None) -> dict:
    p, c = int(prompt_tokens or 0), int(completion_tokens or 0)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def completion_body(cid: str, model: str, text: str, finish: str, use: dict, kaizen: dict,
                    created: int | None = None) -> dict:
    return {"id": cid, "object": "chat.completion", "created": created or int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                         "logprobs": None}],
            "usage": use, "kaizen": kaizen}


def chunk_body(cid: str, model: str, created: int, delta: dict | None = None, finish: str | None = None,
               **extra) -> dict:
    body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish, "logprobs": None}]}
    body.update(extra)
    return body


def finish_reason(truncated: bool) -> str:
    return "length" if truncated else "stop"
