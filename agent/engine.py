"""The engine seam: which backend answers. One function decides (`open_engine`); the chat pipeline only uses the
interface every backend has (`agent.model.ChatModel` is the reference):

    render(messages) / count / fit       the model's chat template, token counts, history fitted to the context
    stream(messages, max_new_tokens=, adapter=, stop=, decoding=, prefix=) -> Generation
    add_adapter(name, folder) / remove_adapter(name) / use(name) / adapters / active

KAIZEN_ENGINE:
    llamacpp      llama.cpp's llama-server, started and supervised by the app on loopback: the bundled Q4_1 GGUF,
                  continuous batching over KAIZEN_PARALLEL slots, every served version's GGUF LoRA per request
    transformers  HF transformers (+ peft): the reference (training, the gate, the lab use it); bf16 on CUDA
    openai        any OpenAI-compatible server at KAIZEN_ENGINE_URL (vLLM, SGLang, or a llama-server you run)
    auto          transformers when CUDA is present, else llamacpp when it is built, else transformers (warned)
"""
from __future__ import annotations

import logging

from agent.settings import Settings

log = logging.getLogger(__name__)
ENGINES = ("auto", "llamacpp", "transformers", "openai")


def engine_kind(settings: Settings) -> str:
    """The backend `open_engine` would pick. A bad value or a missing build is a clear error."""
    from agent import llama_build

    kind = settings.engine
    if kind not in ENGINES:
        raise ValueError(f"KAIZEN_ENGINE={kind!r}: use one of {', '.join(ENGINES)}")
    if kind == "auto":
        import torch

        if settings.device != "cpu" and torch.cuda.is_available():
            return "transformers"
        if llama_build.available():
            llama_build.require()  # built, but without this checkout's patch: say so rather than serve it
            return "llamacpp"
        log.warning("llama.cpp is not built (%s): answering with transformers, several times slower. "
                    "`make install` builds it.", llama_build.llama_dir())
        return "transformers"
    if kind == "llamacpp":
        llama_build.require()
    if kind == "openai" and not settings.engine_url:
        raise ValueError("KAIZEN_ENGINE=openai needs KAIZEN_ENGINE_URL (e.g. http://127.0.0.1:8000)")
    return kind


def loop_rule(settings: Settings) -> str | None:
    """How the engine `engine_kind` picks enforces KAIZEN_NO_REPEAT_NGRAM_SIZE (agent.decoding.Decoding.loop_rule):
    that engine's own `loop_rule`, for code with no engine open (the gate's child process)."""
    kind = engine_kind(settings)
    if kind == "transformers":
        from agent.model import ChatModel

        return ChatModel.loop_rule
    from agent.engine_http import DIALECT_LOOP_RULE

    return DIALECT_LOOP_RULE["llama" if kind == "llamacpp" else settings.engine_dialect]


def open_engine(settings: Settings):
    """The engine that answers, per `engine_kind`."""
    kind = engine_kind(settings)
    if kind == "transformers":
        from agent.model import ChatModel

        return ChatModel.from_settings(settings)
    from transformers import AutoTokenizer

    from agent.engine_http import HTTPEngine
    from agent.model import resolve_base

    folder = resolve_base(settings.base_model, settings.models_dir)  # tokenizer and chat template
    tok = AutoTokenizer.from_pretrained(folder)
    if kind == "openai":
        return HTTPEngine(tok, name=settings.base_model, dialect=settings.engine_dialect, url=settings.engine_url,
                          base_id=settings.engine_model, api_key=settings.engine_key)
    from agent.gguf import base_gguf
    from agent.llama_server import LlamaServer

    from agent.fair import FRESH_SLOTS

    server = LlamaServer(base_gguf(settings.base_model, settings.models_dir, settings.llama_quant),
                         parallel=settings.parallel, reserve=FRESH_SLOTS,
                         threads=settings.threads, log_dir=settings.data_dir / "logs",
                         extra=settings.llama_args.split())
    engine = HTTPEngine(tok, name=settings.base_model, dialect="llama", server=server, base_folder=folder)
    server.ensure({})  # start now: a broken build or model fails at start, not at the first question
    return engine


def describe(engine) -> str:
    """A short line saying who answers, for the UI and the log."""
    server = getattr(engine, "server", None)
    if server is not None:  # the model as users name it, never the converted file's path-derived name
        from agent.files import last_part
        from agent.gguf import QUANTS

        parts = server.gguf.name.rsplit(".", 2)  # a converted base is NAME.QUANT.gguf (agent/gguf.py)
        quant = f", {parts[1].upper()}" if len(parts) == 3 and parts[1] in QUANTS else ""
        name = last_part(getattr(engine, "name", None) or server.gguf.name)
        slots, threads, fresh = server.parallel, server.threads, getattr(server, "reserve", 0)
        fresh = f" + {fresh} for newcomers" if fresh else ""
        return (f"llama.cpp ({name}{quant}, {slots} slot{'s' * (slots != 1)}{fresh}, "
                f"{threads} thread{'s' * (threads != 1)})")
    if getattr(engine, "dialect", None):
        return f"OpenAI-compatible server at {engine.url}"
    dtype = getattr(getattr(engine, "model", None), "dtype", "")
    return f"transformers ({getattr(engine, 'device', 'cpu')}, {str(dtype).replace('torch.', '')})"
