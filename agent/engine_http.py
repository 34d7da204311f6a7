"""Engines that answer over HTTP: llama.cpp's `llama-server` (supervised by the app, or your own) and any
OpenAI-compatible server (vLLM, SGLang ...). Same interface as `agent.model.ChatModel`: `stream`, `add_adapter`,
`remove_adapter`, `use`, `adapters`, `active`, `render` / `count` / `fit` (the prompt is rendered here with the
model's own chat template, so every engine sees the same tokens).

Two wire dialects, one class:
    llama   POST {url}/completion with token ids, `lora: [{id, scale}]` per request, DRY for no-repeat
    openai  POST {url}/v1/completions with the rendered text, the adapter named by `model`
"""
from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import httpx

from agent.decoding import Decoding
from agent.model import MAX_CONTEXT, EngineBase, Generation

log = logging.getLogger(__name__)


# how each dialect enforces KAIZEN_NO_REPEAT_NGRAM_SIZE (agent.decoding.Decoding.loop_rule): DRY on llama-server;
# the OpenAI API has no such rule
DIALECT_LOOP_RULE = {"llama": "dry", "openai": None}


def llama_body(ids: list[int], *, max_new_tokens: int, decoding: Decoding, lora: list[dict]) -> dict:
    """The /completion request for llama-server. Pure. The no-repeat-n-gram rule has no llama.cpp sampler: DRY
    (which penalizes extending a sequence already seen) stands in for it (`Decoding.dry`). The llama-server the
    Makefile builds feeds its samplers the answer only (a patch: upstream feeds the prompt too, and then DRY and the
    repeat penalty punish an answer for quoting its prompt, e.g. a RAG answer its sources)."""
    body = {"prompt": ids, "n_predict": max_new_tokens, "stream": True, "cache_prompt": True,
            "temperature": decoding.temperature, "top_p": decoding.top_p if decoding.temperature > 0 else 1.0,
            # greedy: one candidate, the same argmax (after the penalties and DRY, which run before top-k), and no
            # pass of the later samplers over the whole vocabulary: ~8% more tokens a second on 2 cores
            "top_k": 50 if decoding.temperature > 0 else 1, "min_p": 0.0,
            "repeat_penalty": decoding.repetition_penalty or 1.0, "repeat_last_n": max_new_tokens,
            "seed": decoding.seed if decoding.seed is not None else -1, "lora": lora}
    dry = decoding.dry()
    if dry is not None:
        body.update(dry.body())
    return body


def openai_body(prompt: str, *, model: str, max_new_tokens: int, decoding: Decoding) -> dict:
    """The /v1/completions request for an OpenAI-compatible server. Pure."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_new_tokens, "stream": True,
            "stream_options": {"include_usage": True}, "temperature": decoding.temperature,
            "top_p": decoding.top_p if decoding.temperature > 0 else 1.0}
    if decoding.seed is not None:
        body["seed"] = decoding.seed
    if decoding.repetition_penalty and decoding.repetition_penalty != 1.0:
        body["repetition_penalty"] = decoding.repetition_penalty  # vLLM / SGLang extension
    return body


def sse_events(response: httpx.Response):
    """The JSON objects of a server-sent-event stream (`data: {...}` lines; `[DONE]` ends it)."""
    for line in response.iter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        yield json.loads(data)


class HTTPEngine(EngineBase):
    """Streams answers from an HTTP inference server. `server` is a `agent.llama_server.LlamaServer` (the app runs
    it) or None with `url` (a server you run: `dialect` "llama" for llama-server, "openai" for the rest)."""

    def __init__(self, tokenizer, *, name: str, dialect: str = "llama", server=None, url: str = "",
                 base_id: str = "", api_key: str = "", max_context: int = MAX_CONTEXT, device: str = "cpu",
                 base_folder: str | Path | None = None):
        if dialect not in ("llama", "openai"):
            raise ValueError(f"dialect must be llama or openai, not {dialect!r}")
        self.tok = tokenizer
        self.name = name
        self.dialect = dialect
        self.server = server
        self.url = url.rstrip("/")
        self.base_id = base_id
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.max_context = max_context
        self.device = device
        self.base_folder = base_folder  # the HF folder of the base: LoRAs are converted against it
        self.adapters: dict[str, str] = {}  # name -> GGUF LoRA (llama) or the name the server knows (openai)
        self.active: str | None = None
        self._remote_ids: dict[str, int] = {}  # a llama-server run by you: adapter name -> its id
        self.lock = threading.Lock()
        self.client = httpx.Client(timeout=httpx.Timeout(600, connect=10), headers=self.headers)

    @property
    def loop_rule(self) -> str | None:
        """How it enforces KAIZEN_NO_REPEAT_NGRAM_SIZE (`DIALECT_LOOP_RULE`)."""
        return DIALECT_LOOP_RULE[self.dialect]

    # -- adapters -----------------------------------------------------------------------------------
    def add_adapter(self, name: str, folder: str | Path) -> None:
        """Serve version `name` from its folder. Supervised llama-server: its GGUF LoRA (converted when missing);
        the next request starts a server with it (the running one finishes its answers). Your own server: it must
        already serve `name` (llama-server: a `--lora` file named after it) or load it (vLLM's runtime loading)."""
        if name in self.adapters:
            return
        if self.server is not None:
            from agent.lora_gguf import ensure_lora_gguf

            gguf = ensure_lora_gguf(Path(folder), self.base_folder)
            with self.lock:
                self.adapters[name] = str(gguf)
            return
        self._attach_remote(name, Path(folder))

    def _attach_remote(self, name: str, folder: Path) -> None:
        if self.dialect == "llama":
            listed = self.client.get(self.url + "/lora-adapters").json()
            ids = {Path(a["path"]).name.split(".")[0]: int(a["id"]) for a in listed}
            ids.update({Path(a["path"]).parent.name: int(a["id"]) for a in listed})
            if name not in ids:
                raise RuntimeError(f"the llama-server at {self.url} does not load adapter {name!r}: start it with "
                                   f"--lora {folder / 'lora.gguf'} (it loads adapters only at start)")
            self._remote_ids[name] = ids[name]
        else:
            served = {m["id"] for m in self.client.get(self.url + "/v1/models").json().get("data", [])}
            if name not in served:  # vLLM with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True loads it now
                r = self.client.post(self.url + "/v1/load_lora_adapter",
                                     json={"lora_name": name, "lora_path": str(folder.resolve())})
                if r.status_code >= 400:
                    raise RuntimeError(f"the server at {self.url} does not serve {name!r} and could not load it "
                                       f"({r.status_code}: {r.text[:300]})")
        with self.lock:
            self.adapters[name] = name

    def remove_adapter(self, name: str) -> None:
        with self.lock:
            self.adapters.pop(name, None)
            self._remote_ids.pop(name, None)
            if self.active == name:
                self.active = None

    def close(self) -> None:
        self.client.close()
        if self.server is not None:
            self.server.close()

    # -- generation ---------------------------------------------------------------------------------
    def stream(self, messages: list[dict], *, max_new_tokens: int = 256, temperature: float = 0.0,
               adapter: str | None = "default", stop: threading.Event | None = None,
               decoding: Decoding | None = None, prefix: str | None = None) -> Generation:
        adapter = self.active if adapter == "default" else adapter
        if adapter is not None and adapter not in self.adapters:
            raise KeyError(f"unknown adapter {adapter!r}")
        stop = stop or threading.Event()
        decoding = decoding or Decoding(temperature=temperature)
        head = self.tok(prefix, add_special_tokens=False)["input_ids"] if prefix else []
        messages = self.fit(messages, max_new_tokens + len(head))
        ids = self.render(messages) + list(head)
        gen = Generation(iter(()), model=self.name, adapter=adapter, prompt_tokens=len(ids),
                         max_new_tokens=max_new_tokens)
        with self.lock:
            loras = {n: Path(p) for n, p in self.adapters.items()} if self.server is not None else {}

        def pieces():
            finished = False
            try:
                if self.server is not None:
                    with self.server.lease(loras) as proc:
                        names = proc.loras
                        lora = [{"id": i, "scale": 1.0 if n == adapter else 0.0} for i, n in enumerate(names)]
                        body = llama_body(ids, max_new_tokens=max_new_tokens, decoding=decoding, lora=lora)
                        yield from self._stream_llama(proc.url, body, gen, stop)
                elif self.dialect == "llama":
                    lora = [{"id": i, "scale": 1.0 if n == adapter else 0.0} for n, i in self._remote_ids.items()]
                    body = llama_body(ids, max_new_tokens=max_new_tokens, decoding=decoding, lora=lora)
                    yield from self._stream_llama(self.url, body, gen, stop)
                else:
                    text = self.tok.decode(ids, skip_special_tokens=False)
                    model = adapter or self.base_id or self._first_model()
                    body = openai_body(text, model=model, max_new_tokens=max_new_tokens, decoding=decoding)
                    yield from self._stream_openai(body, gen, stop)
                finished = True
            finally:
                if not finished or stop.is_set():  # the consumer went away or pressed stop
                    stop.set()
                    gen.cancelled = True
                    if not gen.completion_tokens and gen.text:  # the server's count comes only with its last event
                        gen.completion_tokens = len(self.tok(gen.text, add_special_tokens=False)["input_ids"])

        gen.pieces = pieces()
        return gen

    def _post(self, url: str, body: dict):
        return self.client.stream("POST", url, json=body)

    def _stream_llama(self, url: str, body: dict, gen: Generation, stop: threading.Event):
        with self._post(url + "/completion", body) as r:
            if r.status_code != 200:
                raise RuntimeError(f"generation failed: llama-server said {r.status_code}: {r.read()[:300]!r}")
            for event in sse_events(r):
                if stop.is_set():
                    return  # closing the response makes llama-server cancel the task
                if event.get("content"):
                    yield event["content"]
                if event.get("stop"):
                    gen.completion_tokens = int(event.get("tokens_predicted") or 0)
                    gen.truncated = event.get("stop_type") == "limit"
                    return

    def _stream_openai(self, body: dict, gen: Generation, stop: threading.Event):
        with self._post(self.url + "/v1/completions", body) as r:
            if r.status_code != 200:
                raise RuntimeError(f"generation failed: {self.url} said {r.status_code}: {r.read()[:300]!r}")
            for event in sse_events(r):
                if stop.is_set():
                    return
                for choice in event.get("choices") or []:
                    if choice.get("text"):
                        yield choice["text"]
                    if choice.get("finish_reason"):
                        gen.truncated = choice["finish_reason"] == "length"
                usage = event.get("usage")
                if usage:
                    gen.completion_tokens = int(usage.get("completion_tokens") or 0)

    def _first_model(self) -> str:
        data = self.client.get(self.url + "/v1/models").json().get("data", [])
        if not data:
            raise RuntimeError(f"the server at {self.url} lists no models")
        self.base_id = data[0]["id"]
        return self.base_id

    def chat(self, messages: list[dict], **kw) -> str:
        return self.stream(messages, **kw).collect()
