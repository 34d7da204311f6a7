"""Chat-tab logic, kept apart from the Gradio layout (app.py) so it can be tested without a browser.

Server-side truth: the session state (a gr.State, held on the server) maps each displayed message to the id the
store gave it. UI events carry only an index into that list; the index is checked against the state, the id is
checked against the store (owner, role), and the original of an edit is read from the database. The history the
browser sends is never trusted: every handler re-renders the chat from the state.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

from agent.chat import Answerer
from agent.escape import escape_chat, unescape_chat

LOCAL_USER = "local"


def new_state() -> dict:
    """Per-session state. `shown` is the displayed chat: [{"role","content","id"}]; `pending` a retry awaiting a pick."""
    return {"conversation": None, "shown": [], "pending": None}


def escape_display(text: str) -> str:
    """Chat text as the Chatbot may render it (agent/escape.py): no raw HTML, image or link; code as written.
    The Chatbot's sanitize_html stays on as a second line of defence."""
    return escape_chat(text)


def unescape_display(text: str) -> str:
    """Inverse of escape_display, for the text of an edit made on the displayed (escaped) message."""
    return unescape_chat(text)


def to_chatbot(state: dict) -> list[dict]:
    """The Chatbot value for the state: messages, plus a collapsed 'Sources' note under grounded answers."""
    out = []
    for m in state["shown"]:
        out.append({"role": m["role"], "content": escape_display(m["content"])})
        if m.get("sources"):
            lines = [f"[{i}] {escape_display(s['file'])} — chunk {s['chunk']}, score {s['score']:.3f}"
                     for i, s in enumerate(m["sources"], 1)]
            out.append({"role": "assistant", "content": "\n".join(lines),
                        "metadata": {"title": "Sources", "status": "done"}})
    return out


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
        server also binds each session to its user: feedback/webguard.py)."""
        if state.setdefault("owner", user_id) != user_id:
            raise PermissionError("this chat belongs to another user")

    # -- answering ---------------------------------------------------------------------------------------
    def history(self, state: dict, upto: int | None = None) -> list[dict]:
        shown = state["shown"] if upto is None else state["shown"][:upto]
        return [{"role": m["role"], "content": m["content"]} for m in shown]

    def respond(self, state: dict, user_id: int, question: str, template: str, rag: str, adapter,
                stop: threading.Event):
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
        state["pending"] = None
        yield from self._answer(state, user_id, history, question, uid, template, rag, adapter, stop)

    def retry(self, state: dict, user_id: int, index, template: str, rag: str, adapter, stop: threading.Event):
        """Generator: a sibling answer to the user message at `index`; the previous answer is kept for the pick."""
        self.own(state, user_id)
        i = chat_index_to_shown(state, index)
        msg = state["shown"][i]
        if msg["role"] != "user":
            raise ValueError("retry applies to a question")
        if i + 2 != len(state["shown"]):
            raise ValueError("only the latest answer can be regenerated")
        first = state["shown"].pop()
        history = self.history(state, upto=i)
        yield from self._answer(state, user_id, history, msg["content"], msg["id"], template, rag, adapter, stop)
        second = state["shown"][-1]
        state["pending"] = {"prompt_id": msg["id"], "first": first, "second": second}
        yield state

    def _answer(self, state, user_id, history, question, parent_id, template, rag, adapter, stop):
        started = time.perf_counter()
        if self.router is not None:
            adapter = self.router(state["conversation"], adapter)
        reply = self.answerer.answer(history, question, template=template, rag=rag, adapter=adapter, stop=stop,
                                     owner=self.store.user(user_id)["name"])  # retrieval sees only their documents
        shown = {"role": "assistant", "content": "", "id": None, "sources": reply.sources}
        state["shown"].append(shown)
        try:
            for piece in reply.generation:
                shown["content"] += piece
                yield state
        finally:
            gen = reply.generation
            shown["id"] = self.store.add_message(
                state["conversation"], "assistant", gen.text, user_id=user_id, parent_id=parent_id,
                template=reply.template, model=gen.model, adapter=gen.adapter, sources=reply.sources,
                latency_ms=round((time.perf_counter() - started) * 1000, 1),
                prompt_tokens=gen.prompt_tokens, completion_tokens=gen.completion_tokens,
            )
        yield state

    # -- feedback ----------------------------------------------------------------------------------------
    def answer_id(self, state: dict, index) -> int:
        i = chat_index_to_shown(state, index)
        m = state["shown"][i]
        if m["role"] != "assistant" or m["id"] is None:
            raise ValueError("feedback applies to a finished answer")
        return m["id"]

    def rate(self, state, user_id, index, liked, reasons=(), comment="") -> str:
        self.own(state, user_id)
        mid = self.answer_id(state, index)
        value = 1 if liked is True else -1
        self.store.rate(mid, user_id, value, list(reasons), comment or "")
        extra = f" ({', '.join(reasons)})" if reasons else ""
        return f"Saved: {'👍' if value > 0 else '👎'} on answer #{mid}{extra}."

    def edit(self, state, user_id, index, edited: str) -> str:
        """A correction of an answer. The original comes from the store; the display shows the edited text."""
        self.own(state, user_id)
        i = chat_index_to_shown(state, index)
        m = state["shown"][i]
        if m["role"] != "assistant" or m["id"] is None:
            raise ValueError("only answers can be corrected; to change a question, undo and ask again")
        edited = unescape_display(edited or "").strip()
        if not edited:
            raise ValueError("the corrected answer is empty")
        limit = self.answerer.settings.max_edit_chars
        if len(edited) > limit:
            raise ValueError(f"the corrected answer is too long ({len(edited):,} characters; the limit is {limit:,})")
        self.store.edit(m["id"], user_id, edited)
        m["content"] = edited
        return f"Saved: your correction of answer #{m['id']}."

    def pick(self, state, user_id, which: str) -> str:
        """The user prefers the first or the second answer of a retry → a choice event; the pick stays shown."""
        self.own(state, user_id)
        p = state.get("pending")
        if not p:
            raise ValueError("there is no pair of answers to choose from")
        a, b = p["first"], p["second"]
        picked = a if which == "first" else b
        self.store.choose(p["prompt_id"], user_id, [a["id"], b["id"]], picked["id"])
        state["shown"][-1] = picked
        state["pending"] = None
        return f"Saved: you preferred the {which} answer (#{picked['id']})."

    def undo(self, state, index) -> str:
        """Remove the question at `index` and what follows from the display (the store keeps them: append-only).
        Returns the question text, to put back in the textbox."""
        i = chat_index_to_shown(state, index)
        if state["shown"][i]["role"] != "user":
            raise ValueError("undo applies to a question")
        text = state["shown"][i]["content"]
        del state["shown"][i:]
        state["pending"] = None
        return text
