"""The answer pipeline: template + (maybe) retrieved sources + model → a streamed reply with its provenance."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

from agent.fair import FRESH_SLOTS, Cancelled, FairGate
from agent.routing import MIN_SOURCE_PROBABILITY
from agent.decoding import Decoding, served_decoding
from agent.model import ChatModel, Generation
from agent.settings import Settings
from agent.templates import Template, TemplateError, load_templates

RAG_MODES = ("auto", "on", "off")


@dataclass
class Reply:
    generation: Generation
    messages: list[dict]  # exactly what the model was given (before history truncation)
    template: str
    sources: list[dict] = field(default_factory=list)  # {"doc_id","file","chunk","score","shared"} per cited source
    used_rag: bool = False
    context_messages: int = 0  # earlier messages of the conversation the model was given (agent/routing.py)


def check_question(question: str, max_chars: int) -> str:
    """The user's message, stripped; a clear error when it is empty or too long."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError("the message is empty")
    if len(question) > max_chars:
        raise ValueError(f"the message is too long ({len(question):,} characters; the limit is {max_chars:,})")
    return question.strip()


def answer_decoding(decoding: Decoding, max_new_tokens: int | None) -> dict:
    """How an answer was decoded, as its stored provenance (the `decoding` column of messages)."""
    return {"temperature": decoding.temperature, "top_p": decoding.top_p, "seed": decoding.seed,
            "max_new_tokens": max_new_tokens}


class Answerer:
    """Answers questions with an engine (agent/engine.py; a ChatModel is one), a template library and an optional
    knowledge base."""

    def __init__(self, model: ChatModel, settings: Settings, kb=None):
        self.model = model
        self.settings = settings
        self.kb = kb
        # decode slots, shared fairly between users; at most settings.user_max_generations per user
        self.gate = gate_for(model, settings)
        self.min_source_probability = MIN_SOURCE_PROBABILITY  # agent/routing.py: chunks left out of the prompt
        self._embedder = None

    @classmethod
    def from_settings(cls, settings: Settings, with_retrieval: bool = True) -> "Answerer":
        kb = None
        if with_retrieval:
            from agent.retrieval import KnowledgeBase

            kb = KnowledgeBase.from_settings(settings)
        from agent.engine import open_engine

        return cls(open_engine(settings), settings, kb)

    def templates(self) -> dict[str, Template]:
        """Read on every call (a few small files) so templates users drop into the data dir appear at once."""
        return load_templates(self.settings.templates_dir)

    def template(self, name: str) -> Template:
        found = self.templates()
        if name not in found:
            raise TemplateError(f"unknown template {name!r}; available: {', '.join(sorted(found))}")
        return found[name]

    def decoding(self, **overrides) -> Decoding:
        """The settings' decoding (KAIZEN_TEMPERATURE, _TOP_P, _REPETITION_PENALTY, _NO_REPEAT_NGRAM_SIZE), its
        n-gram rule as this engine enforces it."""
        return served_decoding(self.settings, rule=getattr(self.model, "loop_rule", "ban"), **overrides)

    def retry_decoding(self, seed: int) -> Decoding:
        """A retry samples (KAIZEN_RETRY_TEMPERATURE, _RETRY_TOP_P) with its own seed: a genuinely new answer."""
        s = self.settings
        return self.decoding(temperature=s.retry_temperature, top_p=s.retry_top_p, seed=seed)

    def retrieve(self, question: str, mode: str, owner: str | None = None,
                 history: list[dict] | None = None) -> tuple[list, bool]:
        """(hits, use_them) among the documents `owner` reads (theirs and the shared library; None: the single
        local user's). The routing decision: no store or nothing relevant → answer directly. A question that finds
        nothing alone but reads as a follow-up ("And when does it arrive?") is searched again after the previous
        question in `history` (agent/routing.py `follow_up_query`)."""
        if mode not in RAG_MODES:
            raise ValueError(f"rag mode must be one of {RAG_MODES}")
        from agent.retrieval import DEFAULT_OWNER

        owner = owner or DEFAULT_OWNER
        if self.kb is None or mode == "off" or self.kb.is_empty(owner):
            return [], False
        from agent.routing import decide, follow_up_query, likely, relevant, with_hits

        hits = self.kb.search(question, k=4, owner=owner)
        routes = decide(question, hits, "auto")  # mode is "auto" or "on" here
        use, alone_best = routes or mode == "on", []
        joined = None if routes else follow_up_query(question, history)
        if joined:
            more = self.kb.search(joined, k=4, owner=owner)
            if decide(joined, more, "auto"):  # the question's own best chunk is kept too (bench/follow_ups.py)
                hits, use, alone_best = more, True, hits[:1]
        if not use:
            return hits, False
        hits = relevant(hits) if mode == "auto" else hits
        if getattr(getattr(self.kb, "hybrid", None), "method", None) == "learned":  # scores are probabilities
            hits = likely(hits, self.min_source_probability)
        return with_hits(hits, alone_best), True

    def context(self, question: str, history: list[dict] | None) -> list[dict]:
        """The conversation the model is given with `question`: `history`, or none when the question changes the
        subject (agent/routing.py `keeps_history`, measured by its MiniLM similarity to the previous user message).
        KAIZEN_HISTORY=all keeps it always. Stored rows keep the conversation either way: a correction or a vote on
        such an answer says what to answer after that conversation, which is what training should learn."""
        from agent.embeddings import cosine
        from agent.routing import keeps_history, previous_question

        before = previous_question(history)
        if before is None or self.settings.history == "all":
            return history or []
        return history if keeps_history(question, lambda: cosine(*self.embedder.embed([before, question]))) else []

    @property
    def embedder(self):
        """The knowledge base's MiniLM embedder, or one of its own when it has none (loaded on first use)."""
        if getattr(self.kb, "embedder", None) is not None:
            return self.kb.embedder
        if self._embedder is None:
            from agent.embeddings import Embedder

            self._embedder = Embedder()
        return self._embedder

    def answer(
        self,
        history: list[dict],
        question: str,
        *,
        template: str = "plain",
        rag: str = "auto",
        adapter: str | None = "default",
        stop: threading.Event | None = None,
        max_new_tokens: int | None = None,
        owner: str | None = None,
        decoding: Decoding | None = None,
        continue_from: str | None = None,
        whole_history: bool = False,
    ) -> Reply:
        """`decoding`: how to decode (default: `self.decoding()`, the settings'). `continue_from`: the text of an
        answer that was cut off at the token cap: the model goes on from its end (the new text is only the rest).
        `whole_history`: give the model `history` as it is, whatever the question (the API: a client sends the
        context it wants, few-shot examples included); else `context` decides."""
        question = check_question(question, self.settings.max_input_chars)
        max_new = max_new_tokens or self.settings.max_new_tokens
        tmpl = self.template(template)
        hits, use_rag = self.retrieve(question, rag, owner, history)
        variables = {}
        if use_rag:
            from agent.retrieval import format_sources

            if "sources" not in tmpl.variables:
                tmpl = self.template("grounded")
            # ~3 characters a token; keep room for the template, the question and the answer.
            budget = max(400, (self.model.max_context - max_new - 200) * 3 - len(question))
            variables["sources"] = format_sources(hits, max_chars=budget)
        elif "sources" in tmpl.variables:
            variables["sources"] = "(no reference data was found for this question)"
        context = (history or []) if whole_history else self.context(question, history)
        messages = tmpl.render(question, context, **variables)
        gen = self.model.stream(messages, max_new_tokens=max_new, adapter=adapter, stop=stop,
                                decoding=decoding or self.decoding(), prefix=continue_from)
        gen.pieces = self._gated(gen, gen.pieces, owner, stop)
        sources = [
            {"doc_id": h.doc_id, "file": h.file, "chunk": h.chunk, "score": round(float(h.score), 4),
             "shared": h.shared} for h in hits
        ] if use_rag else []
        return Reply(gen, messages, tmpl.name, sources, use_rag, len(context))

    def _gated(self, gen: Generation, inner, user, stop: threading.Event | None):
        """The generation's pieces (`inner`), decoded only while `user` holds one of the engine's slots."""
        try:
            with self.gate.slot(user or "local", cancel=stop):
                yield from inner
        except Cancelled:
            gen.cancelled = True


def gate_for(model, settings: Settings) -> FairGate:
    """The engine's decode slots, shared fairly: llama-server's (its shared slots and the one kept for fresh users),
    an OpenAI server's KAIZEN_PARALLEL plus one kept likewise, one for transformers (two parallel generations on a
    CPU are slower than two queued ones, and it decodes one at a time)."""
    per_user = getattr(settings, "user_max_generations", 0)
    server = getattr(model, "server", None)
    if server is not None:
        return FairGate(server.parallel, per_user, reserve=getattr(server, "reserve", 0))
    if getattr(model, "dialect", None):
        return FairGate(settings.parallel, per_user, reserve=FRESH_SLOTS)
    return FairGate(1, per_user)
