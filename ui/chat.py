"""Chat-tab logic, kept apart from the Gradio layout (app.py) so it can be tested without a browser.

Server-side truth: the session state (a gr.State, held on the server) maps each displayed message to the id the
store gave it. UI events carry only an index into that list; the index is checked against the state, the id is
checked against the store (owner, role), and the original of an edit is read from the database. The history the
browser sends is never trusted: every handler re-renders the chat from the state.
"""
from __future__ import annotations

import dataclasses
import functools
import threading
import time
from dataclasses import dataclass
from typing import Callable

from agent.chat import Answerer, answer_decoding
from agent.escape import escape_chat, unescape_chat
from ui.options import details_text

LOCAL_USER = "local"


def new_state() -> dict:
    """Per-session state. `shown` is the displayed chat: [{"role","content","id"}, ...] (an answer may also carry
    "sources" and "cut_off": the token cap it ran into); `pending` a retry awaiting a pick; `notice` what the last
    action has to say; `retries` counts retries (each one samples with its own seed)."""
    return {"conversation": None, "shown": [], "pending": None, "notice": "", "retries": 0}


def same_text(a: str, b: str) -> bool:
    """Two answers are the same when they match after normalization (case, width, whitespace)."""
    from feedback.curate import normalize_text

    return normalize_text(a) == normalize_text(b)


def retry_seed(prompt_id: int, retry: int, attempt: int) -> int:
    """A different sampling seed for every retry and every attempt within one, reproducible from the ids."""
    return (int(prompt_id) * 1_000_003 + int(retry) * 101 + int(attempt)) % (2**31 - 1)


def cut_off_notice(state: dict) -> str:
    """'… cut off at N tokens' when the latest answer ran into the token cap, else ''."""
    last = state["shown"][-1] if state["shown"] else None
    if last and last["role"] == "assistant" and last.get("cut_off"):
        return f"… cut off at {last['cut_off']} tokens. Press **Continue** to go on with this answer."
    return ""


def can_continue(state: dict) -> bool:
    return bool(cut_off_notice(state)) and state["shown"][-1].get("id") is not None


def pick_texts(state: dict) -> tuple[str, str]:
    """The two answers of a pending retry, escaped for display side by side ('' when nothing is pending)."""
    p = state.get("pending")
    if not p:
        return "", ""
    return (escape_display(p["first"]["content"]), escape_display(p["second"]["content"]))


def escape_display(text: str) -> str:
    """Chat text as the Chatbot may render it (agent/escape.py): no raw HTML, image or link; code as written.
    The Chatbot's sanitize_html stays on as a second line of defence."""
    return escape_chat(text)


def unescape_display(text: str) -> str:
    """Inverse of escape_display, for the text of an edit made on the displayed (escaped) message."""
    return unescape_chat(text)


def sources_text(sources: list[dict]) -> str:
    """The lines of a Sources note, one per source (file names escaped as chat text)."""
    return "\n".join(f"[{i}] {escape_display(str(s['file']))} — chunk {int(s['chunk'])}, score {float(s['score']):.3f}"
                     for i, s in enumerate(sources, 1))


def to_chatbot(state: dict) -> list[dict]:
    """The Chatbot value for the state: messages, plus a collapsed 'Sources' note under grounded answers.

    The note is a "thought" (a text message with a metadata title, drawn collapsed, status done) in the answer's
    bubble: Gradio's edit mode gives a titled message no text area, so the note is shown but never editable (its
    edit event is ignored: `is_sources_note`), and since every part of the bubble is text, the bubble keeps its copy
    button (a component note, as before, took it away)."""
    out = []
    for m in state["shown"]:
        out.append({"role": m["role"], "content": escape_display(m["content"])})
        if m.get("sources"):
            out.append({"role": "assistant", "content": sources_text(m["sources"]),
                        "metadata": {"title": "Sources", "status": "done"}})
    return out


def feedback_values(state: dict) -> list[str | None]:
    """The Chatbot's `feedback_value`: one entry per answer, "Like" / "Dislike" as the user last rated it, so
    the thumbs of a restored conversation show what was stored."""
    marks = {1: "Like", -1: "Dislike"}
    return [marks.get(m.get("rating")) for m in state["shown"] if m["role"] == "assistant"]


def answer_name(state: dict, shown_index: int) -> str:
    """How messages name an answer: by its position in the chat ("answer 2"), never by a database id."""
    n = sum(1 for m in state["shown"][: shown_index + 1] if m["role"] == "assistant")
    return f"answer {n}"


def restored_state(rows: list[dict], conversation_id: int, owner: int) -> dict:
    """A session state showing a stored conversation (`Store.branch` rows): every message with its store id, so
    ratings, edits and retries on a restored answer go to that answer; an edited answer shows the edit; an answer
    that used all of its token cap (its stored decoding says the cap) is cut off, so Continue works on it."""
    st = new_state()
    st["conversation"], st["owner"] = conversation_id, owner
    st["shown"] = [shown_message(r) for r in rows]
    return st


def shown_message(r: dict) -> dict:
    """A stored message (`Store.branch` row) as the session state shows it."""
    m = {"role": r["role"], "content": r.get("edited") or r["content"], "id": r["id"]}
    if r["role"] == "assistant":
        m["sources"] = r.get("sources") or []
        m["rating"] = r.get("rating")
        m["decoding"] = r.get("decoding") or {}  # the chat's settings come back with the conversation
        cap = m["decoding"].get("max_new_tokens")
        if cap and not r.get("edited") and (r.get("completion_tokens") or 0) >= cap:
            m["cut_off"] = cap  # it ran into its token cap: Continue is offered again after a reload
    return m


def is_sources_note(state: dict, index) -> bool:
    """The Chatbot index points at the Sources note under an answer (not at a message of the chat)."""
    if isinstance(index, (list, tuple)):
        index = index[0] if index else None
    if not isinstance(index, int) or isinstance(index, bool):
        return False
    pos = 0
    for m in state["shown"]:
        pos += 1
        if m.get("sources"):
            if pos == index:
                return True
            pos += 1
        if pos > index:
            return False
    return False


def chat_index_to_shown(state: dict, index) -> int:
    """Map a Chatbot index (which counts the Sources notes) to an index into state['shown']; ValueError if forged."""
    if isinstance(index, (list, tuple)):
        index = index[0]
    if not isinstance(index, int) or isinstance(index, bool):
        raise ValueError("invalid message index")
    pos = 0
    for i, m in enumerate(state["shown"]):
        if pos == index:
            return i
        pos += 1
        if m.get("sources"):
            if pos == index:
                raise ValueError("that is the sources note, not an answer")
            pos += 1
    raise ValueError(f"message index {index} is outside this chat")


def admitted(method):
    """An answering generator (respond, retry, continue, reask) counted against its user's limit of answers running
    or waiting (agent/fair.py `FairGate.admit`), from before it stores anything to its end: past the limit it raises
    Busy (a ValueError the handlers show in words) and nothing is stored."""
    @functools.wraps(method)
    def wrapper(self, state, user_id, *args, **kwargs):
        with self.answerer.gate.admit(self.store.user(user_id)["name"]):
            yield from method(self, state, user_id, *args, **kwargs)
    return wrapper


@dataclass
class ChatLogic:
    answerer: Answerer
    store: object  # feedback.store.Store
    # (conversation id, requested adapter) -> adapter to use; the app's A/B test (adapters.ab.route) plugs in here
    router: Callable | None = None

    # -- users -------------------------------------------------------------------------------------------
    def user_id(self, username: str | None) -> int:
        return self.store.ensure_user(username or LOCAL_USER)

    @staticmethod
    def own(state: dict, user_id: int) -> None:
        """The session state belongs to the first user who acts in it; PermissionError for anyone else (the web
        server also binds each session to its user: web/guard.py)."""
        if state.setdefault("owner", user_id) != user_id:
            raise PermissionError("this chat belongs to another user")

    # -- the history sidebar ---------------------------------------------------------------------------
    def open(self, user_id: int, conversation_id) -> dict:
        """A new session state showing one of the user's stored conversations; NotFoundError (a LookupError)
        for another user's id or a forged one: nothing of theirs is read."""
        if isinstance(conversation_id, str) and conversation_id.strip().isdigit():
            conversation_id = int(conversation_id)
        from feedback.history import current_branch, sampled_seed, unpicked_retry

        rows, picks, undone = self.store.tree(conversation_id, user_id)
        branch = current_branch(rows, picks, undone)
        st = restored_state(branch, conversation_id, user_id)
        pair = unpicked_retry(rows, branch, picks)
        if pair:  # a retry left unpicked (its second answer is the branch's last): offered again
            st["pending"] = {"prompt_id": pair[1]["parent_id"], "first": shown_message(pair[0]),
                             "second": st["shown"][-1]}
        # the next retry samples with a seed no earlier retry of this chat used (the seeds count the retries)
        st["retries"] = sum(1 for m in rows if sampled_seed(m) is not None)
        return st

    def conversations(self, user_id: int) -> list[tuple[str, int]]:
        """(label, id) choices for the sidebar: the user's own conversations, newest first."""
        from feedback.history import list_labels

        convs = self.store.conversations(user_id)
        return list(zip(list_labels(convs), [c["id"] for c in convs]))

    # -- answering ---------------------------------------------------------------------------------------
    def history(self, state: dict, upto: int | None = None) -> list[dict]:
        shown = state["shown"] if upto is None else state["shown"][:upto]
        return [{"role": m["role"], "content": m["content"]} for m in shown]

    @admitted
    def respond(self, state: dict, user_id: int, question: str, template: str, rag: str, adapter,
                stop: threading.Event, options: dict | None = None):
        """Generator: stores the user message, streams the answer (yielding the state), stores the answer.
        Raises ValueError (too long, empty, unknown template) before anything is stored."""
        from agent.chat import check_question

        self.own(state, user_id)
        question = check_question(question, self.answerer.settings.max_input_chars)
        self.answerer.template(template)  # unknown template: error before storing anything
        if state["conversation"] is None:
            state["conversation"] = self.store.new_conversation(user_id, title=question[:60])
        parent = state["shown"][-1]["id"] if state["shown"] else None
        history = self.history(state)
        uid = self.store.add_message(state["conversation"], "user", question, user_id=user_id, parent_id=parent)
        state["shown"].append({"role": "user", "content": question, "id": uid})
        state["pending"], state["notice"] = None, ""
        yield from self._answer(state, user_id, history, question, uid, template, rag, adapter, stop, options=options)

    @admitted
    def retry(self, state: dict, user_id: int, index, template: str, rag: str, adapter, stop: threading.Event,
              options: dict | None = None):
        """Generator: a sibling answer to the user message at `index`, sampled (a new seed each retry) so that it
        differs; the previous answer is kept for the pick. A sample that repeats the first answer (after
        normalization) is stored like any answer but not offered: the retry samples again, up to
        `settings.retry_attempts` times. A pick is offered only for two different, complete answers."""
        self.own(state, user_id)
        i = chat_index_to_shown(state, index)
        msg = state["shown"][i]
        if msg["role"] != "user":
            raise ValueError("retry applies to a question")
        if i + 2 != len(state["shown"]):
            raise ValueError("only the latest answer can be regenerated")
        first = state["shown"][-1]
        if first["role"] != "assistant" or first["id"] is None:
            raise ValueError("retry applies to a finished answer")
        state["shown"].pop()
        state["pending"], state["notice"] = None, ""
        state["retries"] = state.get("retries", 0) + 1
        history = self.history(state, upto=i)
        attempts = max(1, self.answerer.settings.retry_attempts)
        second = None
        for attempt in range(attempts):
            if second is not None:
                state["shown"].pop()  # the repeat stays in the record, not on screen
            decoding = self.answerer.retry_decoding(retry_seed(msg["id"], state["retries"], attempt))
            chat_temperature = (options or {}).get("temperature") or 0.0
            if chat_temperature > decoding.temperature:  # a retry samples at least as freely as the chat does
                decoding = dataclasses.replace(decoding, temperature=chat_temperature)
            yield from self._answer(state, user_id, history, msg["content"], msg["id"], template, rag, adapter,
                                    stop, decoding=decoding, options=options)
            second = state["shown"][-1]
            if stop.is_set() or not same_text(first["content"], second["content"]):
                break
        if stop.is_set() or not second["content"].strip():
            state["notice"] = "Stopped: nothing to choose from."
        elif same_text(first["content"], second["content"]):
            state["shown"][-1] = first  # the answer on screen (and its feedback) stays the first one
            state["notice"] = (f"The retry gave the same answer {attempts} time{'s' if attempts > 1 else ''}; "
                               "there is nothing to choose from.")
        else:
            state["pending"] = {"prompt_id": msg["id"], "first": first, "second": second}
        yield state

    @admitted
    def continue_answer(self, state: dict, user_id: int, template: str, rag: str, adapter, stop: threading.Event,
                        options: dict | None = None):
        """Generator: the latest answer was cut off at the token cap; generate on from its end. The whole text
        (old + new) is stored as a new answer to the same question (messages are append-only) and takes its place
        on screen, so later feedback goes to the complete answer."""
        self.own(state, user_id)
        if not can_continue(state):
            raise ValueError("the latest answer was not cut off: there is nothing to continue")
        cut = state["shown"].pop()
        question = state["shown"][-1]
        state["pending"], state["notice"] = None, ""
        history = self.history(state, upto=len(state["shown"]) - 1)
        yield from self._answer(state, user_id, history, question["content"], question["id"], template, rag,
                                adapter, stop, prefix=cut["content"], options=options)

    def _answer(self, state, user_id, history, question, parent_id, template, rag, adapter, stop, *,
                decoding=None, prefix: str | None = None, options: dict | None = None):
        """`options`: the chat's own settings (`chat_options`: temperature, max_tokens); `decoding` (a retry's)
        wins over the chat's temperature."""
        options = options or {}
        started = time.perf_counter()
        if self.router is not None:
            adapter = self.router(state["conversation"], adapter)
        if decoding is None:  # chat_options sets "temperature" only when the chat chose one
            decoding = self.answerer.decoding(**{k: options[k] for k in ("temperature",) if k in options})
        reply = self.answerer.answer(history, question, template=template, rag=rag, adapter=adapter, stop=stop,
                                     owner=self.store.user(user_id)["name"],  # retrieval sees only their documents
                                     decoding=decoding, continue_from=prefix,
                                     max_new_tokens=options.get("max_tokens"))
        shown = {"role": "assistant", "content": prefix or "", "id": None, "sources": reply.sources}
        state["shown"].append(shown)
        try:
            for piece in reply.generation:
                shown["content"] += piece
                yield state
        finally:
            gen = reply.generation
            if gen.cut_off:
                shown["cut_off"] = gen.max_new_tokens
            shown["id"] = self.store.add_message(
                state["conversation"], "assistant", (prefix or "") + gen.text, user_id=user_id, parent_id=parent_id,
                template=reply.template, model=gen.model, adapter=gen.adapter, sources=reply.sources,
                latency_ms=round((time.perf_counter() - started) * 1000, 1),
                prompt_tokens=gen.prompt_tokens, completion_tokens=gen.completion_tokens,
                decoding=answer_decoding(decoding, gen.max_new_tokens), stopped=gen.cancelled,
                context_messages=reply.context_messages,
            )
        yield state

    def details(self, state: dict, user_id: int) -> str:
        """`details_text` of the latest finished answer on screen, read from the store (the caller's own)."""
        for i in range(len(state["shown"]) - 1, -1, -1):
            m = state["shown"][i]
            if m["role"] == "assistant" and m.get("id") is not None:
                return details_text(self.store.message(m["id"], user_id), answer_name(state, i), earlier=i - 1)
        return details_text(None)

    # -- feedback ----------------------------------------------------------------------------------------
    @staticmethod
    def finished_answer(state: dict, index) -> int:
        """The index into state['shown'] of the finished answer at Chatbot `index`; ValueError otherwise."""
        i = chat_index_to_shown(state, index)
        m = state["shown"][i]
        if m["role"] != "assistant" or m["id"] is None:
            raise ValueError("feedback applies to a finished answer")
        return i

    def rate(self, state, user_id, index, liked, reasons=(), comment="") -> str:
        """`liked` as Gradio's LikeData gives it: True (👍), False (👎), or "" / None when the user un-clicks the
        selected thumb: that is a retraction (an append-only rating of 0; the latest rating wins in datasets)."""
        self.own(state, user_id)
        i = self.finished_answer(state, index)
        m, name = state["shown"][i], answer_name(state, i)
        if liked is True or liked is False:
            value = 1 if liked else -1
            self.store.rate(m["id"], user_id, value, list(reasons), comment or "")
            m["rating"] = value
            extra = f" ({', '.join(reasons)})" if reasons else ""
            return f"Saved: {'👍' if value > 0 else '👎'} on {name}{extra}."
        if liked in ("", None):
            self.store.retract(m["id"], user_id)
            m["rating"] = None
            return f"Saved: your rating of {name} is taken back."
        raise ValueError(f"unknown feedback {liked!r}")

    def is_question(self, state, index) -> bool:
        return state["shown"][chat_index_to_shown(state, index)]["role"] == "user"

    @admitted
    def reask(self, state: dict, user_id: int, index, question: str, template: str, rag: str, adapter,
              stop: threading.Event, options: dict | None = None):
        """Generator: the user edited their question at `index`: a new branch. The edited question is stored as a
        new user message with the same parent as the old one (the old question and what followed stay on record),
        it replaces the old one and everything after it on screen, and a new answer is generated for it."""
        from agent.chat import check_question

        self.own(state, user_id)
        i = chat_index_to_shown(state, index)
        old = state["shown"][i]
        if old["role"] != "user":
            raise ValueError("only a question can be asked again")
        question = check_question(unescape_display(question or ""), self.answerer.settings.max_input_chars)
        if same_text(question, old["content"]):
            raise ValueError("the question did not change; use 🔄 to get another answer")
        self.answerer.template(template)  # unknown template: error before storing anything
        history = self.history(state, upto=i)
        parent = state["shown"][i - 1]["id"] if i else None
        uid = self.store.add_message(state["conversation"], "user", question, user_id=user_id, parent_id=parent,
                                     root=parent is None)
        del state["shown"][i:]
        state["shown"].append({"role": "user", "content": question, "id": uid})
        state["pending"], state["notice"] = None, ""
        yield from self._answer(state, user_id, history, question, uid, template, rag, adapter, stop, options=options)

    def edit(self, state, user_id, index, edited: str) -> str:
        """A correction of an answer. The original comes from the store; the display shows the edited text."""
        self.own(state, user_id)
        i = chat_index_to_shown(state, index)
        m = state["shown"][i]
        if m["role"] != "assistant" or m["id"] is None:
            raise ValueError("only answers can be corrected; an edited question is asked again (`reask`)")
        edited = unescape_display(edited or "").strip()
        if not edited:
            raise ValueError("the corrected answer is empty")
        limit = self.answerer.settings.max_edit_chars
        if len(edited) > limit:
            raise ValueError(f"the corrected answer is too long ({len(edited):,} characters; the limit is {limit:,})")
        self.store.edit(m["id"], user_id, edited)
        m["content"] = edited
        m.pop("cut_off", None)  # the correction is the user's whole answer: no Continue on it (as after a reload)
        return f"Saved: your correction of {answer_name(state, i)}."

    def pick(self, state, user_id, which: str) -> str:
        """The user prefers the first or the second answer of a retry → a choice event; the pick stays shown."""
        self.own(state, user_id)
        p = state.get("pending")
        if not p:
            raise ValueError("there is no pair of answers to choose from")
        a, b = p["first"], p["second"]
        if which not in ("first", "second"):
            raise ValueError("pick the first or the second answer")
        if same_text(a["content"], b["content"]):
            state["pending"] = None
            raise ValueError("the two answers are the same text; there is nothing to choose (nothing was stored)")
        picked = a if which == "first" else b
        self.store.choose(p["prompt_id"], user_id, [a["id"], b["id"]], picked["id"])
        state["shown"][-1] = picked
        state["pending"] = None
        return f"Saved: you preferred the {'earlier' if which == 'first' else 'new'} answer."

    def undo(self, state, user_id, index) -> str:
        """Remove the question at `index` and what follows from the display; the store keeps them (append-only)
        and records the undo, so a reload shows the chat without them too. Returns the question text, to put back
        in the textbox."""
        self.own(state, user_id)
        i = chat_index_to_shown(state, index)
        if state["shown"][i]["role"] != "user":
            raise ValueError("undo applies to a question")
        if state["shown"][i].get("id") is not None:
            self.store.undo(state["shown"][i]["id"], user_id)
        text = state["shown"][i]["content"]
        del state["shown"][i:]
        state["pending"] = None
        return text
