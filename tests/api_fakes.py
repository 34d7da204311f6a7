"""A fake engine for the API's fast tests: the real Answerer, templates, store and routes over an engine that
answers instantly (or slowly, to test a disconnect) without a model."""
from __future__ import annotations

import time

from agent.model import Generation


class FakeEngine:
    """An engine (agent/engine.py's interface) that answers "Echo: <question> ..." word by word. `endless`: it
    keeps going (one word every `delay` s) until the stop event or the token cap."""

    name = "fake-model"
    max_context = 2048

    def __init__(self, delay: float = 0.0, endless: bool = False):
        self.adapters: dict[str, str] = {}
        self.active: str | None = None
        self.delay, self.endless = delay, endless
        self.calls: list[dict] = []

    def add_adapter(self, name: str, folder) -> None:
        self.adapters[name] = str(folder)

    def stream(self, messages, *, max_new_tokens=256, adapter="default", stop=None, decoding=None, prefix=None,
               temperature=0.0):
        adapter = self.active if adapter == "default" else adapter
        if adapter is not None and adapter not in self.adapters:
            raise KeyError(f"unknown adapter {adapter!r}")
        self.calls.append({"messages": messages, "adapter": adapter, "max_new_tokens": max_new_tokens,
                           "decoding": decoding})
        question = messages[-1]["content"]
        words = ["Echo:", *question.split()[-6:], f"[{adapter or 'base'}]"]
        gen = Generation(iter(()), model=self.name, adapter=adapter, prompt_tokens=sum(len(m["content"].split())
                                                                                      for m in messages),
                         max_new_tokens=max_new_tokens)

        def pieces():
            for i in range(max_new_tokens):
                if stop is not None and stop.is_set():
                    gen.cancelled = True
                    return
                if i >= len(words) and not self.endless:
                    return
                gen.completion_tokens += 1
                yield (words[i] if i < len(words) else "more") + " "
                if self.delay:
                    time.sleep(self.delay)
            gen.truncated = True

        gen.pieces = pieces()
        return gen


def make_api(tmp_path, engine=None, kb=None, **settings_kw):
    """(FastAPI app, KaizenAPI) over a FakeEngine, a fresh data dir and no background threads."""
    from adapters.registry import Registry
    from web.routes import api_app
    from agent.chat import Answerer
    from agent.settings import Settings
    from feedback.store import Store

    settings = Settings(data_dir=tmp_path / "data", **{"max_new_tokens": 32, **settings_kw})
    store = Store.from_settings(settings)
    answerer = Answerer(engine or FakeEngine(), settings, kb=kb)
    app = api_app(settings, answerer=answerer, store=store, registry=Registry(settings), start_sync=False)
    return app, app.state.kaizen_api


def serving(app):
    """`app` on a real uvicorn server in a thread; yields the base URL (web.routes.serve_in_thread)."""
    from web.routes import serve_in_thread

    return serve_in_thread(app)


class FakeKB:
    """A knowledge base with one document for everyone who asks; records whose documents were searched."""

    def __init__(self):
        self.owners: list[str] = []

    def is_empty(self, owner) -> bool:
        return False

    def search(self, question, k=4, owner=None):
        from agent.retrieval import Hit

        self.owners.append(owner)
        return [Hit("doc-1", "warranty.md", 0, 0.9, "The warranty covers two years.", similarity=0.8)]
